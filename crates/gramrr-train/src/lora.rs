//! LoRA adapters on the decoder's projections, in PEFT's conventions: `y = x Wᵀ + (α/r)·(x Aᵀ) Bᵀ`,
//! A initialised as `kaiming_uniform_(a=√5)`, B as zeros, and saved as PEFT does
//! (`adapter_config.json`, `adapter_model.safetensors` with names like
//! `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`) so PEFT loads them.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use gramrr_model::model::{Decoder, LoraAdapter};
use gramrr_model::weights::{load_safetensors_file, save_safetensors};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::error::{Result, TrainError};

/// A projection LoRA can adapt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoraTarget {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl LoraTarget {
    pub const ALL: [LoraTarget; 7] =
        [LoraTarget::Q, LoraTarget::K, LoraTarget::V, LoraTarget::O, LoraTarget::Gate, LoraTarget::Up, LoraTarget::Down];

    /// PEFT's `target_modules` name.
    pub fn module(self) -> &'static str {
        match self {
            LoraTarget::Q => "q_proj",
            LoraTarget::K => "k_proj",
            LoraTarget::V => "v_proj",
            LoraTarget::O => "o_proj",
            LoraTarget::Gate => "gate_proj",
            LoraTarget::Up => "up_proj",
            LoraTarget::Down => "down_proj",
        }
    }

    /// Path of the module inside a decoder layer, as `Block::linears` names it.
    pub fn path(self) -> &'static str {
        match self {
            LoraTarget::Q => "self_attn.q_proj",
            LoraTarget::K => "self_attn.k_proj",
            LoraTarget::V => "self_attn.v_proj",
            LoraTarget::O => "self_attn.o_proj",
            LoraTarget::Gate => "mlp.gate_proj",
            LoraTarget::Up => "mlp.up_proj",
            LoraTarget::Down => "mlp.down_proj",
        }
    }

    fn from_path(path: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.path() == path)
    }

    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        Self::ALL
            .into_iter()
            .find(|t| t.module() == s || t.module().trim_end_matches("_proj") == s)
            .ok_or_else(|| format!("unknown LoRA target {s:?} (expected q, k, v, o, gate, up, down)"))
    }

    /// A comma-separated list (`q,k,v,o,gate,up,down`, or `all`).
    pub fn parse_list(s: &str) -> std::result::Result<Vec<Self>, String> {
        if s.trim() == "all" {
            return Ok(Self::ALL.to_vec());
        }
        let mut v: Vec<Self> = s.split(',').filter(|x| !x.trim().is_empty()).map(Self::parse).collect::<std::result::Result<_, _>>()?;
        v.sort();
        v.dedup();
        if v.is_empty() {
            return Err("no LoRA targets given".into());
        }
        Ok(v)
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f32,
    pub targets: Vec<LoraTarget>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self { rank: 16, alpha: 32.0, dropout: 0.0, targets: LoraTarget::ALL.to_vec() }
    }
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

/// PEFT's parameter name for a LoRA matrix of layer `i`.
pub fn peft_name(layer: usize, path: &str, which: &str) -> String {
    format!("base_model.model.model.layers.{layer}.{path}.lora_{which}.weight")
}

/// Whether any projection of the decoder carries an adapter.
pub fn has_lora(decoder: &Decoder) -> bool {
    decoder.layers.iter().any(|l| l.linears().iter().any(|(_, lin)| lin.lora.is_some()))
}

