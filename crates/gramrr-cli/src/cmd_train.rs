//! `gramrr train sft` and `gramrr merge-lora`: thin wrappers over gramrr-train.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::{Args, Subcommand};
use gramrr_model::config::DecoderConfig;
use gramrr_model::model::Decoder;
use gramrr_model::tokenizer::TextTokenizer;
use gramrr_model::weights::SafetensorsCheckpoint;
use gramrr_model::{DeviceChoice, WeightDType};
use gramrr_train::{
    AdamWConfig, LabelLossConfig, LoraConfig, LoraTarget, RunInfo, Scheduler, SftConfig, StepMetrics, TrainObserver,
    TrainOutput, Truncate,
};

#[derive(Subcommand)]
pub enum TrainCommand {
    /// Supervised fine-tuning on prompt/completion JSONL (full or LoRA).
    ///
    /// Data: one JSON object per line, {"prompt": str, "completion": str}, or with weighted
    /// segments {"prompt": str, "completion": [{"text": str, "weight": float}, ...]}, or
    /// {"messages": [{"role", "content"}, ...]} (loss on the final assistant message, rendered
    /// with the chat template). The loss is on completion tokens only, plus the tokenizer's EOS
    /// after a prompt/completion record, normalised as Σ w·nll / Σ w over each optimizer step.
    ///
    /// Writes to --out: the model (full: config.json, model.safetensors, tokenizer files; LoRA:
    /// adapter_config.json, adapter_model.safetensors in PEFT layout), metrics.jsonl, loss.png,
    /// train_report.json, and checkpoints/ for --resume.
    Sft(SftArgs),
    /// Improve a policy with GRPO, rewarded by a generative reward model and/or a command.
    ///
    /// Each step takes --prompts-per-step prompts, samples --group-size responses to each from
    /// the policy, scores them, and makes --num-iterations optimizer updates on them with the
    /// GRPO objective: per response token, −min(ρ·A, clip(ρ, 1−ε, 1+ε_high)·A) + β·KL, where
    /// ρ = π_θ/π_old, A = (r − mean)/(std + 1e-4) within the prompt's group, and KL is the k3
    /// estimator exp(d) − d − 1 with d = log π_ref − log π_θ (DeepSeekMath, TRL). The reference
    /// π_ref is the starting model.
    ///
    /// Rewards. --rm-model DIR (a GRAM-R² judge, run in-process) or --rm-url http://HOST:PORT
    /// (a `gramrr serve`): a response to a prompt with a "reference" answer scores
    /// P(response better than reference); otherwise the group plays a round robin and each
    /// response scores its Bradley–Terry strength (--group-score win-rate: its win rate).
    /// --reward-command "CMD": CMD reads JSONL {"prompt", "response", "reference"?} on stdin and
    /// writes one {"score": number} line per input line. Give both to train on
    /// --rm-weight × RM + --command-weight × command.
    ///
    /// Prompts: JSONL, {"prompt": str} (raw text; --chat wraps it in a user message for the
    /// chat template) or {"messages": [...]}, with optional "reference" and "id".
    ///
    /// Writes to --out: the model (full: model.safetensors + config/tokenizer; LoRA: the PEFT
    /// adapter), metrics.jsonl (per step: reward, KL, response length, clip fraction, RM calls
    /// and seconds), samples.jsonl (every response with its reward and advantage), curves.png,
    /// summary.md, grpo_report.json, and checkpoints/ for --resume (bit-identical weights).
    ///
    /// Example: gramrr train grpo --model policy/ --prompts prompts.jsonl --rm-model rm/
    ///   --rm-template compact --lora-rank 16 --lr 1e-5 --steps 200 --out runs/grpo
    Grpo(Box<GrpoArgs>),
}

