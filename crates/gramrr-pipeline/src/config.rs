//! The pipeline's configuration file (TOML). Every knob of the method that the paper leaves
//! open is here with a stated default: k, the sampling temperature, the context-free prompt,
//! the vote count v, the confidence threshold, the length limits and the iteration count m.
//!
//! The top-level `[train]` table holds training defaults shared by every training stage; each
//! stage's own `train` table (`[prover.train]`, `[reward_model.train]`, ...) overrides them key
//! by key. Relative paths are relative to the config file's directory.

use std::path::{Path, PathBuf};

use gramrr_model::{DeviceChoice, LoadOptions, WeightDType};
use gramrr_train::{AdamWConfig, LoraConfig, Scheduler, SftConfig, Truncate};
use serde::{Deserialize, Serialize};

use crate::error::{PipelineError, Result};

/// The whole configuration, as read from `CONFIG.toml` (after `[train]` defaults are merged
/// into each stage's `train` table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Where every stage writes (manifest, data, models).
    pub run_dir: PathBuf,
    /// Seeds every random choice of the run (sampling, shuffles, random selection baselines).
    #[serde(default = "d_seed")]
    pub seed: u64,
    #[serde(default)]
    pub format: FormatConfig,
    pub data: DataConfig,
    pub model: ModelConfig,
    #[serde(default)]
    pub engine: EngineConfig,
    #[serde(default)]
    pub prover: StageTrain,
    #[serde(default)]
    pub synthesis: SynthesisConfig,
    #[serde(default)]
    pub filter: FilterConfig,
    #[serde(default)]
    pub reward_model: RewardModelConfig,
    #[serde(default)]
    pub self_training: SelfTrainingConfig,
    #[serde(default, rename = "final")]
    pub final_tune: FinalConfig,
    #[serde(default)]
    pub adapt: AdaptConfig,
    #[serde(default)]
    pub baseline: OptionalStage,
    #[serde(default)]
    pub control: OptionalStage,
    #[serde(default)]
    pub eval: EvalConfig,
    /// Training defaults for every stage (see the module docs). Kept after loading only for
    /// the record; the stages read their own merged tables.
    #[serde(default)]
    pub train: TrainConfig,
}

fn d_seed() -> u64 {
    42
}

/// Which judge/proof text format the models read and write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case", deny_unknown_fields)]
pub enum FormatConfig {
    /// GRAM-R²'s released format (byte-exact judge template, `<think>` Feedback / Comparision /
    /// Conclusion `</think>` `<answer>` label `</answer>`), gramrr-data's proof form and rule
    /// filter.
    GramRr {
        /// Conditioning of log π_ψ(ẑ) in Eq. 5: "empty-user" (an empty user turn through the
        /// chat template) or "bos" (nothing but the tokenizer's own start).
        #[serde(default = "d_context_free")]
        context_free: String,
        /// Reject a proof whose Conclusion names only the other response.
        #[serde(default)]
        check_conclusion: bool,
    },
    /// The demo's compact format: same structure in a few dozen characters (see
    /// `format::compact`).
    Compact {
        /// The raw prompt log π_ψ(ẑ) is conditioned on in Eq. 5.
        #[serde(default = "d_compact_context_free")]
        context_free: String,
    },
}

fn d_context_free() -> String {
    "empty-user".into()
}
fn d_compact_context_free() -> String {
    "\n".into()
}

