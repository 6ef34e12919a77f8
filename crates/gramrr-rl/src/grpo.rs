//! The GRPO loop (DeepSeekMath's Group Relative Policy Optimization, as TRL's `GRPOTrainer`
//! runs it).
//!
//! Each step:
//! 1. takes the next `prompts_per_step` prompts (a seeded shuffle per pass over the prompts);
//! 2. samples `group_size` responses to each from the current policy;
//! 3. scores them with the reward ([`crate::reward`]);
//! 4. turns rewards into advantages within each prompt's group: `(r − mean) / (std + 1e-4)`
//!    with the unbiased std, as TRL (or `r − mean` without `scale_rewards`, Dr. GRPO);
//! 5. makes `num_iterations` (μ) optimizer updates on these responses, each over all of them:
//!    the per-token clipped ratio objective with the k3 KL penalty to the reference policy
//!    ([`gramrr_train::policy`]). The first update's ratio is 1; later ones compare with the
//!    log-probs of the policy that sampled (the clip bites from the second update on).
//!
//! The reference policy is the starting model: with LoRA, the base without adapters (no copy);
//! with full fine-tuning, a copy of the starting weights.
//!
//! Every random choice derives from the seed and the step (prompt order from (seed, pass),
//! sampling from (seed, step, prompt, sample), LoRA dropout from (seed, update, micro-batch)),
//! so a checkpoint holds everything a resume needs: the weights, the optimizer moments and
//! the step. Resumed runs end with bit-identical weights to uninterrupted ones.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Tensor};
use gramrr_model::backend::SamplingParams;
use gramrr_model::model::{Decoder, ForwardCtx};
use gramrr_model::weights::save_safetensors;
use gramrr_model::Engine;
use gramrr_train::loss::build_micro_batch;
use gramrr_train::optim::{clip_coefficient, global_grad_norm, lr_lambda, warmup_steps, AdamW};
use gramrr_train::policy::{policy_micro_batch_loss, target_logprobs, PolicyLossConfig};
use gramrr_train::{checkpoint, lora, AdamWConfig, LoraConfig, Scheduler, SftExample};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use crate::error::{Result, RlError};
use crate::prompts::PromptRecord;
use crate::reward::{check_shape, RewardGroup, RewardModel};

/// How the per-token losses of a step are averaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossNorm {
    /// DeepSeekMath's GRPO: the mean over each response's tokens, then over responses.
    #[default]
    Sequence,
    /// Token-level (DAPO, TRL's "dapo"/"bnpo"): the sum over all tokens over their count, so
    /// long responses weigh in proportion to their length.
    Token,
}

impl std::str::FromStr for LossNorm {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "sequence" | "grpo" => Ok(LossNorm::Sequence),
            "token" | "dapo" => Ok(LossNorm::Token),
            _ => Err(format!("unknown loss normalisation {s:?}: expected sequence or token")),
        }
    }
}

/// Every knob of a run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GrpoConfig {
    /// LoRA instead of full fine-tuning.
    pub lora: Option<LoraConfig>,
    /// GRPO steps (each: sample, score, μ updates).
    pub steps: usize,
    pub prompts_per_step: usize,
    /// Responses sampled per prompt (G).
    pub group_size: usize,
    /// Optimizer updates per batch of samples (μ).
    pub num_iterations: usize,
    pub loss: PolicyLossConfig,
    pub loss_norm: LossNorm,
    /// Divide the centred rewards by the group's std (GRPO); off: only centre them (Dr. GRPO).
    pub scale_rewards: bool,
    pub lr: f64,
    pub scheduler: Scheduler,
    pub warmup_ratio: f64,
    pub adam: AdamWConfig,
    pub max_grad_norm: f64,
    /// Sequences per forward/backward pass (gradients accumulate over a step's passes).
    pub micro_batch: usize,
    /// Sampling of responses; `seed` is ignored (the run's seed decides).
    pub sampling: SamplingParams,
    pub seed: u64,
    /// Checkpoint every N steps (0: only at the end).
    pub save_every: usize,
    pub resume: bool,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        GrpoConfig {
            lora: None,
            steps: 100,
            prompts_per_step: 4,
            group_size: 8,
            num_iterations: 1,
            loss: PolicyLossConfig::default(),
            loss_norm: LossNorm::Sequence,
            scale_rewards: true,
            lr: 1e-6,
            scheduler: Scheduler::Constant,
            warmup_ratio: 0.0,
            adam: AdamWConfig::default(),
            max_grad_norm: 1.0,
            micro_batch: 8,
            sampling: SamplingParams { max_new_tokens: 256, temperature: 1.0, ..SamplingParams::default() },
            seed: 42,
            save_every: 0,
            resume: false,
        }
    }
}