/// LoRA settings shared by `train sft` and `train grpo`.
#[derive(Args, Debug, Clone)]
pub struct LoraArgs {
    /// LoRA rank; 0 means full fine-tuning.
    #[arg(long, default_value_t = 0)]
    lora_rank: usize,
    /// LoRA alpha (the update is scaled by alpha / rank).
    #[arg(long, default_value_t = 32.0)]
    lora_alpha: f64,
    /// Dropout on the LoRA input.
    #[arg(long, default_value_t = 0.0)]
    lora_dropout: f32,
    /// Projections that get adapters, comma-separated from q,k,v,o,gate,up,down (or "all").
    #[arg(long, default_value = "q,k,v,o,gate,up,down")]
    lora_targets: String,
}

impl LoraArgs {
    /// `None` for full fine-tuning (rank 0).
    fn config(&self) -> anyhow::Result<Option<LoraConfig>> {
        if self.lora_rank == 0 {
            return Ok(None);
        }
        let targets = LoraTarget::parse_list(&self.lora_targets).map_err(anyhow::Error::msg).context("--lora-targets")?;
        Ok(Some(LoraConfig { rank: self.lora_rank, alpha: self.lora_alpha, dropout: self.lora_dropout, targets }))
    }
}

#[derive(Args, Debug)]
pub struct GrpoArgs {
    /// The policy: a directory in Hugging Face layout, or `org/name` in the local HF cache.
    #[arg(long)]
    model: String,
    /// Prompts, JSONL (see above).
    #[arg(long)]
    prompts: PathBuf,
    /// Output directory (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Wrap "prompt" strings in a user message rendered with the policy's chat template.
    #[arg(long)]
    chat: bool,

    /// Reward model directory (a generative judge), run in-process.
    #[arg(long, conflicts_with = "rm_url")]
    rm_model: Option<String>,
    /// A `gramrr serve` URL (http://host:port): /v1/judge against references, /v1/rank otherwise.
    #[arg(long)]
    rm_url: Option<String>,
    /// API key of the --rm-url server.
    #[arg(long)]
    rm_api_key: Option<String>,
    /// Judge format of --rm-model: a preset (gram-rr, compact, mt-bench, rm-r1, rrm) or a file.
    #[arg(long, default_value = "gram-rr")]
    rm_template: String,
    /// --rm-model's judging: reason (rationale, then label), prob (label-token softmax) or
    /// prob-after-reason.
    #[arg(long, default_value = "reason")]
    rm_mode: gramrr_judge::JudgeMode,
    /// Judge each pair in one order only instead of both.
    #[arg(long)]
    rm_one_order: bool,
    /// Longest judge rationale, in tokens.
    #[arg(long, default_value_t = 1024)]
    rm_max_new_tokens: usize,
    /// Sequences per forward pass of --rm-model.
    #[arg(long, default_value_t = 8)]
    rm_batch_size: usize,
    /// Within-group reward: bt (Bradley–Terry log-strength) or win-rate.
    #[arg(long, default_value = "bt")]
    group_score: gramrr_rl::GroupScore,
    /// Round-robin opponents per response (default: all others in the group).
    #[arg(long)]
    opponents: Option<usize>,
    /// Judge within the group even where a prompt has a reference answer.
    #[arg(long)]
    no_reference: bool,
    /// A command that scores responses (JSONL in, {"score"} lines out).
    #[arg(long)]
    reward_command: Option<String>,
    /// Weight of the reward model's reward in a mixture.
    #[arg(long, default_value_t = 1.0)]
    rm_weight: f64,
    /// Weight of the command's reward in a mixture.
    #[arg(long, default_value_t = 1.0)]
    command_weight: f64,