impl Default for FormatConfig {
    fn default() -> Self {
        FormatConfig::GramRr { context_free: d_context_free(), check_conclusion: false }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Rationale-annotated pairs (JSONL of preference pairs with `label` and `rationale`): the
    /// prover's training data and the final fine-tuning set.
    pub seed_rationales: PathBuf,
    /// Labeled pairs without rationales: proofs are synthesized for them.
    pub labeled: PathBuf,
    /// Unlabeled pairs for self-training (labels, if present, are ignored).
    #[serde(default)]
    pub unlabeled: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The backbone of the reward model π_φ: a model directory or an `org/name` in the offline
    /// Hugging Face cache.
    pub base: String,
    /// The backbone of the preference-proving model π_ψ (default: `base`).
    #[serde(default)]
    pub prover_base: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// "cpu", "cuda" or "cuda:N".
    pub device: String,
    /// "f32" or "bf16" weights for generation and scoring.
    pub dtype: String,
    /// Most sequences per forward pass in generation and scoring.
    pub batch_size: usize,
    /// Most padded tokens per forward pass.
    pub max_batch_tokens: usize,
    /// Batches run concurrently on this many CPU threads (for small models; 1 leaves the
    /// threading to the kernels). Outputs do not depend on it.
    pub workers: usize,
    /// OpenAI-compatible servers (`http://host:port/v1`, one per replica) already serving the
    /// model every model-using stage runs on; the stage's checkpoint directory still supplies
    /// the tokenizer and chat template. Empty: the local engine (or `launch`).
    pub urls: Vec<String>,
    /// A command that serves one checkpoint over the OpenAI API, with `{model}` (the stage's
    /// checkpoint directory) and `{port}` (picked by gramrr) filled in, e.g.
    /// `vllm serve {model} --port {port}`. gramrr starts `replicas` of it before each
    /// model-using stage, waits for `/v1/models`, runs the stage on them, and stops them after
    /// (also on error). See the crate README for vLLM, SGLang and llama.cpp.
    pub launch: Option<String>,
    pub replicas: usize,
    /// The `model` name to request [default: the first one `/v1/models` lists].
    pub served_model: Option<String>,
    /// Most requests in flight per replica.
    pub max_in_flight: usize,
    /// Seconds before a request is given up on one replica and re-sent to another.
    pub request_timeout_s: u64,
    /// Seconds a launched server may take to answer `/v1/models`.
    pub startup_timeout_s: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            device: "cpu".into(),
            dtype: "f32".into(),
            batch_size: 64,
            max_batch_tokens: 65_536,
            workers: 1,
            urls: vec![],
            launch: None,
            replicas: 1,
            served_model: None,
            max_in_flight: 16,
            request_timeout_s: 600,
            startup_timeout_s: 600,
        }
    }
}

impl EngineConfig {
    pub fn load_options(&self, origin: &Path) -> Result<LoadOptions> {
        let device: DeviceChoice =
            self.device.parse().map_err(|e: String| PipelineError::config(origin, format!("engine.device: {e}")))?;
        let dtype: WeightDType =
            self.dtype.parse().map_err(|e: String| PipelineError::config(origin, format!("engine.dtype: {e}")))?;
        if !self.urls.is_empty() && self.launch.is_some() {
            return Err(PipelineError::config(origin, "engine: give `urls` (servers already running) or `launch` (gramrr starts them), not both"));
        }
        if let Some(l) = &self.launch {
            if !l.contains("{port}") || !l.contains("{model}") {
                return Err(PipelineError::config(origin, format!("engine.launch {l:?}: must contain {{model}} and {{port}}")));
            }
        }
        if self.replicas == 0 || self.max_in_flight == 0 {
            return Err(PipelineError::config(origin, "engine.replicas and engine.max_in_flight must be at least 1"));
        }
        Ok(LoadOptions { device, dtype, batch_size: self.batch_size, max_batch_tokens: self.max_batch_tokens, workers: self.workers, dequantize: false })
    }
}