impl GrpoConfig {
    fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(RlError::Config(m.to_string()));
        if self.group_size < 2 {
            return bad("the group size must be at least 2: advantages compare responses to the same prompt");
        }
        if self.prompts_per_step == 0 || self.micro_batch == 0 || self.num_iterations == 0 {
            return bad("prompts per step, micro-batch and iterations must be at least 1");
        }
        if self.sampling.max_new_tokens == 0 {
            return bad("max new tokens must be at least 1");
        }
        if !(self.sampling.temperature > 0.0) {
            return bad("sampling needs a temperature above 0: greedy responses to one prompt are all the same");
        }
        if !(self.lr.is_finite() && self.lr >= 0.0) || !(0.0..=1.0).contains(&self.warmup_ratio) {
            return bad("the learning rate must be finite and ≥ 0, the warmup ratio in [0, 1]");
        }
        if !(self.loss.epsilon_low >= 0.0 && self.loss.epsilon_low < 1.0 && self.loss.epsilon_high >= 0.0 && self.loss.beta >= 0.0) {
            return bad("clip ranges must be ε_low in [0, 1), ε_high ≥ 0, and β ≥ 0");
        }
        if let Some(l) = &self.lora {
            if l.rank == 0 || l.targets.is_empty() || !(0.0..1.0).contains(&l.dropout) {
                return bad("LoRA needs rank ≥ 1, at least one target and dropout in [0, 1)");
            }
        }
        Ok(())
    }

    /// Hash of what changes the trajectory (not where or how often it is saved).
    fn trajectory_hash(&self, reward: &str) -> String {
        let mut c = self.clone();
        c.save_every = 0;
        c.resume = false;
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(&c).expect("config serializes"));
        h.update(reward.as_bytes());
        hex(&h.finalize())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What one step did: the JSONL line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GrpoStepMetrics {
    /// Steps completed (1-based).
    pub step: usize,
    pub total_steps: usize,
    pub reward_mean: f64,
    /// The mean of the groups' standard deviations (0 when every group agrees).
    pub reward_std: f64,
    /// Groups whose rewards were all equal (no advantage, only the KL moves them).
    pub flat_groups: usize,
    /// For mixed rewards: each part's name, weight and mean.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reward_parts: Vec<(String, f64, f64)>,
    /// Mean k3 KL to the reference per response token, before the step's updates.
    pub kl: f64,
    /// Mean response length in tokens.
    pub response_tokens: f64,
    /// Responses that hit `max_new_tokens`.
    pub truncated: usize,
    /// Share of token updates whose ratio was clipped, over the step's μ updates.
    pub clip_fraction: f64,
    /// The objective, averaged over the step's updates.
    pub loss: f64,
    /// Before clipping, of the last update.
    pub grad_norm: f64,
    pub lr: f64,
    /// Reward-model calls (pairwise comparisons for a judge, items for a command).
    pub rm_calls: usize,
    pub rm_seconds: f64,
    pub generate_seconds: f64,
    pub train_seconds: f64,
    pub step_seconds: f64,
}

/// One sampled response, for `samples.jsonl`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    pub step: usize,
    pub prompt_id: String,
    pub response: String,
    pub tokens: usize,
    pub reward: f64,
    pub advantage: f64,
}