    /// GRPO steps (sample, score, update).
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// Prompts per step.
    #[arg(long, default_value_t = 4)]
    prompts_per_step: usize,
    /// Responses sampled per prompt (G ≥ 2).
    #[arg(long, default_value_t = 8)]
    group_size: usize,
    /// Optimizer updates per batch of responses (μ); above 1 the ratio leaves 1 and clips.
    #[arg(long, default_value_t = 1)]
    num_iterations: usize,
    /// Clip range ε of the ratio (lower side).
    #[arg(long, default_value_t = 0.2)]
    epsilon: f64,
    /// Upper clip ε_high [default: --epsilon] (DAPO's clip-higher uses 0.28).
    #[arg(long)]
    epsilon_high: Option<f64>,
    /// KL penalty weight β (0 turns the penalty off; the KL is still logged).
    #[arg(long, default_value_t = 0.04)]
    beta: f64,
    /// sequence: mean over each response's tokens, then over responses (GRPO); token: over
    /// all tokens of the step (DAPO).
    #[arg(long, default_value = "sequence")]
    loss_norm: gramrr_rl::LossNorm,
    /// Only centre rewards within a group, do not divide by their std (Dr. GRPO).
    #[arg(long)]
    no_scale_rewards: bool,
    /// Longest response, in tokens.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Sampling temperature of the policy (> 0).
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Keep the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Stop strings (repeatable); responses end before them.
    #[arg(long)]
    stop: Vec<String>,

    #[command(flatten)]
    lora: LoraArgs,
    /// Peak learning rate (TRL's GRPO default; LoRA usually wants 1e-5 to 1e-4).
    #[arg(long, default_value_t = 1e-6)]
    lr: f64,
    /// Schedule over the optimizer updates: constant, linear or cosine.
    #[arg(long, default_value = "constant")]
    scheduler: Scheduler,
    /// Fraction of the updates spent warming up.
    #[arg(long, default_value_t = 0.0)]
    warmup_ratio: f64,
    /// Decoupled weight decay on matrices.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Clip the global gradient norm to this value; 0 turns clipping off.
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    /// Sequences per forward/backward pass (gradients accumulate over a step).
    #[arg(long, default_value_t = 8)]
    micro_batch: usize,
    /// Seed of prompt order, sampling and LoRA initialisation.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Write a resumable checkpoint every N steps (0: only at the end).
    #[arg(long, default_value_t = 0)]
    save_every: usize,
    /// Continue from the latest checkpoint in --out (same flags, prompts and reward required).
    #[arg(long)]
    resume: bool,
    /// Sequences per generation batch of the policy.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Concurrent generation batches on the CPU (small models: the core count).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Do not draw curves.png.
    #[arg(long)]
    no_plot: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
}

#[derive(Args, Debug)]
pub struct SftArgs {
    /// Base model: a directory in Hugging Face layout, or `org/name` in the local HF cache.
    #[arg(long)]
    model: String,
    /// Training data, JSONL (see above).
    #[arg(long)]
    data: PathBuf,
    /// Output directory (created if missing).
    #[arg(long)]
    out: PathBuf,

    #[command(flatten)]
    lora: LoraArgs,

