//! The SFT loop: one trainer for every stage of GRAM-R² (proving model, reward model,
//! self-training rounds, final fine-tuning, task adaptation).
//!
//! Loss of an optimizer step = Σ over its target tokens of w·nll, divided by Σ w over the same
//! tokens (plus, optionally, a label loss averaged over the step's labelled examples). Each
//! micro-batch backpropagates its share divided by the step's normaliser, so gradient
//! accumulation never changes the loss being optimised.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Tensor, Var};
use gramrr_model::model::{Decoder, ForwardCtx};
use gramrr_model::tokenizer::TextTokenizer;
use gramrr_model::weights::save_safetensors;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use crate::checkpoint::{self, TrainerState};
use crate::data::{DataStats, SftExample, Truncate};
use crate::error::{Result, TrainError};
use crate::lora::{self, LoraConfig};
use crate::loss::{build_micro_batch, build_padding_free_micro_batch, micro_batch_loss, LabelLoss};
use crate::optim::{clip_coefficient, global_grad_norm, lr_lambda, warmup_steps, AdamW, AdamWConfig, Scheduler};

/// The label loss of GRAM v1: cross entropy over a few label tokens at the last prompt position.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LabelLossConfig {
    /// Label token texts, e.g. `[" A", " B"]`; each must be one token.
    pub tokens: Vec<String>,
    pub smoothing: f64,
    /// Multiplier of the label loss added to the token loss.
    pub weight: f64,
}

/// Every knob of a run. `Default` gives transformers/TRL defaults where they exist.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SftConfig {
    /// LoRA instead of full fine-tuning.
    pub lora: Option<LoraConfig>,
    /// Optimizer steps; overrides `epochs` when set.
    pub max_steps: Option<usize>,
    pub epochs: f64,
    pub lr: f64,
    pub scheduler: Scheduler,
    pub warmup_ratio: f64,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub adam: AdamWConfig,
    /// Global-norm clipping threshold; 0 turns clipping off.
    pub max_grad_norm: f64,
    pub max_len: usize,
    pub truncate: Truncate,
    pub shuffle: bool,
    /// Batches of similar length (less padding): examples are sorted by length within windows of
    /// 50 batches, and the batches are then shuffled.
    pub group_by_length: bool,
    pub seed: u64,
    /// Checkpoint every N optimizer steps (0: only at the end). Needs an output directory.
    pub save_every: usize,
    /// Continue from the latest checkpoint in the output directory, if there is one.
    pub resume: bool,
    pub label_loss: Option<LabelLossConfig>,
    /// Fold LoRA adapters into the weights of the returned decoder.
    pub merge_lora_on_return: bool,
    /// Data-parallel workers on the CPU: each micro-batch is split row-wise into this many
    /// shards, each runs forward and backward on its own thread (with its own one-thread rayon
    /// pool), and the gradients are summed in shard order. For small models, whose matrices are
    /// too small for a multi-threaded GEMM to pay, this is what uses the cores. The loss is the
    /// same; only the float summation order differs, so the result is exact for a given count.
    #[serde(default = "one")]
    pub workers: usize,
    /// Padding-free micro-batches: each worker's examples share rows, each attending only to
    /// itself with positions from 0 ([`crate::loss::build_padding_free_micro_batch`]). Same loss
    /// and gradients, fewer padded positions. Not serialised when off, so configuration hashes
    /// of runs from before the option stay valid.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub padding_free: bool,
}

fn one() -> usize {
    1
}

impl Default for SftConfig {
    fn default() -> Self {
        Self {
            lora: None,
            max_steps: None,
            epochs: 1.0,
            lr: 2e-5,
            scheduler: Scheduler::Linear,
            warmup_ratio: 0.0,
            batch_size: 8,
            grad_accum: 1,
            adam: AdamWConfig::default(),
            max_grad_norm: 1.0,
            max_len: 1024,
            truncate: Truncate::Left,
            shuffle: true,
            group_by_length: false,
            seed: 42,
            save_every: 0,
            resume: false,
            label_loss: None,
            merge_lora_on_return: true,
            workers: 1,
            padding_free: false,
        }
    }
}

