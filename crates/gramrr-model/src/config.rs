//! `config.json` → [`DecoderConfig`], accepting what transformers 4 and 5 write.

use std::path::Path;

use serde_json::Value;

use crate::error::{ModelError, Result};

/// The architectures the decoder implements, by their `architectures` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Architecture {
    Llama,
    Qwen2,
    Qwen3,
}

impl Architecture {
    pub const SUPPORTED: [&'static str; 3] =
        ["LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"];

    pub fn hf_name(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
            Architecture::Qwen3 => "Qwen3ForCausalLM",
        }
    }
    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "LlamaForCausalLM" | "llama" => Some(Architecture::Llama),
            "Qwen2ForCausalLM" | "qwen2" => Some(Architecture::Qwen2),
            "Qwen3ForCausalLM" | "qwen3" => Some(Architecture::Qwen3),
            _ => None,
        }
    }
}

/// Llama 3's frequency-dependent RoPE scaling (`rope_type: "llama3"`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DecoderConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections (Qwen2 always; Llama when `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on o_proj (Llama `attention_bias`).
    pub o_bias: bool,
    /// Llama `mlp_bias`.
    pub mlp_bias: bool,
    /// Per-head RMSNorm on q and k before RoPE (Qwen3).
    pub qk_norm: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// `torch_dtype` / `dtype` as written, for reports and for saving.
    pub dtype: Option<String>,
}

fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|x| !x.is_null())
}

fn ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect(),
        _ => vec![],
    }
}