    /// Optimizer steps; overrides --epochs when given.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Passes over the data (fractions allowed) when --max-steps is not given.
    #[arg(long, default_value_t = 1.0)]
    epochs: f64,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-5)]
    lr: f64,
    /// Schedule after warmup: constant, linear (decay to 0) or cosine.
    #[arg(long, default_value = "linear")]
    scheduler: Scheduler,
    /// Fraction of the steps spent warming up linearly from 0 (ceil(ratio × steps) steps).
    #[arg(long, default_value_t = 0.0)]
    warmup_ratio: f64,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Micro-batches per optimizer step (does not change the loss normalisation).
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Decoupled weight decay on matrices (not on norms or biases).
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// AdamW β1.
    #[arg(long, default_value_t = 0.9)]
    adam_beta1: f64,
    /// AdamW β2.
    #[arg(long, default_value_t = 0.999)]
    adam_beta2: f64,
    /// AdamW ε.
    #[arg(long, default_value_t = 1e-8)]
    adam_eps: f64,
    /// Clip the global gradient norm to this value; 0 turns clipping off.
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    /// Longest sequence (prompt + completion) in tokens.
    #[arg(long, default_value_t = 1024)]
    max_len: usize,
    /// Longer sequences: `left` cuts the prompt from the left, `skip` leaves them out.
    #[arg(long, default_value = "left")]
    truncate: Truncate,
    /// Take batches in file order instead of a seeded shuffle each epoch.
    #[arg(long)]
    no_shuffle: bool,
    /// Batch sequences of similar length together (less padding).
    #[arg(long)]
    group_by_length: bool,
    /// Pack records, in file order, into rows of up to --max-len tokens (language-model
    /// pretraining: no padding). Each record keeps its loss weights and its prompt stays out
    /// of the loss; later records in a row attend to earlier ones. Records with a label (label
    /// loss) stay unpacked.
    #[arg(long)]
    pack: bool,
    /// Seed for data order, LoRA initialisation and dropout.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Write a resumable checkpoint every N optimizer steps (0: only at the end).
    #[arg(long, default_value_t = 0)]
    save_every: usize,
    /// Continue from the latest checkpoint in --out (same flags and data required).
    #[arg(long)]
    resume: bool,
    /// Data-parallel CPU workers: each micro-batch is split across this many threads and the
    /// gradients summed. Use the core count for small models (hidden ≲ 512), whose matrices are
    /// too small for a threaded GEMM; keep 1 for big ones. Part of the run's settings: resume
    /// with the same value.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Padding-free micro-batches (TRL's `padding_free`): the records of a micro-batch share rows
    /// no longer than the longest of them, each attending only to itself with positions from 0.
    /// The loss and gradients are those of padded batches; the compute spent on padding is not
    /// (about 40% on records of mixed length).
    #[arg(long)]
    padding_free: bool,

    /// Label tokens for the label loss, comma-separated (e.g. " A, B" is read as " A" and " B":
    /// spaces after a comma are kept). Records then carry "label": one of them or its index.
    #[arg(long)]
    label_tokens: Option<String>,
    /// Label smoothing of the label loss.
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f64,
    /// Weight of the label loss added to the token loss.
    #[arg(long, default_value_t = 1.0)]
    label_weight: f64,

    /// Do not draw loss.png at the end.
    #[arg(long)]
    no_plot: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
}

/// Merge a PEFT LoRA adapter into its base model and write a full HF checkpoint.
#[derive(Args, Debug)]
pub struct MergeLoraArgs {
    /// Adapter directory (adapter_config.json, adapter_model.safetensors).
    #[arg(long)]
    adapter: PathBuf,
    /// Base model directory; defaults to the adapter's base_model_name_or_path (relative paths
    /// are taken from the adapter directory).
    #[arg(long)]
    base: Option<String>,
    /// Output directory for the merged checkpoint.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(c: TrainCommand) -> Result<()> {
    match c {
        TrainCommand::Sft(a) => sft(a),
        TrainCommand::Grpo(a) => grpo(*a),
    }
}

fn load_decoder(dir: &Path, device: &Device) -> Result<Decoder> {
    let cfg = DecoderConfig::from_file(&dir.join("config.json"))?;
    let ck = SafetensorsCheckpoint::open(dir, device, WeightDType::F32)?;
    Ok(Decoder::load(&cfg, &ck)?)
}

/// Splits "a,b" on commas, keeping spaces after a comma (label tokens usually start with one).
fn split_labels(s: &str) -> Vec<String> {
    s.split(',').filter(|x| !x.is_empty()).map(str::to_string).collect()
}

/// Progress bar on stderr: loss, learning rate, tokens/s and ETA.
struct Bar {
    pb: indicatif::ProgressBar,
    started: Instant,
    tokens: usize,
    ema_loss: Option<f64>,
}

impl TrainObserver for Bar {
    fn on_start(&mut self, i: &RunInfo) {
        self.pb.set_length(i.total_steps as u64);
        self.pb.set_position(i.start_step as u64);
        self.pb.reset_eta();
        self.pb.println(format!(
            "{} fine-tuning: {} examples ({} truncated, {} skipped), {} steps ({} per epoch), {} trainable parameters",
            i.mode, i.examples, i.data.truncated, i.data.skipped, i.total_steps, i.steps_per_epoch, i.trainable_params
        ));
    }
    fn on_step(&mut self, m: &StepMetrics) {
        self.tokens += m.tokens;
        let tps = self.tokens as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        let ema = match self.ema_loss {
            None => m.loss,
            Some(e) => 0.9 * e + 0.1 * m.loss,
        };
        self.ema_loss = Some(ema);
        self.pb.set_position(m.step as u64);
        self.pb.set_message(format!("loss {:.4} (avg {ema:.4}) lr {:.2e} {tps:.0} tok/s", m.loss, m.lr));
    }
    fn on_event(&mut self, message: &str) {
        self.pb.println(message);
    }
}