impl SftConfig {
    /// Hash of the settings that change the trajectory (not where or how often it is saved).
    pub fn trajectory_hash(&self) -> String {
        let mut c = self.clone();
        c.save_every = 0;
        c.resume = false;
        c.merge_lora_on_return = true;
        hex(&Sha256::digest(serde_json::to_vec(&c).expect("config serializes")))
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Config(m));
        if self.batch_size == 0 {
            return bad("batch size must be at least 1".into());
        }
        if self.grad_accum == 0 {
            return bad("gradient accumulation must be at least 1".into());
        }
        if self.workers == 0 {
            return bad("workers must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return bad(format!("learning rate {} must be finite and non-negative", self.lr));
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return bad(format!("warmup ratio {} must be in [0, 1]", self.warmup_ratio));
        }
        if self.max_steps.is_none() && !(self.epochs > 0.0) {
            return bad(format!("epochs {} must be positive", self.epochs));
        }
        if self.max_len < 2 {
            return bad(format!("max length {} is too short", self.max_len));
        }
        if let Some(l) = &self.lora {
            if l.rank == 0 || l.targets.is_empty() || !(0.0..1.0).contains(&l.dropout) {
                return bad(format!("LoRA needs rank ≥ 1, at least one target and dropout in [0, 1): {l:?}"));
            }
        }
        Ok(())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Hash of the tokenised examples (in order), so a resume refuses different data.
pub fn data_hash(examples: &[SftExample]) -> String {
    let mut h = Sha256::new();
    for e in examples {
        h.update(serde_json::to_vec(e).expect("examples serialize"));
        h.update(b"\n");
    }
    hex(&h.finalize())
}

/// Where a run writes, and what it was started from.
#[derive(Debug, Clone)]
pub struct TrainOutput {
    pub dir: PathBuf,
    /// The base model's directory: its config and tokenizer files are copied into full
    /// checkpoints, and LoRA adapters name it as `base_model_name_or_path`.
    pub base_model_dir: Option<PathBuf>,
    /// Write `loss.png` at the end.
    pub plot: bool,
}

/// Before the first step.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub total_steps: usize,
    pub start_step: usize,
    pub examples: usize,
    pub steps_per_epoch: usize,
    pub trainable_params: usize,
    pub mode: &'static str,
    pub data: DataStats,
}

/// After each optimizer step.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StepMetrics {
    /// Steps completed (1-based).
    pub step: usize,
    pub total_steps: usize,
    pub epoch: f64,
    pub loss: f64,
    pub token_loss: Option<f64>,
    pub label_loss: Option<f64>,
    pub lr: f64,
    /// Before clipping.
    pub grad_norm: f64,
    /// Real (non-padding) tokens processed in this step.
    pub tokens: usize,
    /// Target tokens (weight > 0).
    pub target_tokens: usize,
    pub step_seconds: f64,
    pub tokens_per_sec: f64,
}

/// What a caller sees of a run's progress; every method has a do-nothing default.
pub trait TrainObserver {
    fn on_start(&mut self, _info: &RunInfo) {}
    fn on_step(&mut self, _m: &StepMetrics) {}
    fn on_event(&mut self, _message: &str) {}
}

/// Observes nothing.
pub struct Silent;
impl TrainObserver for Silent {}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TrainReport {
    pub mode: String,
    pub steps: usize,
    pub resumed_from: Option<usize>,
    /// Loss of every step of the run (including steps before a resume).
    pub losses: Vec<f32>,
    pub final_loss: Option<f32>,
    pub data: DataStats,
    pub trainable_params: usize,
    pub tokens: usize,
    pub seconds: f64,
    pub tokens_per_sec: f64,
    pub out_dir: Option<PathBuf>,
}

/// The order of micro-batches: a pure function of (seed, epoch), so that a resume knows where it
/// is from the step count alone.
pub struct Plan {
    lens: Vec<usize>,
    batch_size: usize,
    grad_accum: usize,
    shuffle: bool,
    group_by_length: bool,
    seed: u64,
    pub batches_per_epoch: usize,
    pub steps_per_epoch: usize,
    cached: Option<(usize, Vec<Vec<usize>>)>,
}