/// Supervised fine-tuning settings of one stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Optimizer steps; when unset, `epochs` decides.
    pub steps: Option<usize>,
    pub epochs: f64,
    pub lr: f64,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub warmup_ratio: f64,
    /// "constant", "linear" or "cosine".
    pub scheduler: String,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub max_grad_norm: f64,
    /// Longest training sequence in tokens; longer examples are skipped.
    pub max_len: usize,
    /// Loss weight of the decision tokens (the label, and the format's verdict words) relative
    /// to the other target tokens. 1 is the paper's plain cross entropy (Eq. 2 / Eq. 4).
    pub decision_weight: f32,
    pub group_by_length: bool,
    /// Pack examples into rows of up to `max_len` tokens (pretraining-style, no padding; see
    /// `gramrr_train::pack_examples`).
    pub pack: bool,
    /// Checkpoint every N steps so a killed stage resumes (0: only at the end).
    pub save_every: usize,
    /// Keep the resumable training checkpoints after a stage finishes.
    pub keep_checkpoints: bool,
    /// LoRA instead of full fine-tuning (the adapter is merged into the stage's model).
    pub lora: Option<LoraConfig>,
    /// Data-parallel CPU workers (each micro-batch split across this many threads). Pays for
    /// small models, whose matrices are too small for a threaded GEMM; 1 leaves the threading
    /// to the kernels.
    pub workers: usize,
    /// Padding-free micro-batches (TRL's `padding_free`): examples share rows, each attending
    /// only to itself. Same loss and gradients as padded batches, less compute when lengths vary.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub padding_free: bool,
    /// Who trains the stage: gramrr's own trainer, or an external command (TRL, LLaMA-Factory,
    /// under accelerate/DeepSpeed/FSDP; see `external_train`). Left out of the serialized
    /// table at its default so runs made before this key existed keep their stage keys.
    #[serde(skip_serializing_if = "TrainBackend::is_builtin")]
    pub backend: TrainBackend,
    /// The shell command of `backend = "command"`, with placeholders (`{model}`, `{data}`,
    /// `{out}`, `{config}`, ...; see `external_train::PLACEHOLDERS`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

/// Which trainer runs a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrainBackend {
    /// gramrr-train, in process: exact, resumable, right for CPUs and small models.
    #[default]
    Builtin,
    /// `command`, run through the shell on data and settings gramrr writes for it.
    Command,
}

impl TrainBackend {
    pub fn is_builtin(&self) -> bool {
        *self == TrainBackend::Builtin
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: None,
            epochs: 1.0,
            lr: 1e-5,
            batch_size: 8,
            grad_accum: 1,
            warmup_ratio: 0.1,
            scheduler: "cosine".into(),
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            max_grad_norm: 1.0,
            max_len: 2048,
            decision_weight: 1.0,
            group_by_length: true,
            pack: false,
            save_every: 200,
            keep_checkpoints: false,
            lora: None,
            workers: 1,
            padding_free: false,
            backend: TrainBackend::Builtin,
            command: None,
        }
    }
}

impl TrainConfig {
    /// The trainer's settings, with this stage's seed. `steps` overrides the configured count
    /// (the compute-matched control).
    pub fn sft_config(&self, seed: u64, steps: Option<usize>, origin: &Path, table: &str) -> Result<SftConfig> {
        let scheduler: Scheduler = self
            .scheduler
            .parse()
            .map_err(|e: String| PipelineError::config(origin, format!("{table}.scheduler: {e}")))?;
        Ok(SftConfig {
            lora: self.lora.clone(),
            max_steps: steps.or(self.steps),
            epochs: self.epochs,
            lr: self.lr,
            scheduler,
            warmup_ratio: self.warmup_ratio,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            adam: AdamWConfig { beta1: self.beta1, beta2: self.beta2, eps: 1e-8, weight_decay: self.weight_decay },
            max_grad_norm: self.max_grad_norm,
            max_len: self.max_len,
            truncate: Truncate::Skip,
            shuffle: true,
            group_by_length: self.group_by_length,
            seed,
            save_every: self.save_every,
            resume: true,
            label_loss: None,
            merge_lora_on_return: true,
            workers: self.workers,
            padding_free: self.padding_free,
        })
    }
}

/// A training stage's table: only its `train` settings.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StageTrain {
    pub train: TrainConfig,
}

/// Stage 2: proof synthesis (also used for the proofs of pseudo-labelled pairs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SynthesisConfig {
    /// Proofs sampled per pair (k).
    pub k: usize,
    /// Sampling temperature (T).
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    /// Longest proof generated, in tokens; a proof cut here is rejected as unfinished.
    pub max_new_tokens: usize,
    /// Pairs per checkpointed chunk: outputs are flushed per chunk, a killed run resumes at the
    /// first unfinished chunk, and `--shard i/n` deals out chunks `c` with `c % n == i`.
    pub chunk: usize,
}