impl DecoderConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ModelError::MissingFile { path: path.to_path_buf() }
            } else {
                ModelError::io(path, e)
            }
        })?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::Json { path: path.to_path_buf(), source: e })?;
        Self::from_json(&v, path)
    }

    pub fn from_json(v: &Value, file: &Path) -> Result<Self> {
        let err = |field: &str, msg: String| ModelError::config(file, field, msg);
        let usize_field = |key: &str| -> Result<usize> {
            get(v, key)
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
                .ok_or_else(|| err(key, "missing or not a non-negative integer".into()))
        };
        let arch_name = get(v, "architectures")
            .and_then(|a| a.as_array())
            .and_then(|a| a.first())
            .and_then(|a| a.as_str())
            .map(str::to_string)
            .or_else(|| get(v, "model_type").and_then(|m| m.as_str()).map(str::to_string))
            .ok_or_else(|| err("architectures", "missing".into()))?;
        let architecture = Architecture::parse(&arch_name).ok_or_else(|| {
            ModelError::UnsupportedArchitecture {
                file: file.to_path_buf(),
                found: arch_name.clone(),
                supported: Architecture::SUPPORTED.join(", "),
            }
        })?;

        let hidden_size = usize_field("hidden_size")?;
        let num_attention_heads = usize_field("num_attention_heads")?;
        let num_key_value_heads =
            get(v, "num_key_value_heads").and_then(|x| x.as_u64()).map(|x| x as usize).unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(err(
                "num_key_value_heads",
                format!(
                    "{num_key_value_heads} does not divide \"num_attention_heads\" = {num_attention_heads}"
                ),
            ));
        }
        let head_dim = match get(v, "head_dim").and_then(|x| x.as_u64()) {
            Some(h) => h as usize,
            None => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(err(
                        "hidden_size",
                        format!("{hidden_size} is not divisible by num_attention_heads = {num_attention_heads} and no head_dim is given"),
                    ));
                }
                hidden_size / num_attention_heads
            }
        };
        if head_dim % 2 != 0 {
            return Err(err("head_dim", format!("{head_dim} must be even for rotary embeddings")));
        }

        // transformers 5 folds rope_theta and rope_scaling into `rope_parameters`;
        // transformers 4 has them at the top level.
        let rope_params = get(v, "rope_parameters").or_else(|| get(v, "rope_scaling"));
        let rope_theta = get(v, "rope_theta")
            .and_then(|x| x.as_f64())
            .or_else(|| rope_params.and_then(|p| get(p, "rope_theta")).and_then(|x| x.as_f64()))
            .unwrap_or(10000.0);
        let rope_field = if get(v, "rope_parameters").is_some() { "rope_parameters" } else { "rope_scaling" };
        let rope_scaling = match rope_params {
            None => None,
            Some(p) => {
                let ty = get(p, "rope_type").or_else(|| get(p, "type")).and_then(|t| t.as_str()).unwrap_or("default");
                match ty {
                    "default" => None,
                    "llama3" => {
                        let f = |k: &str| -> Result<f64> {
                            get(p, k).and_then(|x| x.as_f64()).ok_or_else(|| {
                                err(&format!("{rope_field}.{k}"), "missing for rope_type \"llama3\"".into())
                            })
                        };
                        Some(Llama3RopeScaling {
                            factor: f("factor")?,
                            low_freq_factor: f("low_freq_factor")?,
                            high_freq_factor: f("high_freq_factor")?,
                            original_max_position_embeddings: f("original_max_position_embeddings")? as usize,
                        })
                    }
                    other => {
                        return Err(err(
                            &format!("{rope_field}.rope_type"),
                            format!("{other:?} is not supported (supported: \"default\", \"llama3\")"),
                        ))
                    }
                }
            }
        };

        let attention_bias = get(v, "attention_bias").and_then(|x| x.as_bool()).unwrap_or(false);
        let (qkv_bias, o_bias, qk_norm) = match architecture {
            Architecture::Llama => (attention_bias, attention_bias, false),
            Architecture::Qwen2 => (true, false, false),
            Architecture::Qwen3 => (attention_bias, attention_bias, true),
        };
        Ok(DecoderConfig {
            architecture,
            vocab_size: usize_field("vocab_size")?,
            hidden_size,
            intermediate_size: usize_field("intermediate_size")?,
            num_hidden_layers: usize_field("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: get(v, "rms_norm_eps").and_then(|x| x.as_f64()).unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: get(v, "max_position_embeddings")
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
                .unwrap_or(4096),
            tie_word_embeddings: get(v, "tie_word_embeddings").and_then(|x| x.as_bool()).unwrap_or(false),
            qkv_bias,
            o_bias,
            mlp_bias: get(v, "mlp_bias").and_then(|x| x.as_bool()).unwrap_or(false),
            qk_norm,
            bos_token_id: ids(get(v, "bos_token_id")).first().copied(),
            eos_token_ids: ids(get(v, "eos_token_id")),
            pad_token_id: ids(get(v, "pad_token_id")).first().copied(),
            dtype: get(v, "dtype").or_else(|| get(v, "torch_dtype")).and_then(|x| x.as_str()).map(str::to_string),
        })
    }

    /// The config as transformers 5 writes it (with `rope_parameters`), plus the transformers 4
    /// top-level `rope_theta`/`rope_scaling` keys so that either version loads it.
    pub fn to_hf_json(&self) -> Value {
        let mut rope = serde_json::Map::new();
        rope.insert("rope_theta".into(), self.rope_theta.into());
        match &self.rope_scaling {
            None => {
                rope.insert("rope_type".into(), "default".into());
            }
            Some(s) => {
                rope.insert("rope_type".into(), "llama3".into());
                rope.insert("factor".into(), s.factor.into());
                rope.insert("low_freq_factor".into(), s.low_freq_factor.into());
                rope.insert("high_freq_factor".into(), s.high_freq_factor.into());
                rope.insert("original_max_position_embeddings".into(), s.original_max_position_embeddings.into());
            }
        }
        let mut m = serde_json::Map::new();
        m.insert("architectures".into(), serde_json::json!([self.architecture.hf_name()]));
        m.insert("model_type".into(), self.architecture.model_type().into());
        m.insert("vocab_size".into(), self.vocab_size.into());
        m.insert("hidden_size".into(), self.hidden_size.into());
        m.insert("intermediate_size".into(), self.intermediate_size.into());
        m.insert("num_hidden_layers".into(), self.num_hidden_layers.into());
        m.insert("num_attention_heads".into(), self.num_attention_heads.into());
        m.insert("num_key_value_heads".into(), self.num_key_value_heads.into());
        m.insert("head_dim".into(), self.head_dim.into());
        m.insert("hidden_act".into(), "silu".into());
        m.insert("rms_norm_eps".into(), self.rms_norm_eps.into());
        m.insert("max_position_embeddings".into(), self.max_position_embeddings.into());
        m.insert("tie_word_embeddings".into(), self.tie_word_embeddings.into());
        m.insert("rope_parameters".into(), Value::Object(rope));
        m.insert("rope_theta".into(), self.rope_theta.into());
        if let Some(s) = &self.rope_scaling {
            m.insert(
                "rope_scaling".into(),
                serde_json::json!({"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                    "high_freq_factor": s.high_freq_factor, "original_max_position_embeddings": s.original_max_position_embeddings}),
            );
        }
        match self.architecture {
            Architecture::Llama => {
                m.insert("attention_bias".into(), self.qkv_bias.into());
                m.insert("mlp_bias".into(), self.mlp_bias.into());
            }
            Architecture::Qwen2 => {
                m.insert("use_sliding_window".into(), false.into());
                m.insert("sliding_window".into(), Value::Null);
                m.insert("max_window_layers".into(), self.num_hidden_layers.into());
            }
            Architecture::Qwen3 => {
                m.insert("attention_bias".into(), self.qkv_bias.into());
                m.insert("use_sliding_window".into(), false.into());
                m.insert("sliding_window".into(), Value::Null);
            }
        }
        m.insert("attention_dropout".into(), 0.0.into());
        if let Some(b) = self.bos_token_id {
            m.insert("bos_token_id".into(), b.into());
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [e] => {
                m.insert("eos_token_id".into(), (*e).into());
            }
            es => {
                m.insert("eos_token_id".into(), serde_json::json!(es));
            }
        }
        if let Some(p) = self.pad_token_id {
            m.insert("pad_token_id".into(), p.into());
        }
        m.insert("dtype".into(), self.dtype.clone().unwrap_or_else(|| "float32".into()).into());
        m.insert("torch_dtype".into(), self.dtype.clone().unwrap_or_else(|| "float32".into()).into());
        m.insert("use_cache".into(), true.into());
        Value::Object(m)
    }

    /// Number of parameters (counting tied embeddings once).
    pub fn num_parameters(&self) -> usize {
        let h = self.hidden_size;
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let mut attn = h * q + 2 * h * kv + q * h;
        if self.qkv_bias {
            attn += q + 2 * kv;
        }
        if self.o_bias {
            attn += h;
        }
        if self.qk_norm {
            attn += 2 * self.head_dim;
        }
        let mlp = 3 * h * self.intermediate_size;
        let layer = attn + mlp + 2 * h;
        let emb = self.vocab_size * h;
        emb + if self.tie_word_embeddings { 0 } else { emb } + self.num_hidden_layers * layer + h
    }
}