impl Plan {
    pub fn new(examples: &[SftExample], cfg: &SftConfig) -> Self {
        let n = examples.len();
        let batches_per_epoch = n.div_ceil(cfg.batch_size);
        Self {
            lens: examples.iter().map(|e| e.len()).collect(),
            batch_size: cfg.batch_size,
            grad_accum: cfg.grad_accum,
            shuffle: cfg.shuffle,
            group_by_length: cfg.group_by_length,
            seed: cfg.seed,
            batches_per_epoch,
            steps_per_epoch: batches_per_epoch.div_ceil(cfg.grad_accum),
            cached: None,
        }
    }

    fn rng(&self, epoch: usize) -> ChaCha8Rng {
        let mut r = ChaCha8Rng::seed_from_u64(self.seed);
        r.set_stream(1 + epoch as u64);
        r
    }

    pub fn epoch_batches(&self, epoch: usize) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..self.lens.len()).collect();
        let mut rng = self.rng(epoch);
        if self.shuffle {
            order.shuffle(&mut rng);
        }
        if !self.group_by_length {
            return order.chunks(self.batch_size).map(|c| c.to_vec()).collect();
        }
        let window = self.batch_size * 50;
        let mut batches: Vec<Vec<usize>> = Vec::new();
        for w in order.chunks(window) {
            let mut w = w.to_vec();
            w.sort_by(|&a, &b| self.lens[b].cmp(&self.lens[a]).then(a.cmp(&b)));
            batches.extend(w.chunks(self.batch_size).map(|c| c.to_vec()));
        }
        if self.shuffle {
            batches.shuffle(&mut rng);
        }
        batches
    }

    /// (epoch, index of the first micro-batch in the epoch, micro-batches) of optimizer step
    /// `step` (0-based). Steps never span two epochs, as in transformers' Trainer.
    pub fn step(&mut self, step: usize) -> (usize, usize, Vec<Vec<usize>>) {
        let epoch = step / self.steps_per_epoch;
        let within = step % self.steps_per_epoch;
        if self.cached.as_ref().map(|c| c.0) != Some(epoch) {
            self.cached = Some((epoch, self.epoch_batches(epoch)));
        }
        let batches = &self.cached.as_ref().expect("cached").1;
        let start = within * self.grad_accum;
        let end = (start + self.grad_accum).min(batches.len());
        (epoch, start, batches[start..end].to_vec())
    }
}

/// Total optimizer steps of a run.
pub fn total_steps(cfg: &SftConfig, steps_per_epoch: usize) -> usize {
    match cfg.max_steps {
        Some(s) => s,
        None => (cfg.epochs * steps_per_epoch as f64).ceil() as usize,
    }
}

/// Label token ids: each label text must encode to exactly one token.
pub fn resolve_label_ids(tok: &TextTokenizer, cfg: &LabelLossConfig) -> Result<Vec<u32>> {
    let mut ids = Vec::with_capacity(cfg.tokens.len());
    for t in &cfg.tokens {
        let enc = tok.encode(t, false)?;
        if enc.len() != 1 {
            return Err(TrainError::Config(format!("label token {t:?} encodes to {} tokens {enc:?}; it must be exactly one", enc.len())));
        }
        ids.push(enc[0]);
    }
    if ids.len() < 2 {
        return Err(TrainError::Config("the label loss needs at least two label tokens".into()));
    }
    Ok(ids)
}

/// Makes the decoder's trainable parameters `Var`s. Full fine-tuning: every parameter (the tied
/// embedding is one parameter, so the gradients of both its uses add up). LoRA: only the
/// adapters; every projection is frozen so no weight gradient is computed or kept.
fn prepare_parameters(decoder: &mut Decoder, cfg: &SftConfig) -> Result<Vec<(String, Var)>> {
    trainable_parameters(decoder, cfg.lora.as_ref(), cfg.seed)
}