fn sft(a: SftArgs) -> Result<()> {
    let dir = gramrr_model::hub::resolve_model_dir(&a.model).with_context(|| format!("finding model {}", a.model))?;
    let device = a.device.device()?;
    let tokenizer = TextTokenizer::from_dir(&dir).with_context(|| format!("loading the tokenizer of {}", dir.display()))?;
    let lora = a.lora.config()?;
    let label_loss = a.label_tokens.as_deref().map(|s| LabelLossConfig {
        tokens: split_labels(s),
        smoothing: a.label_smoothing,
        weight: a.label_weight,
    });
    let cfg = SftConfig {
        lora,
        max_steps: a.max_steps,
        epochs: a.epochs,
        lr: a.lr,
        scheduler: a.scheduler,
        warmup_ratio: a.warmup_ratio,
        batch_size: a.batch_size,
        grad_accum: a.grad_accum,
        adam: AdamWConfig { beta1: a.adam_beta1, beta2: a.adam_beta2, eps: a.adam_eps, weight_decay: a.weight_decay },
        max_grad_norm: a.max_grad_norm,
        max_len: a.max_len,
        truncate: a.truncate,
        shuffle: !a.no_shuffle,
        group_by_length: a.group_by_length,
        seed: a.seed,
        save_every: a.save_every,
        resume: a.resume,
        label_loss,
        merge_lora_on_return: false,
        workers: a.workers,
        padding_free: a.padding_free,
    };
    let label_tokens = cfg.label_loss.as_ref().map(|l| l.tokens.clone()).unwrap_or_default();
    let (examples, stats) = gramrr_train::load_sft_jsonl(&a.data, &tokenizer, &label_tokens, a.max_len, a.truncate)?;
    if stats.truncated + stats.skipped > 0 {
        eprintln!(
            "{}: {} of {} records longer than --max-len {}: {} truncated from the left of the prompt, {} skipped",
            a.data.display(),
            stats.truncated + stats.skipped,
            stats.records,
            a.max_len,
            stats.truncated,
            stats.skipped
        );
    }
    let examples = if a.pack {
        let rows = gramrr_train::pack_examples(&examples, a.max_len);
        eprintln!("{}: {} records packed into {} rows of up to {} tokens", a.data.display(), examples.len(), rows.len(), a.max_len);
        rows
    } else {
        examples
    };
    let decoder = load_decoder(&dir, &device).with_context(|| format!("loading {}", dir.display()))?;
    let out = TrainOutput { dir: a.out.clone(), base_model_dir: Some(dir.clone()), plot: !a.no_plot };
    let pb = indicatif::ProgressBar::new(1);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {msg} eta {eta} ({elapsed})")
            .expect("static template")
            .progress_chars("=> "),
    );
    let mut bar = Bar { pb, started: Instant::now(), tokens: 0, ema_loss: None };
    let (_, mut report) = gramrr_train::train_sft(decoder, &tokenizer, &examples, &cfg, Some(&out), &mut bar)?;
    bar.pb.finish_and_clear();
    report.data = stats;
    eprintln!(
        "done: {} steps, final loss {:.4}, {:.0} tokens/s; wrote {}",
        report.steps,
        report.final_loss.unwrap_or(f32::NAN),
        report.tokens_per_sec,
        a.out.display()
    );
    // The per-step losses are in metrics.jsonl; stdout gets the summary.
    let mut summary = serde_json::to_value(&report)?;
    if let Some(o) = summary.as_object_mut() {
        o.remove("losses");
    }
    println!("{summary}");
    Ok(())
}