/// Puts fresh adapters on the target projections: A ~ U(−1/√in, 1/√in) (PEFT's
/// `kaiming_uniform_(a=√5)`), B = 0, so the adapted model starts equal to the base.
pub fn attach_lora(decoder: &mut Decoder, cfg: &LoraConfig, seed: u64) -> Result<()> {
    if cfg.rank == 0 {
        return Err(TrainError::Config("LoRA rank must be at least 1".into()));
    }
    let dev = decoder.device().clone();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(0x10_7a);
    for layer in decoder.layers.iter_mut() {
        for (path, lin) in layer.linears_mut() {
            let Some(_) = LoraTarget::from_path(path).filter(|t| cfg.targets.contains(t)) else { continue };
            let (out, inp) = lin.weight.dims2()?;
            let bound = 1.0 / (inp as f32).sqrt();
            let a: Vec<f32> = (0..cfg.rank * inp).map(|_| rng.random_range(-bound..bound)).collect();
            lin.lora = Some(LoraAdapter {
                a: Tensor::from_vec(a, (cfg.rank, inp), &dev)?,
                b: Tensor::zeros((out, cfg.rank), DType::F32, &dev)?,
                scale: cfg.scale(),
                dropout: cfg.dropout,
            });
        }
    }
    Ok(())
}

/// Every adapter matrix with its PEFT name, layer by layer in module order, A before B.
pub fn lora_tensors(decoder: &Decoder) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    for (i, layer) in decoder.layers.iter().enumerate() {
        for (path, lin) in layer.linears() {
            if let Some(l) = &lin.lora {
                out.push((peft_name(i, path, "A"), l.a.clone()));
                out.push((peft_name(i, path, "B"), l.b.clone()));
            }
        }
    }
    out
}

/// Replaces every adapter matrix through `f(peft_name, old) -> new`.
pub fn map_lora(decoder: &mut Decoder, f: &mut dyn FnMut(&str, &Tensor) -> Result<Tensor>) -> Result<()> {
    for (i, layer) in decoder.layers.iter_mut().enumerate() {
        for (path, lin) in layer.linears_mut() {
            if let Some(l) = lin.lora.as_mut() {
                l.a = f(&peft_name(i, path, "A"), &l.a)?;
                l.b = f(&peft_name(i, path, "B"), &l.b)?;
            }
        }
    }
    Ok(())
}

/// `adapter_config.json` with the fields PEFT writes (those we do not use at their defaults).
pub fn adapter_config_json(cfg: &LoraConfig, base_model: &str) -> Value {
    let mut targets: Vec<&str> = cfg.targets.iter().map(|t| t.module()).collect();
    targets.sort();
    let alpha: Value = if cfg.alpha.fract() == 0.0 { json!(cfg.alpha as i64) } else { json!(cfg.alpha) };
    json!({
        "alpha_pattern": {},
        "auto_mapping": null,
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layers_pattern": null,
        "layers_to_transform": null,
        "lora_alpha": alpha,
        "lora_bias": false,
        "lora_dropout": cfg.dropout,
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": cfg.rank,
        "rank_pattern": {},
        "revision": null,
        "target_modules": targets,
        "task_type": "CAUSAL_LM",
        "use_dora": false,
        "use_rslora": false
    })
}

/// Writes the decoder's adapters in PEFT layout.
pub fn save_adapter(decoder: &Decoder, cfg: &LoraConfig, dir: &Path, base_model: &str) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    save_safetensors(&lora_tensors(decoder), &dir.join("adapter_model.safetensors"), DType::F32)?;
    gramrr_model::fsutil::write_json_atomic(&dir.join("adapter_config.json"), &adapter_config_json(cfg, base_model))?;
    Ok(())
}