/// What [`train_sft`] does to a decoder before its first step, for other training loops (RL):
/// the trainable parameters become `Var`s (every parameter, or fresh LoRA adapters seeded by
/// `seed` with every projection frozen), returned with their names in optimizer order.
pub fn trainable_parameters(decoder: &mut Decoder, lora_cfg: Option<&LoraConfig>, seed: u64) -> Result<Vec<(String, Var)>> {
    let mut vars: Vec<(String, Var)> = Vec::new();
    match lora_cfg {
        None => {
            decoder.map_parameters(&mut |name, t| {
                let v = Var::from_tensor(&t.detach())?;
                vars.push((name.to_string(), v.clone()));
                Ok(v.as_tensor().clone())
            })?;
            for l in decoder.layers.iter_mut() {
                for (_, lin) in l.linears_mut() {
                    lin.frozen = false;
                }
            }
        }
        Some(lc) => {
            decoder.map_parameters(&mut |_, t| Ok(t.detach()))?;
            if !lora::has_lora(decoder) {
                lora::attach_lora(decoder, lc, seed)?;
            }
            for l in decoder.layers.iter_mut() {
                for (_, lin) in l.linears_mut() {
                    lin.frozen = true;
                    if let Some(a) = lin.lora.as_mut() {
                        a.dropout = lc.dropout;
                    }
                }
            }
            lora::map_lora(decoder, &mut |name, t| {
                let v = Var::from_tensor(&t.detach())?;
                vars.push((name.to_string(), v.clone()));
                Ok(v.as_tensor().clone())
            })?;
        }
    }
    Ok(vars)
}

/// Turns training tensors back into plain ones for inference.
fn finish_decoder(decoder: &mut Decoder, cfg: &SftConfig) -> Result<()> {
    detach_for_inference(decoder)?;
    if cfg.lora.is_some() && cfg.merge_lora_on_return {
        lora::merge_lora(decoder)?;
    }
    Ok(())
}

/// Makes every parameter and adapter a plain (non-`Var`) tensor sharing the same storage and
/// unfreezes the projections: a decoder that generates without building a graph.
pub fn detach_for_inference(decoder: &mut Decoder) -> Result<()> {
    decoder.map_parameters(&mut |_, t| Ok(t.detach()))?;
    lora::map_lora(decoder, &mut |_, t| Ok(t.detach()))?;
    for l in decoder.layers.iter_mut() {
        for (_, lin) in l.linears_mut() {
            lin.frozen = false;
        }
    }
    Ok(())
}

fn dropout_rng(seed: u64, step: usize, micro: usize) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream((1u64 << 40) + ((step as u64) << 12) + micro as u64);
    r
}

/// What one data-parallel shard hands back: its gradients in parameter order and its losses.
struct ShardResult {
    grads: Vec<Option<Tensor>>,
    total: f64,
    token: Option<f64>,
    label: Option<f64>,
    tokens: usize,
    targets: usize,
}

fn metrics_path(out: &Path) -> PathBuf {
    out.join("metrics.jsonl")
}

/// Keeps the metrics lines of steps ≤ `step` (a resumed run rewrites what came after).
fn truncate_metrics(out: &Path, step: usize) -> Result<()> {
    crate::checkpoint::truncate_jsonl_steps(&metrics_path(out), step)
}

