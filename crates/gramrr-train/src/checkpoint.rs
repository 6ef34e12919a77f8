//! What a run writes: full HF checkpoints, and resumable training checkpoints.
//!
//! A training checkpoint is a directory `checkpoints/step-NNNNNN/` holding the trainable weights
//! (`model.safetensors`, or the adapter in PEFT layout), `optimizer.safetensors` (f32 moments)
//! and `trainer_state.json`. It is written under a temporary name and renamed into place, and
//! only then does `checkpoints/latest` (itself replaced atomically) name it: a run killed at any
//! moment leaves the previous complete checkpoint as the one a resume finds.

use std::path::{Path, PathBuf};

use candle_core::DType;
use gramrr_model::fsutil::{write_atomic, write_json_atomic};
use gramrr_model::model::Decoder;
use gramrr_model::tokenizer::TextTokenizer;
use gramrr_model::weights::save_safetensors;
use serde_json::Value;

use crate::error::{Result, TrainError};

/// Files next to a model's weights that a full checkpoint carries over from its base.
const TOKENIZER_FILES: [&str; 9] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
];

/// Writes `decoder` as an HF checkpoint (f32 `model.safetensors`, `config.json`, tokenizer and
/// generation files) that transformers and `gramrr` load. The config and tokenizer files are
/// copied from `base_dir` when given (so fields we do not model survive); otherwise the config
/// is written from the decoder and the tokenizer from `tokenizer`.
pub fn save_hf_checkpoint(
    decoder: &Decoder,
    dir: &Path,
    base_dir: Option<&Path>,
    tokenizer: Option<&TextTokenizer>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let tensors: Vec<(String, candle_core::Tensor)> =
        decoder.named_parameters().into_iter().map(|(n, t)| (n, t.detach())).collect();
    save_safetensors(&tensors, &dir.join("model.safetensors"), DType::F32)?;
    let mut config = decoder.cfg.to_hf_json();
    if let Some(base) = base_dir {
        let p = base.join("config.json");
        if let Ok(text) = std::fs::read_to_string(&p) {
            config = serde_json::from_str(&text).map_err(|e| TrainError::Json { path: p.clone(), source: e })?;
        }
        // The weights are written in f32 whatever the base stored.
        if let Some(o) = config.as_object_mut() {
            for k in ["dtype", "torch_dtype"] {
                if o.contains_key(k) {
                    o.insert(k.into(), Value::String("float32".into()));
                }
            }
        }
        for f in TOKENIZER_FILES {
            let src = base.join(f);
            if src.exists() && src.canonicalize().ok() != dir.join(f).canonicalize().ok() {
                let bytes = std::fs::read(&src).map_err(|e| TrainError::io(&src, e))?;
                write_atomic(&dir.join(f), &bytes)?;
            }
        }
    } else if let Some(tok) = tokenizer {
        let s = tok.inner().to_string(false).map_err(|e| TrainError::Checkpoint {
            path: dir.join("tokenizer.json"),
            message: e.to_string(),
        })?;
        write_atomic(&dir.join("tokenizer.json"), s.as_bytes())?;
    }
    write_json_atomic(&dir.join("config.json"), &config)?;
    Ok(())
}

/// The JSON state of a resumable checkpoint.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainerState {
    pub format: u32,
    /// Optimizer steps completed.
    pub step: usize,
    pub total_steps: usize,
    /// Epoch of the next step and how many of that epoch's micro-batches are already consumed.
    pub epoch: usize,
    pub micro_batch_in_epoch: usize,
    pub seed: u64,
    /// How the random streams are derived; recorded so a reader knows nothing else is needed.
    pub rng: String,
    /// "full" or "lora".
    pub mode: String,
    /// Hash of every setting that changes the trajectory, and of the tokenised data.
    pub config_hash: String,
    pub data_hash: String,
    /// Adam step count of each trainable parameter, in optimizer order.
    pub param_steps: Vec<u64>,
    /// Loss of each completed step (for the curve of a resumed run).
    pub losses: Vec<f32>,
}

pub const RNG_NOTE: &str = "ChaCha8 streams derived from (seed, epoch) for data order and (seed, step, micro-batch) for dropout";

pub fn checkpoints_dir(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

/// The directory named by `checkpoints/latest`, if any.
pub fn latest_checkpoint(out: &Path) -> Result<Option<PathBuf>> {
    let p = checkpoints_dir(out).join("latest");
    match std::fs::read_to_string(&p) {
        Ok(name) => {
            let d = checkpoints_dir(out).join(name.trim());
            if !d.join("trainer_state.json").exists() {
                return Err(TrainError::Resume { dir: d, message: "named by checkpoints/latest but has no trainer_state.json".into() });
            }
            Ok(Some(d))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TrainError::io(p, e)),
    }
}

pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let p = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&p).map_err(|e| TrainError::io(&p, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Json { path: p, source: e })
}

/// Writes one checkpoint: `write_files(tmp_dir)` fills a temporary directory, which is then
/// renamed to `step-NNNNNN` and made the latest; older checkpoints are removed afterwards.
pub fn write_checkpoint(out: &Path, step: usize, write_files: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    let root = checkpoints_dir(out);
    let name = format!("step-{step:06}");
    let tmp = root.join(format!(".tmp-{name}"));
    let fin = root.join(&name);
    for d in [&tmp, &fin] {
        if d.exists() {
            std::fs::remove_dir_all(d).map_err(|e| TrainError::io(d, e))?;
        }
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    write_files(&tmp)?;
    std::fs::rename(&tmp, &fin).map_err(|e| TrainError::io(&fin, e))?;
    write_atomic(&root.join("latest"), name.as_bytes())?;
    // Only now is the old checkpoint unreferenced.
    if let Ok(rd) = std::fs::read_dir(&root) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n != name && n != "latest" && (n.starts_with("step-") || n.starts_with(".tmp-")) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(fin)
}

/// Keeps the lines of a JSONL log whose `"step"` is ≤ `step`: a resumed run rewrites the steps
/// after its checkpoint, so their old lines go. A missing file is nothing to do.
pub fn truncate_jsonl_steps(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s as usize <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    write_atomic(path, kept.as_bytes())?;
    Ok(())
}

/// Loads a checkpoint's trainable tensors (the adapter, or the full model) and the optimizer's
/// moments into `opt`: the one resume path of the SFT and GRPO trainers. A missing tensor or a
/// moment that does not fit is a `Resume` error naming the checkpoint.
pub fn restore_trainable(
    ck: &Path,
    lora: bool,
    opt: &mut crate::optim::AdamW,
    param_steps: &[u64],
    device: &candle_core::Device,
) -> Result<()> {
    let rerr = |m: String| TrainError::Resume { dir: ck.to_path_buf(), message: m };
    let wfile = ck.join(if lora { "adapter_model.safetensors" } else { "model.safetensors" });
    let weights = gramrr_model::weights::load_safetensors_file(&wfile, device)?;
    for p in &opt.params {
        let t = weights.get(&p.name).ok_or_else(|| rerr(format!("{}: tensor {:?} is missing", wfile.display(), p.name)))?;
        p.var.set(t)?;
    }
    let moments = gramrr_model::weights::load_safetensors_file(&ck.join("optimizer.safetensors"), device)?;
    opt.load_state(&moments, param_steps).map_err(|m| rerr(format!("optimizer.safetensors: {m}")))?;
    Ok(())
}