pub fn merge_lora(a: MergeLoraArgs) -> Result<()> {
    let (lcfg, raw) = gramrr_train::lora::read_adapter_config(&a.adapter)?;
    let base = match &a.base {
        Some(b) => gramrr_model::hub::resolve_model_dir(b).with_context(|| format!("finding base model {b}"))?,
        None => {
            let Some(name) = raw.get("base_model_name_or_path").and_then(|v| v.as_str()).filter(|s| !s.is_empty()) else {
                bail!("{}: no base_model_name_or_path; pass --base", a.adapter.join("adapter_config.json").display());
            };
            let rel = a.adapter.join(name);
            if rel.join("config.json").exists() {
                rel
            } else {
                gramrr_model::hub::resolve_model_dir(name).with_context(|| format!("finding base model {name} (or pass --base)"))?
            }
        }
    };
    let mut decoder = load_decoder(&base, &Device::Cpu).with_context(|| format!("loading base model {}", base.display()))?;
    let loaded = gramrr_train::load_adapter(&mut decoder, &a.adapter)?;
    debug_assert_eq!(loaded, lcfg);
    gramrr_train::merge_lora(&mut decoder)?;
    gramrr_train::checkpoint::save_hf_checkpoint(&decoder, &a.out, Some(&base), None)?;
    eprintln!(
        "merged {} (r={}, alpha={}, {} targets) into {}; wrote {}",
        a.adapter.display(),
        lcfg.rank,
        lcfg.alpha,
        lcfg.targets.len(),
        base.display(),
        a.out.display()
    );
    Ok(())
}

/// Progress bar of a GRPO run: reward, KL, length and clip fraction of the last step.
struct GrpoBar {
    pb: indicatif::ProgressBar,
}

impl gramrr_rl::GrpoObserver for GrpoBar {
    fn on_start(&mut self, total: usize, start: usize, params: usize) {
        self.pb.set_length(total as u64);
        self.pb.set_position(start as u64);
        self.pb.reset_eta();
        self.pb.println(format!("GRPO: {total} steps from step {start}, {params} trainable parameters"));
    }
    fn on_step(&mut self, m: &gramrr_rl::GrpoStepMetrics) {
        self.pb.set_position(m.step as u64);
        self.pb.set_message(format!(
            "reward {:.3} kl {:.4} len {:.0} clip {:.3} rm {:.1}s",
            m.reward_mean, m.kl, m.response_tokens, m.clip_fraction, m.rm_seconds
        ));
    }
    fn on_event(&mut self, message: &str) {
        self.pb.println(message);
    }
}