/// Trains `decoder` on `examples` and returns it (adapters merged or kept, per
/// `cfg.merge_lora_on_return`) with a report. With an output directory, checkpoints are written
/// every `cfg.save_every` steps and at the end, `cfg.resume` continues from the latest one, and
/// the final model, `metrics.jsonl`, `train_report.json` and `loss.png` are written there.
pub fn train_sft(
    mut decoder: Decoder,
    tokenizer: &TextTokenizer,
    examples: &[SftExample],
    cfg: &SftConfig,
    out: Option<&TrainOutput>,
    observer: &mut dyn TrainObserver,
) -> Result<(Decoder, TrainReport)> {
    cfg.validate()?;
    let started = Instant::now();
    let dev = decoder.device().clone();

    // Length limits apply here too, so pre-tokenised callers get the same guarantee as files.
    let (data, stats) = crate::data::fit_examples(examples, cfg.max_len, cfg.truncate);
    if data.is_empty() {
        return Err(TrainError::Config(format!(
            "no training examples left ({} given, {} skipped as longer than max length {})",
            stats.records, stats.skipped, cfg.max_len
        )));
    }
    let label = match &cfg.label_loss {
        None => None,
        Some(l) => Some(LabelLoss { label_ids: resolve_label_ids(tokenizer, l)?, smoothing: l.smoothing, weight: l.weight }),
    };
    if let Some(ex) = data.iter().find(|e| e.label.is_some_and(|l| label.as_ref().is_none_or(|c| l >= c.label_ids.len()))) {
        return Err(TrainError::Config(format!("an example has label index {:?} but the label loss is not configured for it", ex.label)));
    }
    let pad_id = tokenizer
        .pad_token_id
        .or(decoder.cfg.pad_token_id)
        .or(tokenizer.eos_token_id)
        .unwrap_or(0);

    let mut plan = Plan::new(&data, cfg);
    let total = total_steps(cfg, plan.steps_per_epoch);
    let mode = if cfg.lora.is_some() { "lora" } else { "full" };
    let vars = prepare_parameters(&mut decoder, cfg)?;
    let trainable_params: usize = vars.iter().map(|(_, v)| v.as_tensor().elem_count()).sum();
    let mut opt = AdamW::new(vars, cfg.adam)?;
    let config_hash = cfg.trajectory_hash();
    let dhash = data_hash(&data);

    // Resume.
    let mut start = 0usize;
    let mut losses: Vec<f32> = Vec::new();
    let mut resumed_from = None;
    if let Some(o) = out {
        std::fs::create_dir_all(&o.dir).map_err(|e| TrainError::io(&o.dir, e))?;
        if cfg.resume {
            match checkpoint::latest_checkpoint(&o.dir)? {
                None => observer.on_event(&format!("no checkpoint in {}: starting from step 0", o.dir.display())),
                Some(ck) => {
                    let st = checkpoint::read_state(&ck)?;
                    let rerr = |m: String| TrainError::Resume { dir: ck.clone(), message: m };
                    if st.config_hash != config_hash {
                        return Err(rerr("it was written with different training settings; resume with the same flags, or use a new --out".into()));
                    }
                    if st.data_hash != dhash {
                        return Err(rerr("it was written for different training data (after tokenisation)".into()));
                    }
                    if st.mode != mode {
                        return Err(rerr(format!("it is a {} checkpoint, this run is {mode}", st.mode)));
                    }
                    crate::checkpoint::restore_trainable(&ck, mode == "lora", &mut opt, &st.param_steps, &dev)?;
                    start = st.step;
                    losses = st.losses.clone();
                    resumed_from = Some(start);
                    observer.on_event(&format!("resumed from {} (step {start} of {total})", ck.display()));
                }
            }
        }
        truncate_metrics(&o.dir, start)?;
    }

    observer.on_start(&RunInfo {
        total_steps: total,
        start_step: start,
        examples: data.len(),
        steps_per_epoch: plan.steps_per_epoch,
        trainable_params,
        mode,
        data: stats.clone(),
    });

    let mut metrics_file = match out {
        Some(o) => {
            let p = metrics_path(&o.dir);
            Some(std::fs::OpenOptions::new().create(true).append(true).open(&p).map_err(|e| TrainError::io(&p, e))?)
        }
        None => None,
    };
    let warmup = warmup_steps(cfg.warmup_ratio, total);
    let frozen_head = cfg.lora.is_some();
    let n_params = opt.params.len();
    let mut run_tokens = 0usize;
    let loop_start = Instant::now();
    let pools = gramrr_model::worker_pools(cfg.workers)
        .map_err(|e| TrainError::Config(format!("cannot start {} training workers: {e}", cfg.workers)))?;

    let save = |opt: &AdamW, decoder: &Decoder, step: usize, plan: &Plan, losses: &[f32], o: &TrainOutput| -> Result<()> {
        let (epoch, mb_in_epoch) = if step % plan.steps_per_epoch == 0 {
            (step / plan.steps_per_epoch, 0)
        } else {
            (step / plan.steps_per_epoch, (step % plan.steps_per_epoch) * plan.grad_accum)
        };
        let state = TrainerState {
            format: 1,
            step,
            total_steps: total,
            epoch,
            micro_batch_in_epoch: mb_in_epoch,
            seed: cfg.seed,
            rng: checkpoint::RNG_NOTE.into(),
            mode: mode.into(),
            config_hash: config_hash.clone(),
            data_hash: dhash.clone(),
            param_steps: opt.param_steps(),
            losses: losses.to_vec(),
        };
        checkpoint::write_checkpoint(&o.dir, step, |dir| {
            let weights: Vec<(String, Tensor)> = opt.params.iter().map(|p| (p.name.clone(), p.var.as_detached_tensor())).collect();
            if let Some(lc) = &cfg.lora {
                save_safetensors(&weights, &dir.join("adapter_model.safetensors"), candle_core::DType::F32)?;
                let base = o.base_model_dir.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
                gramrr_model::fsutil::write_json_atomic(&dir.join("adapter_config.json"), &lora::adapter_config_json(lc, &base))?;
            } else {
                // Full fine-tuning trains every parameter, so these are the whole model.
                let _ = decoder;
                save_safetensors(&weights, &dir.join("model.safetensors"), candle_core::DType::F32)?;
            }
            save_safetensors(&opt.state_tensors()?, &dir.join("optimizer.safetensors"), candle_core::DType::F32)?;
            gramrr_model::fsutil::write_json_atomic(
                &dir.join("trainer_state.json"),
                &serde_json::to_value(&state).expect("state serializes"),
            )?;
            Ok(())
        })?;
        Ok(())
    };

    for step in start..total {
        let t0 = Instant::now();
        let (epoch, _, micro) = plan.step(step);
        let batch_examples: Vec<Vec<&SftExample>> = micro.iter().map(|b| b.iter().map(|&i| &data[i]).collect()).collect();
        let token_norm: f64 = batch_examples.iter().flatten().map(|e| e.target_weight()).sum();
        let label_norm = batch_examples.iter().flatten().filter(|e| e.label.is_some()).count() as f64;
        let lr = cfg.lr * lr_lambda(cfg.scheduler, step, warmup, total);

        let mut grads: Vec<Option<Tensor>> = vec![None; n_params];
        let (mut loss, mut tok_loss, mut lab_loss) = (0f64, None::<f64>, None::<f64>);
        let (mut tokens, mut targets) = (0usize, 0usize);
        for (j, exs) in batch_examples.iter().enumerate() {
            // Contiguous row shards, one per worker (fewer when the micro-batch is small).
            let per = exs.len().div_ceil(cfg.workers).max(1);
            let shards: Vec<(usize, &[&SftExample])> = exs.chunks(per).enumerate().map(|(w, c)| (j * cfg.workers + w, c)).collect();
            let run_shard = |(stream, shard): (usize, &[&SftExample])| -> Result<ShardResult> {
                let mb = if cfg.padding_free { build_padding_free_micro_batch(shard, pad_id) } else { build_micro_batch(shard, pad_id) };
                let rng = cfg.lora.as_ref().filter(|l| l.dropout > 0.0).map(|_| dropout_rng(cfg.seed, step, stream));
                let mut ctx = ForwardCtx::training(rng);
                let ml = micro_batch_loss(&decoder, &mb, &mut ctx, frozen_head, token_norm, label.as_ref().map(|l| (l, label_norm)), &dev)?;
                let gs = ml.total.backward()?;
                let grads = opt.params.iter().map(|p| gs.get(p.var.as_tensor()).cloned()).collect();
                let scalar = |t: &Option<Tensor>| -> Result<Option<f64>> { Ok(match t { Some(t) => Some(t.to_scalar::<f32>()? as f64), None => None }) };
                Ok(ShardResult {
                    grads,
                    total: ml.total.to_scalar::<f32>()? as f64,
                    token: scalar(&ml.token)?,
                    label: scalar(&ml.label)?,
                    tokens: mb.tokens,
                    targets: mb.rows.len(),
                })
            };
            let results: Vec<Result<ShardResult>> = if shards.len() == 1 {
                vec![run_shard(shards[0])]
            } else {
                std::thread::scope(|s| {
                    let handles: Vec<_> = shards
                        .iter()
                        .zip(&pools)
                        .map(|(&sh, pool)| {
                            let run = &run_shard;
                            s.spawn(move || pool.install(|| run(sh)))
                        })
                        .collect();
                    handles.into_iter().map(|h| h.join().expect("a training worker panicked")).collect()
                })
            };
            for r in results {
                let r = r?;
                for (acc, g) in grads.iter_mut().zip(r.grads) {
                    if let Some(g) = g {
                        *acc = Some(match acc.take() {
                            None => g,
                            Some(a) => (a + g)?,
                        });
                    }
                }
                loss += r.total;
                tokens += r.tokens;
                targets += r.targets;
                if let Some(t) = r.token {
                    *tok_loss.get_or_insert(0.0) += t;
                }
                if let Some(t) = r.label {
                    *lab_loss.get_or_insert(0.0) += t;
                }
            }
        }
        if !loss.is_finite() {
            return Err(TrainError::Config(format!("step {}: the loss is {loss}; lower the learning rate or check the data", step + 1)));
        }
        let norm = global_grad_norm(&grads)?;
        let coef = clip_coefficient(norm, cfg.max_grad_norm);
        opt.step(&grads, lr, coef)?;
        drop(grads);
        losses.push(loss as f32);
        run_tokens += tokens;
        let dt = t0.elapsed().as_secs_f64();
        let m = StepMetrics {
            step: step + 1,
            total_steps: total,
            epoch: epoch as f64 + ((step % plan.steps_per_epoch) + 1) as f64 / plan.steps_per_epoch as f64,
            loss,
            token_loss: tok_loss,
            label_loss: lab_loss,
            lr,
            grad_norm: norm,
            tokens,
            target_tokens: targets,
            step_seconds: dt,
            tokens_per_sec: tokens as f64 / dt.max(1e-9),
        };
        if let Some(f) = metrics_file.as_mut() {
            let line = serde_json::to_string(&m).expect("metrics serialize");
            writeln!(f, "{line}").map_err(|e| TrainError::io(metrics_path(&out.expect("out").dir), e))?;
        }
        observer.on_step(&m);
        if let Some(o) = out {
            if cfg.save_every > 0 && (step + 1) % cfg.save_every == 0 && step + 1 < total {
                save(&opt, &decoder, step + 1, &plan, &losses, o)?;
                observer.on_event(&format!("checkpoint at step {}", step + 1));
            }
        }
    }
    drop(metrics_file);
    let seconds = loop_start.elapsed().as_secs_f64();

    if let Some(o) = out {
        if start < total || checkpoint::latest_checkpoint(&o.dir)?.is_none() {
            save(&opt, &decoder, total, &plan, &losses, o)?;
        }
    }
    drop(opt);
    let lora_cfg = cfg.lora.clone();
    // Save before merging so a LoRA run writes its adapter.
    let mut report = TrainReport {
        mode: mode.into(),
        steps: total,
        resumed_from,
        final_loss: losses.last().copied(),
        losses,
        data: stats,
        trainable_params,
        tokens: run_tokens,
        seconds,
        tokens_per_sec: run_tokens as f64 / seconds.max(1e-9),
        out_dir: out.map(|o| o.dir.clone()),
    };
    let keep_cfg = SftConfig { merge_lora_on_return: false, ..cfg.clone() };
    finish_decoder(&mut decoder, &keep_cfg)?;
    if let Some(o) = out {
        match &lora_cfg {
            Some(lc) => {
                let base = o.base_model_dir.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
                lora::save_adapter(&decoder, lc, &o.dir, &base)?;
            }
            None => checkpoint::save_hf_checkpoint(&decoder, &o.dir, o.base_model_dir.as_deref(), Some(tokenizer))?,
        }
        gramrr_model::fsutil::write_json_atomic(&o.dir.join("train_report.json"), &serde_json::to_value(&report).expect("report serializes"))?;
        if o.plot {
            let png = o.dir.join("loss.png");
            match crate::plot::loss_curve(&report.losses, &png, mode) {
                Ok(()) => {}
                Err(e) => observer.on_event(&format!("loss curve not drawn: {e}")),
            }
        }
    }
    if lora_cfg.is_some() && cfg.merge_lora_on_return {
        lora::merge_lora(&mut decoder)?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok((decoder, report))
}