/// What a caller sees of a run's progress; every method has a do-nothing default.
pub trait GrpoObserver {
    fn on_start(&mut self, _total_steps: usize, _start_step: usize, _trainable_params: usize) {}
    fn on_step(&mut self, _m: &GrpoStepMetrics) {}
    fn on_event(&mut self, _message: &str) {}
}

/// Observes nothing.
pub struct Quiet;
impl GrpoObserver for Quiet {}

/// Where a run writes.
#[derive(Debug, Clone)]
pub struct GrpoOutput {
    pub dir: PathBuf,
    /// The starting model's directory (copied config and tokenizer files; the adapter's base).
    pub base_model_dir: Option<PathBuf>,
    /// Draw `curves.png`.
    pub plot: bool,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct GrpoReport {
    pub mode: String,
    pub reward: String,
    pub steps: usize,
    pub resumed_from: Option<usize>,
    pub trainable_params: usize,
    pub config: GrpoConfig,
    /// Every step, including those before a resume.
    pub history: Vec<GrpoStepMetrics>,
    pub seconds: f64,
}

/// The resumable state next to a checkpoint's weights.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct GrpoState {
    format: u32,
    step: usize,
    total_steps: usize,
    mode: String,
    config_hash: String,
    prompts_hash: String,
    param_steps: Vec<u64>,
    history: Vec<GrpoStepMetrics>,
}

/// The prompts of step `step`: consecutive slots of a stream that visits every prompt once per
/// pass, each pass in its own seeded order.
pub fn step_prompts(n: usize, per_step: usize, seed: u64, step: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(per_step);
    let mut cached: Option<(usize, Vec<usize>)> = None;
    for k in step * per_step..(step + 1) * per_step {
        let pass = k / n;
        if cached.as_ref().map(|c| c.0) != Some(pass) {
            let mut order: Vec<usize> = (0..n).collect();
            let mut r = ChaCha8Rng::seed_from_u64(seed);
            r.set_stream(1 + pass as u64);
            order.shuffle(&mut r);
            cached = Some((pass, order));
        }
        out.push(cached.as_ref().expect("set").1[k % n]);
    }
    out
}

/// `(r − mean) / (std + 1e-4)` with the unbiased std (TRL), or `r − mean`.
pub fn group_advantages(rewards: &[f64], scale: bool) -> Vec<f64> {
    let n = rewards.len() as f64;
    let mean = rewards.iter().sum::<f64>() / n;
    let std = if rewards.len() > 1 { (rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() } else { 0.0 };
    rewards.iter().map(|r| if scale { (r - mean) / (std + 1e-4) } else { r - mean }).collect()
}

fn population_std(x: &[f64]) -> f64 {
    let n = x.len() as f64;
    let m = x.iter().sum::<f64>() / n;
    (x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n).sqrt()
}

fn sample_seed(step: usize, prompt: usize, g: usize) -> u64 {
    ((step as u64) << 32) ^ ((prompt as u64) << 12) ^ g as u64
}

fn dropout_rng(seed: u64, update: usize, micro: usize) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream((3u64 << 40) + ((update as u64) << 12) + micro as u64);
    r
}

fn prompts_hash(prompts: &[PromptRecord]) -> String {
    let mut h = Sha256::new();
    for p in prompts {
        h.update(serde_json::to_vec(p).expect("prompts serialize"));
        h.update(b"\n");
    }
    hex(&h.finalize())
}