fn grpo(a: GrpoArgs) -> Result<()> {
    use gramrr_rl::reward::RewardModel;
    let dir = gramrr_model::hub::resolve_model_dir(&a.model).with_context(|| format!("finding model {}", a.model))?;
    let opts = gramrr_model::LoadOptions { device: a.device, batch_size: a.batch_size, workers: a.workers, ..Default::default() };
    let prompts = gramrr_rl::read_prompts(&a.prompts, a.chat)?;
    let with_ref = prompts.iter().filter(|p| p.reference.is_some()).count();

    let mut parts: Vec<(f64, Box<dyn RewardModel>)> = vec![];
    if let Some(m) = &a.rm_model {
        let rm_opts = gramrr_model::LoadOptions { device: a.device, batch_size: a.rm_batch_size, ..Default::default() };
        let engine = gramrr_model::Engine::load(m, &rm_opts).with_context(|| format!("loading reward model {m}"))?;
        let template = gramrr_data::prompt::JudgeTemplate::resolve(&a.rm_template).with_context(|| format!("--rm-template {:?}", a.rm_template))?;
        let config = gramrr_judge::JudgeConfig {
            mode: a.rm_mode,
            both_orders: !a.rm_one_order,
            votes: 1,
            early_stop: true,
            sampling: gramrr_model::backend::SamplingParams { max_new_tokens: a.rm_max_new_tokens, ..Default::default() },
        };
        config.validate()?;
        let judge = gramrr_judge::PairwiseJudge::new(std::sync::Arc::new(engine), template, config);
        let mut r = gramrr_rl::JudgeReward::new(judge);
        r.opponents = a.opponents;
        r.score = a.group_score;
        r.use_reference = !a.no_reference;
        parts.push((a.rm_weight, Box::new(r)));
    }
    if let Some(url) = &a.rm_url {
        let mut r = gramrr_rl::http::ServerReward::new(url.clone());
        r.api_key = a.rm_api_key.clone();
        r.opponents = a.opponents;
        r.score = a.group_score;
        r.use_reference = !a.no_reference;
        parts.push((a.rm_weight, Box::new(r)));
    }
    if let Some(c) = &a.reward_command {
        parts.push((a.command_weight, Box::new(gramrr_rl::CommandReward::new(c.clone()))));
    }
    let reward: Box<dyn RewardModel> = match parts.len() {
        0 => bail!("no reward: give --rm-model, --rm-url or --reward-command (or a reward model and a command)"),
        1 if parts[0].0 == 1.0 => parts.pop().expect("one part").1,
        _ => Box::new(gramrr_rl::MixedReward { parts }),
    };
    let lora = a.lora.config()?;
    let cfg = gramrr_rl::GrpoConfig {
        lora,
        steps: a.steps,
        prompts_per_step: a.prompts_per_step,
        group_size: a.group_size,
        num_iterations: a.num_iterations,
        loss: gramrr_train::PolicyLossConfig { epsilon_low: a.epsilon, epsilon_high: a.epsilon_high.unwrap_or(a.epsilon), beta: a.beta },
        loss_norm: a.loss_norm,
        scale_rewards: !a.no_scale_rewards,
        lr: a.lr,
        scheduler: a.scheduler,
        warmup_ratio: a.warmup_ratio,
        adam: AdamWConfig { weight_decay: a.weight_decay, ..AdamWConfig::default() },
        max_grad_norm: a.max_grad_norm,
        micro_batch: a.micro_batch,
        sampling: gramrr_model::backend::SamplingParams {
            max_new_tokens: a.max_new_tokens,
            temperature: a.temperature,
            top_p: a.top_p,
            top_k: a.top_k,
            stop: a.stop.clone(),
            ..Default::default()
        },
        seed: a.seed,
        save_every: a.save_every,
        resume: a.resume,
    };
    let policy = gramrr_model::Engine::load(&a.model, &opts).with_context(|| format!("loading policy {}", a.model))?;
    eprintln!(
        "{}: {} prompts ({with_ref} with a reference answer); reward: {}",
        a.prompts.display(),
        prompts.len(),
        reward.name()
    );
    let out = gramrr_rl::GrpoOutput { dir: a.out.clone(), base_model_dir: Some(dir), plot: !a.no_plot };
    let pb = indicatif::ProgressBar::new(1);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {msg} eta {eta} ({elapsed})")
            .expect("static template")
            .progress_chars("=> "),
    );
    let mut bar = GrpoBar { pb };
    let (_, report) = gramrr_rl::train_grpo(policy, &prompts, reward.as_ref(), &cfg, Some(&out), &mut bar)?;
    bar.pb.finish_and_clear();
    let h = &report.history;
    let k = (h.len() / 10).max(1).min(h.len());
    let mean = |s: &[gramrr_rl::GrpoStepMetrics]| s.iter().map(|m| m.reward_mean).sum::<f64>() / s.len().max(1) as f64;
    eprintln!(
        "done: {} steps in {:.1} s, mean reward {:.4} (first {k} steps) → {:.4} (last {k}); wrote {}",
        report.steps,
        report.seconds,
        mean(&h[..k]),
        mean(&h[h.len() - k..]),
        a.out.display()
    );
    let mut summary = serde_json::to_value(&report)?;
    if let Some(o) = summary.as_object_mut() {
        o.remove("history");
    }
    println!("{summary}");
    Ok(())
}