/// Reads `adapter_config.json`.
pub fn read_adapter_config(dir: &Path) -> Result<(LoraConfig, Value)> {
    let path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| TrainError::Json { path: path.clone(), source: e })?;
    let bad = |field: &str, msg: &str| TrainError::Checkpoint { path: path.clone(), message: format!("\"{field}\": {msg}") };
    if let Some(t) = v.get("peft_type").and_then(|t| t.as_str()) {
        if t != "LORA" {
            return Err(bad("peft_type", &format!("{t:?} is not supported (only LORA)")));
        }
    }
    for flag in ["use_dora", "use_rslora", "fan_in_fan_out"] {
        if v.get(flag).and_then(|x| x.as_bool()) == Some(true) {
            return Err(bad(flag, "true is not supported"));
        }
    }
    let rank = v.get("r").and_then(|x| x.as_u64()).ok_or_else(|| bad("r", "missing or not an integer"))? as usize;
    let alpha = v.get("lora_alpha").and_then(|x| x.as_f64()).unwrap_or(8.0);
    let dropout = v.get("lora_dropout").and_then(|x| x.as_f64()).unwrap_or(0.0) as f32;
    let targets = match v.get("target_modules") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().ok_or("not a string".to_string()).and_then(LoraTarget::parse))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| bad("target_modules", &e))?,
        Some(Value::String(s)) => LoraTarget::parse_list(s).map_err(|e| bad("target_modules", &e))?,
        _ => return Err(bad("target_modules", "missing")),
    };
    Ok((LoraConfig { rank, alpha, dropout, targets }, v))
}

/// Attaches the adapters of a PEFT adapter directory to `decoder`.
pub fn load_adapter(decoder: &mut Decoder, dir: &Path) -> Result<LoraConfig> {
    let (cfg, _) = read_adapter_config(dir)?;
    let file = dir.join("adapter_model.safetensors");
    let tensors = load_safetensors_file(&file, decoder.device())?;
    attach_from_map(decoder, &cfg, &tensors, &file)?;
    Ok(cfg)
}

/// Attaches adapters whose A and B come from `tensors` (PEFT names).
pub fn attach_from_map(
    decoder: &mut Decoder,
    cfg: &LoraConfig,
    tensors: &BTreeMap<String, Tensor>,
    file: &Path,
) -> Result<()> {
    let dev: Device = decoder.device().clone();
    let mut used = 0;
    for (i, layer) in decoder.layers.iter_mut().enumerate() {
        for (path, lin) in layer.linears_mut() {
            let Some(_) = LoraTarget::from_path(path).filter(|t| cfg.targets.contains(t)) else { continue };
            let (out, inp) = lin.weight.dims2()?;
            let get = |which: &str, shape: [usize; 2]| -> Result<Tensor> {
                let name = peft_name(i, path, which);
                let t = tensors.get(&name).ok_or_else(|| TrainError::Checkpoint {
                    path: file.to_path_buf(),
                    message: format!("tensor {name:?} is missing"),
                })?;
                if t.dims() != shape {
                    return Err(TrainError::Checkpoint {
                        path: file.to_path_buf(),
                        message: format!("tensor {name:?} has shape {:?}, expected {shape:?}", t.dims()),
                    });
                }
                Ok(t.to_dtype(DType::F32)?.to_device(&dev)?)
            };
            let a = get("A", [cfg.rank, inp])?;
            let b = get("B", [out, cfg.rank])?;
            used += 2;
            lin.lora = Some(LoraAdapter { a, b, scale: cfg.scale(), dropout: cfg.dropout });
        }
    }
    if used != tensors.len() {
        let known: std::collections::HashSet<String> = lora_tensors(decoder).into_iter().map(|(n, _)| n).collect();
        let extra: Vec<&String> = tensors.keys().filter(|k| !known.contains(*k)).take(3).collect();
        return Err(TrainError::Checkpoint {
            path: file.to_path_buf(),
            message: format!("holds tensors this adapter config does not explain, e.g. {extra:?}"),
        });
    }
    Ok(())
}

/// Folds every adapter into its weight (`W + (α/r)·B A`) and removes it; every projection is
/// left trainable-shaped (not frozen), so the result is a plain decoder.
pub fn merge_lora(decoder: &mut Decoder) -> Result<()> {
    for layer in decoder.layers.iter_mut() {
        for (_, lin) in layer.linears_mut() {
            if lin.lora.is_some() {
                lin.weight = lin.merged_weight()?.detach();
                lin.lora = None;
            }
            lin.frozen = false;
        }
    }
    Ok(())
}