/// Runs GRPO on `policy` and returns it trained (LoRA adapters merged) with the run's report.
pub fn train_grpo(
    mut policy: Engine,
    prompts: &[PromptRecord],
    reward: &dyn RewardModel,
    cfg: &GrpoConfig,
    out: Option<&GrpoOutput>,
    observer: &mut dyn GrpoObserver,
) -> Result<(Engine, GrpoReport)> {
    cfg.validate()?;
    if prompts.is_empty() {
        return Err(RlError::Config("no prompts".into()));
    }
    let started = Instant::now();
    let dev = policy.device().clone();
    let reward_name = reward.name();
    let mode = if cfg.lora.is_some() { "lora" } else { "full" };

    // The reference policy is the starting model; the trained one gets Var parameters (fresh
    // storage for full fine-tuning, adapters over shared frozen weights for LoRA).
    let reference: Decoder = policy.model.clone();
    if cfg.lora.is_some() && lora::has_lora(&reference) {
        return Err(RlError::Config("the policy already carries LoRA adapters; merge them first (gramrr merge-lora)".into()));
    }
    let mut train: Decoder = policy.model.clone();
    let vars = gramrr_train::trainable_parameters(&mut train, cfg.lora.as_ref(), cfg.seed)?;
    let trainable_params: usize = vars.iter().map(|(_, v)| v.as_tensor().elem_count()).sum();
    let mut opt = AdamW::new(vars, cfg.adam)?;
    let frozen_head = cfg.lora.is_some();
    let config_hash = cfg.trajectory_hash(&reward_name);
    let phash = prompts_hash(prompts);
    let total = cfg.steps;
    let total_updates = total * cfg.num_iterations;
    let warmup = warmup_steps(cfg.warmup_ratio, total_updates);
    let pad_id = policy.generation.pad_token_id.or(policy.generation.eos_token_ids.first().copied()).unwrap_or(0);
    let prompt_ids: Vec<Vec<u32>> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let ids = policy.encode_prompt(&p.prompt)?;
            if ids.is_empty() {
                return Err(RlError::Config(format!("prompt {} ({:?}) encodes to zero tokens", i + 1, p.id)));
            }
            let limit = policy.model.cfg.max_position_embeddings;
            if ids.len() + cfg.sampling.max_new_tokens > limit {
                return Err(RlError::Config(format!(
                    "prompt {} ({:?}): {} tokens + {} new tokens exceed the policy's {limit} positions (max_position_embeddings)",
                    i + 1,
                    p.id,
                    ids.len(),
                    cfg.sampling.max_new_tokens
                )));
            }
            Ok(ids)
        })
        .collect::<Result<_>>()?;

    let mut start = 0usize;
    let mut history: Vec<GrpoStepMetrics> = vec![];
    let mut resumed_from = None;
    if let Some(o) = out {
        std::fs::create_dir_all(&o.dir).map_err(|e| RlError::io(&o.dir, e))?;
        if cfg.resume {
            match checkpoint::latest_checkpoint(&o.dir)? {
                None => observer.on_event(&format!("no checkpoint in {}: starting from step 0", o.dir.display())),
                Some(ck) => {
                    let p = ck.join("trainer_state.json");
                    let rerr = |m: String| RlError::Resume { dir: ck.clone(), message: m };
                    let text = std::fs::read_to_string(&p).map_err(|e| RlError::io(&p, e))?;
                    let st: GrpoState = serde_json::from_str(&text).map_err(|e| rerr(format!("trainer_state.json: {e}")))?;
                    if st.config_hash != config_hash {
                        return Err(rerr("it was written with different settings or reward; resume with the same flags, or use a new --out".into()));
                    }
                    if st.prompts_hash != phash {
                        return Err(rerr("it was written for different prompts".into()));
                    }
                    gramrr_train::checkpoint::restore_trainable(&ck, mode == "lora", &mut opt, &st.param_steps, &dev)?;
                    start = st.step;
                    history = st.history;
                    resumed_from = Some(start);
                    observer.on_event(&format!("resumed from {} (step {start} of {total})", ck.display()));
                }
            }
        }
        gramrr_train::checkpoint::truncate_jsonl_steps(&o.dir.join("metrics.jsonl"), start)?;
        gramrr_train::checkpoint::truncate_jsonl_steps(&o.dir.join("samples.jsonl"), start)?;
    }
    observer.on_start(total, start, trainable_params);
    let open = |name: &str| -> Result<Option<(PathBuf, std::fs::File)>> {
        match out {
            None => Ok(None),
            Some(o) => {
                let p = o.dir.join(name);
                let f = std::fs::OpenOptions::new().create(true).append(true).open(&p).map_err(|e| RlError::io(&p, e))?;
                Ok(Some((p, f)))
            }
        }
    };
    let mut metrics_file = open("metrics.jsonl")?;
    let mut samples_file = open("samples.jsonl")?;

    let save = |opt: &AdamW, step: usize, history: &[GrpoStepMetrics], o: &GrpoOutput| -> Result<()> {
        let state = GrpoState {
            format: 1,
            step,
            total_steps: total,
            mode: mode.into(),
            config_hash: config_hash.clone(),
            prompts_hash: phash.clone(),
            param_steps: opt.param_steps(),
            history: history.to_vec(),
        };
        checkpoint::write_checkpoint(&o.dir, step, |dir| {
            let weights: Vec<(String, Tensor)> = opt.params.iter().map(|p| (p.name.clone(), p.var.as_detached_tensor())).collect();
            if let Some(lc) = &cfg.lora {
                save_safetensors(&weights, &dir.join("adapter_model.safetensors"), DType::F32)?;
                let base = o.base_model_dir.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
                gramrr_model::fsutil::write_json_atomic(&dir.join("adapter_config.json"), &lora::adapter_config_json(lc, &base))?;
            } else {
                save_safetensors(&weights, &dir.join("model.safetensors"), DType::F32)?;
            }
            save_safetensors(&opt.state_tensors()?, &dir.join("optimizer.safetensors"), DType::F32)?;
            gramrr_model::fsutil::write_json_atomic(&dir.join("trainer_state.json"), &serde_json::to_value(&state).expect("state serializes"))?;
            Ok(())
        })?;
        Ok(())
    };

    let g = cfg.group_size;
    for step in start..total {
        let t0 = Instant::now();
        // 1-2. Sample G responses per prompt from the current weights (a graph-free view).
        let chosen = step_prompts(prompts.len(), cfg.prompts_per_step, cfg.seed, step);
        let mut view = train.clone();
        gramrr_train::detach_for_inference(&mut view)?;
        policy.model = view;
        let mut gen_prompts = Vec::with_capacity(chosen.len() * g);
        let mut offsets = Vec::with_capacity(chosen.len() * g);
        for (i, &p) in chosen.iter().enumerate() {
            for k in 0..g {
                gen_prompts.push(prompt_ids[p].clone());
                offsets.push(sample_seed(step, i, k));
            }
        }
        let params = SamplingParams { seed: cfg.seed, ..cfg.sampling.clone() };
        let outs = policy.generate_ids(&gen_prompts, &offsets, &params)?;
        let generate_seconds = t0.elapsed().as_secs_f64();

        // 3. Rewards.
        let groups: Vec<RewardGroup> = chosen
            .iter()
            .enumerate()
            .map(|(i, &p)| RewardGroup {
                prompt: prompts[p].judge_text(),
                reference: prompts[p].reference.clone(),
                responses: outs[i * g..(i + 1) * g].iter().map(|o| o.text.clone()).collect(),
            })
            .collect();
        let tr = Instant::now();
        let batch = reward.rewards(&groups)?;
        let rm_seconds = tr.elapsed().as_secs_f64();
        check_shape(&reward_name, &groups, &batch)?;

        // 4. Advantages within each group.
        let mut advantages = Vec::with_capacity(outs.len());
        let mut flat_groups = 0;
        for r in &batch.rewards {
            let a = group_advantages(r, cfg.scale_rewards);
            flat_groups += a.iter().all(|x| x.abs() < 1e-12) as usize;
            advantages.extend(a);
        }
        let rewards_flat: Vec<f64> = batch.rewards.iter().flatten().copied().collect();

        // 5. μ updates over every response, in micro-batches.
        let examples: Vec<SftExample> =
            outs.iter().zip(&gen_prompts).map(|(o, p)| SftExample::new(p.clone(), o.token_ids.clone())).collect();
        let n_tokens: usize = outs.iter().map(|o| o.token_ids.len()).sum();
        let token_weight = |len: usize| -> f32 {
            match cfg.loss_norm {
                LossNorm::Sequence => 1.0 / (len.max(1) * outs.len()) as f32,
                LossNorm::Token => 1.0 / n_tokens.max(1) as f32,
            }
        };
        struct Micro {
            mb: gramrr_train::loss::MicroBatch,
            advantages: Vec<f32>,
            weights: Vec<f32>,
            ref_logp: Vec<f32>,
            old_logp: Option<Vec<f32>>,
        }
        let mut micros: Vec<Micro> = vec![];
        let mut kl_sum = 0.0;
        for (c, chunk) in examples.chunks(cfg.micro_batch).enumerate() {
            let refs: Vec<&SftExample> = chunk.iter().collect();
            let mb = build_micro_batch(&refs, pad_id);
            let (mut adv, mut w) = (vec![], vec![]);
            for (k, e) in chunk.iter().enumerate() {
                let i = c * cfg.micro_batch + k;
                adv.extend(std::iter::repeat_n(advantages[i] as f32, e.completion_ids.len()));
                w.extend(std::iter::repeat_n(token_weight(e.completion_ids.len()), e.completion_ids.len()));
            }
            let ref_logp = target_logprobs(&reference, &mb, &dev)?;
            micros.push(Micro { mb, advantages: adv, weights: w, ref_logp, old_logp: None });
        }
        let tt = Instant::now();
        let (mut loss_sum, mut clipped, mut counted, mut grad_norm, mut lr) = (0.0, 0usize, 0usize, 0.0, 0.0);
        for it in 0..cfg.num_iterations {
            let update = step * cfg.num_iterations + it;
            lr = cfg.lr * lr_lambda(cfg.scheduler, update, warmup, total_updates);
            let mut grads: Vec<Option<Tensor>> = vec![None; opt.params.len()];
            let mut loss = 0.0;
            for (j, m) in micros.iter_mut().enumerate() {
                let rng = cfg.lora.as_ref().filter(|l| l.dropout > 0.0).map(|_| dropout_rng(cfg.seed, update, j));
                let mut ctx = ForwardCtx::training(rng);
                let pl = policy_micro_batch_loss(
                    &train,
                    &m.mb,
                    &mut ctx,
                    frozen_head,
                    m.old_logp.as_deref(),
                    Some(&m.ref_logp),
                    &m.advantages,
                    &m.weights,
                    &cfg.loss,
                    &dev,
                )?;
                let gs = pl.total.backward()?;
                for (acc, p) in grads.iter_mut().zip(&opt.params) {
                    if let Some(g) = gs.get(p.var.as_tensor()) {
                        *acc = Some(match acc.take() {
                            None => g.clone(),
                            Some(a) => (a + g)?,
                        });
                    }
                }
                loss += pl.value.loss;
                clipped += pl.value.clipped_low + pl.value.clipped_high;
                counted += pl.value.tokens;
                if it == 0 {
                    kl_sum += pl.value.kl_sum.unwrap_or(0.0);
                    m.old_logp = Some(pl.logp);
                }
            }
            if !loss.is_finite() {
                return Err(RlError::Config(format!("step {}: the loss is {loss}; lower the learning rate", step + 1)));
            }
            grad_norm = global_grad_norm(&grads)?;
            opt.step(&grads, lr, clip_coefficient(grad_norm, cfg.max_grad_norm))?;
            loss_sum += loss;
        }
        let m = GrpoStepMetrics {
            step: step + 1,
            total_steps: total,
            reward_mean: rewards_flat.iter().sum::<f64>() / rewards_flat.len() as f64,
            reward_std: batch.rewards.iter().map(|r| population_std(r)).sum::<f64>() / batch.rewards.len() as f64,
            flat_groups,
            reward_parts: batch.parts.clone(),
            kl: kl_sum / n_tokens.max(1) as f64,
            response_tokens: n_tokens as f64 / outs.len() as f64,
            truncated: outs.iter().filter(|o| o.finish_reason == gramrr_model::backend::FinishReason::Length).count(),
            clip_fraction: clipped as f64 / counted.max(1) as f64,
            loss: loss_sum / cfg.num_iterations as f64,
            grad_norm,
            lr,
            rm_calls: batch.calls,
            rm_seconds,
            generate_seconds,
            train_seconds: tt.elapsed().as_secs_f64(),
            step_seconds: t0.elapsed().as_secs_f64(),
        };
        if let Some((p, f)) = metrics_file.as_mut() {
            writeln!(f, "{}", serde_json::to_string(&m).expect("metrics serialize")).map_err(|e| RlError::io(&*p, e))?;
        }
        if let Some((p, f)) = samples_file.as_mut() {
            let mut text = String::new();
            for (i, o) in outs.iter().enumerate() {
                let s = Sample {
                    step: step + 1,
                    prompt_id: prompts[chosen[i / g]].id.clone(),
                    response: o.text.clone(),
                    tokens: o.token_ids.len(),
                    reward: rewards_flat[i],
                    advantage: advantages[i],
                };
                text.push_str(&serde_json::to_string(&s).expect("samples serialize"));
                text.push('\n');
            }
            f.write_all(text.as_bytes()).map_err(|e| RlError::io(&*p, e))?;
        }
        history.push(m.clone());
        observer.on_step(&m);
        if let Some(o) = out {
            if cfg.save_every > 0 && (step + 1) % cfg.save_every == 0 && step + 1 < total {
                save(&opt, step + 1, &history, o)?;
                observer.on_event(&format!("checkpoint at step {}", step + 1));
            }
        }
    }
    drop(metrics_file);
    drop(samples_file);
    if let Some(o) = out {
        if start < total || checkpoint::latest_checkpoint(&o.dir)?.is_none() {
            save(&opt, total, &history, o)?;
        }
    }
    drop(opt);
    gramrr_train::detach_for_inference(&mut train)?;
    let report = GrpoReport {
        mode: mode.into(),
        reward: reward_name,
        steps: total,
        resumed_from,
        trainable_params,
        config: cfg.clone(),
        history,
        seconds: started.elapsed().as_secs_f64(),
    };
    if let Some(o) = out {
        match &cfg.lora {
            Some(lc) => {
                let base = o.base_model_dir.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
                lora::save_adapter(&train, lc, &o.dir, &base)?;
            }
            None => checkpoint::save_hf_checkpoint(&train, &o.dir, o.base_model_dir.as_deref(), Some(&policy.tokenizer))?,
        }
        gramrr_model::fsutil::write_json_atomic(&o.dir.join("grpo_report.json"), &serde_json::to_value(&report).expect("report serializes"))?;
        let summary = crate::report::summary_markdown(&report);
        gramrr_model::fsutil::write_atomic(&o.dir.join("summary.md"), summary.as_bytes())?;
        if o.plot {
            if let Err(e) = crate::report::plot_curves(&report.history, &o.dir.join("curves.png")) {
                observer.on_event(&format!("curves not drawn: {e}"));
            }
        }
    }
    if cfg.lora.is_some() {
        lora::merge_lora(&mut train)?;
    }
    policy.model = train;
    Ok((policy, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advantages_are_trl_group_zscores() {
        let a = group_advantages(&[1.0, 0.0, 0.0, 1.0], true);
        // mean 0.5, unbiased std sqrt(1/3).
        let s = (1.0f64 / 3.0).sqrt();
        assert!((a[0] - 0.5 / (s + 1e-4)).abs() < 1e-12 && (a[1] + 0.5 / (s + 1e-4)).abs() < 1e-12);
        assert_eq!(group_advantages(&[2.0, 2.0, 2.0], true), vec![0.0; 3]);
        assert_eq!(group_advantages(&[3.0, 1.0], false), vec![1.0, -1.0]);
    }

    #[test]
    fn every_prompt_once_per_pass() {
        let mut seen: Vec<usize> = (0..5).flat_map(|s| step_prompts(10, 2, 7, s)).collect();
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert_eq!(step_prompts(10, 3, 7, 4), step_prompts(10, 3, 7, 4));
        assert_ne!(step_prompts(10, 10, 7, 0), step_prompts(10, 10, 7, 1));
    }
}