impl Default for SynthesisConfig {
    fn default() -> Self {
        Self { k: 4, temperature: 1.0, top_p: 1.0, top_k: 0, max_new_tokens: 1024, chunk: 64 }
    }
}

/// Rule filters on synthesized proofs (and thereby on the rationales made from them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterConfig {
    /// Longest proof kept, in characters.
    pub max_chars: Option<usize>,
    /// Longest proof kept, in whitespace-separated words.
    pub max_words: Option<usize>,
    /// Reject proofs with a blank section (GRAM-R² format).
    pub require_nonempty_sections: bool,
}

impl Default for FilterConfig {
    fn default() -> Self {
        Self { max_chars: Some(8192), max_words: None, require_nonempty_sections: true }
    }
}

/// Stage 3: the reward model π_φ.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardModelConfig {
    /// Train on the human rationales too, beside the synthesized set (they are used again in
    /// the final fine-tune).
    pub include_seed: bool,
    pub train: TrainConfig,
}

impl Default for RewardModelConfig {
    fn default() -> Self {
        Self { include_seed: true, train: TrainConfig::default() }
    }
}

/// Where a self-training round's retraining starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetrainFrom {
    /// Continue from the previous round's reward model.
    Previous,
    /// Start again from the backbone.
    Base,
}

/// Stage 4: self-training with denoised pseudo-labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SelfTrainingConfig {
    /// Iterations (m); each takes a fresh batch of unlabeled pairs.
    pub iterations: usize,
    /// Unlabeled pairs per iteration; 0 splits the unlabeled set evenly over the iterations.
    pub batch: usize,
    /// Sampled judgments per pair (v); the label is their majority.
    pub votes: usize,
    /// Temperature of the votes; with more than one vote, 0 means gramrr-judge's vote temperature
    /// (0.7): several votes always sample, as in `gramrr judge` and the server.
    pub temperature: f32,
    pub top_p: f32,
    /// Longest rationale generated, in tokens.
    pub max_new_tokens: usize,
    /// Keep a pair only if its confidence (the mean, over the votes, of the label-token
    /// probability of the majority label, softmax over {A, B}) is at least this.
    pub threshold: f64,
    pub retrain_from: RetrainFrom,
    /// Pairs per checkpointed chunk (see `synthesis.chunk`).
    pub chunk: usize,
    pub train: TrainConfig,
}

impl Default for SelfTrainingConfig {
    fn default() -> Self {
        Self {
            iterations: 3,
            batch: 0,
            votes: 3,
            temperature: 0.8,
            top_p: 1.0,
            max_new_tokens: 1024,
            threshold: 0.9,
            retrain_from: RetrainFrom::Previous,
            chunk: 64,
            train: TrainConfig::default(),
        }
    }
}

/// Stage 5a: the final fine-tune on the human rationale data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FinalConfig {
    pub enabled: bool,
    pub train: TrainConfig,
}

impl Default for FinalConfig {
    fn default() -> Self {
        Self { enabled: true, train: TrainConfig::default() }
    }
}

/// Stage 5b: task adaptation of the foundation reward model on a small task set.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdaptConfig {
    /// Task pairs with labels; pairs without a rationale get a synthesized proof first.
    pub data: Option<PathBuf>,
    pub train: TrainConfig,
}

/// An optional stage: the vanilla baseline (the backbone trained on the human rationales only)
/// or the compute-matched control (the initial reward model trained on its own data for as
/// many extra steps as self-training used).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptionalStage {
    pub enabled: bool,
    pub train: TrainConfig,
}

/// Pairwise accuracy of every reward model the run trains, on a labeled test file.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    pub data: Option<PathBuf>,
    /// Longest generated rationale in tokens (greedy decoding); 0 uses
    /// `self_training.max_new_tokens`.
    pub max_new_tokens: usize,
}

/// Tables that carry a `train` sub-table, merged over the top-level `[train]` defaults.
const TRAIN_TABLES: [&str; 8] = ["prover", "reward_model", "self_training", "final", "adapt", "baseline", "control", "train"];

impl PipelineConfig {
    /// Parses TOML text; `origin` is the file it came from (for errors and relative paths).
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self> {
        let mut root: toml::Table =
            toml::from_str(text).map_err(|e| PipelineError::config(origin, format!("invalid TOML: {e}")))?;
        let defaults = match root.get("train") {
            None => toml::Table::new(),
            Some(toml::Value::Table(t)) => t.clone(),
            Some(_) => return Err(PipelineError::config(origin, "[train] must be a table")),
        };
        for name in TRAIN_TABLES.iter().filter(|n| **n != "train") {
            let stage = root.entry(name.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let toml::Value::Table(stage) = stage else {
                return Err(PipelineError::config(origin, format!("[{name}] must be a table")));
            };
            let mut merged = defaults.clone();
            match stage.get("train") {
                None => {}
                Some(toml::Value::Table(own)) => merged.extend(own.clone()),
                Some(_) => return Err(PipelineError::config(origin, format!("[{name}.train] must be a table"))),
            }
            stage.insert("train".into(), toml::Value::Table(merged));
        }
        let mut cfg: PipelineConfig = toml::Value::Table(root)
            .try_into()
            .map_err(|e: toml::de::Error| PipelineError::config(origin, e.to_string()))?;
        let base = origin.parent().unwrap_or(Path::new("."));
        cfg.resolve_paths(base);
        cfg.validate(origin)?;
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| PipelineError::io(path, e))?;
        Self::from_toml(&text, path)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.run_dir);
        fix(&mut self.data.seed_rationales);
        fix(&mut self.data.labeled);
        if let Some(p) = self.data.unlabeled.as_mut() {
            fix(p);
        }
        if let Some(p) = self.adapt.data.as_mut() {
            fix(p);
        }
        if let Some(p) = self.eval.data.as_mut() {
            fix(p);
        }
        // A model given as a relative path that exists next to the config is a directory;
        // anything else may be an `org/name` in the HF cache and is left alone.
        for m in std::iter::once(&mut self.model.base).chain(self.model.prover_base.as_mut()) {
            let candidate = base.join(&*m);
            if Path::new(m.as_str()).is_relative() && candidate.exists() {
                *m = candidate.display().to_string();
            }
        }
    }

    /// Checks the values that would otherwise fail deep inside a stage.
    pub fn validate(&self, origin: &Path) -> Result<()> {
        let bad = |m: String| Err(PipelineError::config(origin, m));
        if self.synthesis.k == 0 {
            return bad("synthesis.k must be at least 1".into());
        }
        if !(self.synthesis.temperature >= 0.0) {
            return bad(format!("synthesis.temperature = {} must be ≥ 0", self.synthesis.temperature));
        }
        if self.synthesis.chunk == 0 || self.self_training.chunk == 0 {
            return bad("synthesis.chunk and self_training.chunk must be at least 1".into());
        }
        let st = &self.self_training;
        if st.iterations > 0 {
            if st.votes == 0 {
                return bad("self_training.votes must be at least 1".into());
            }
            if !(0.0..=1.0).contains(&st.threshold) {
                return bad(format!("self_training.threshold = {} must be in [0, 1]", st.threshold));
            }
            if self.data.unlabeled.is_none() {
                return bad("self_training.iterations > 0 needs data.unlabeled".into());
            }
        }
        for (name, t) in self.train_tables() {
            if t.batch_size == 0 {
                return bad(format!("{name}.train.batch_size must be at least 1"));
            }
            if !(t.decision_weight >= 0.0) {
                return bad(format!("{name}.train.decision_weight must be ≥ 0"));
            }
            if t.scheduler.parse::<Scheduler>().is_err() {
                return bad(format!("{name}.train.scheduler = {:?}: expected constant, linear or cosine", t.scheduler));
            }
            match (t.backend, &t.command) {
                (TrainBackend::Command, None) => {
                    return bad(format!("{name}.train.backend = \"command\" needs {name}.train.command (the trainer's shell command)"))
                }
                (_, Some(c)) => {
                    if let Err(m) = crate::external_train::check_placeholders(c) {
                        return bad(format!("{name}.train.command: {m}"));
                    }
                }
                _ => {}
            }
        }
        if let FormatConfig::GramRr { context_free, .. } = &self.format {
            if !["empty-user", "bos"].contains(&context_free.as_str()) {
                return bad(format!("format.context_free = {context_free:?}: expected \"empty-user\" or \"bos\""));
            }
        }
        Ok(())
    }

    pub fn train_tables(&self) -> [(&'static str, &TrainConfig); 7] {
        [
            ("prover", &self.prover.train),
            ("reward_model", &self.reward_model.train),
            ("self_training", &self.self_training.train),
            ("final", &self.final_tune.train),
            ("adapt", &self.adapt.train),
            ("baseline", &self.baseline.train),
            ("control", &self.control.train),
        ]
    }

    /// The backbone of the prover.
    pub fn prover_base(&self) -> &str {
        self.model.prover_base.as_deref().unwrap_or(&self.model.base)
    }

    /// The config as TOML (resolved paths, merged train tables): what the run directory keeps.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the config serializes to TOML")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
run_dir = "run"
[data]
seed_rationales = "seed.jsonl"
labeled = "labeled.jsonl"
unlabeled = "unlabeled.jsonl"
[model]
base = "Qwen/Qwen3-0.6B"
"#;

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = PipelineConfig::from_toml(MIN, Path::new("/x/cfg.toml")).unwrap();
        assert_eq!(c.run_dir, PathBuf::from("/x/run"));
        assert_eq!(c.data.labeled, PathBuf::from("/x/labeled.jsonl"));
        assert_eq!(c.model.base, "Qwen/Qwen3-0.6B");
        assert_eq!((c.synthesis.k, c.synthesis.temperature), (4, 1.0));
        assert_eq!((c.self_training.iterations, c.self_training.votes, c.self_training.threshold), (3, 3, 0.9));
        assert_eq!(c.filter.max_chars, Some(8192));
        assert_eq!(c.format, FormatConfig::default());
    }

    #[test]
    fn stage_train_tables_override_the_shared_defaults() {
        let text = format!("{MIN}\n[train]\nlr = 3e-4\nbatch_size = 16\n[prover.train]\nlr = 1e-3\n");
        let c = PipelineConfig::from_toml(&text, Path::new("cfg.toml")).unwrap();
        assert_eq!(c.prover.train.lr, 1e-3);
        assert_eq!(c.prover.train.batch_size, 16);
        assert_eq!(c.reward_model.train.lr, 3e-4);
        assert_eq!(c.final_tune.train.batch_size, 16);
    }

    #[test]
    fn errors_name_the_field() {
        let e = PipelineConfig::from_toml(&format!("{MIN}\n[synthesis]\nkk = 3\n"), Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("kk"), "{e}");
        let e = PipelineConfig::from_toml(&format!("{MIN}\n[self_training]\nthreshold = 1.5\n"), Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("self_training.threshold"), "{e}");
        let e = PipelineConfig::from_toml(&format!("{MIN}\n[reward_model.train]\nscheduler = \"cos\"\n"), Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("scheduler"), "{e}");
    }

    #[test]
    fn config_round_trips_through_toml() {
        let c = PipelineConfig::from_toml(MIN, Path::new("/x/cfg.toml")).unwrap();
        let again = PipelineConfig::from_toml(&c.to_toml(), Path::new("/x/cfg.toml")).unwrap();
        assert_eq!(c, again);
    }
}

#[cfg(test)]
mod example_file {
    use super::*;

    /// The commented example in `examples/pipeline.toml` parses and states the defaults.
    #[test]
    fn example_config_parses_and_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/pipeline.toml");
        let c = PipelineConfig::from_file(&path).unwrap();
        let d = TrainConfig::default();
        assert_eq!(TrainConfig { lr: d.lr, ..c.reward_model.train.clone() }, d);
        assert_eq!(c.prover.train.lr, 2e-5);
        assert_eq!(c.synthesis, SynthesisConfig::default());
        assert_eq!(c.filter, FilterConfig::default());
        assert_eq!(SelfTrainingConfig { train: TrainConfig::default(), ..c.self_training.clone() }, SelfTrainingConfig::default());
        assert_eq!(c.engine, EngineConfig::default());
        assert_eq!(c.format, FormatConfig::default());
    }
}
