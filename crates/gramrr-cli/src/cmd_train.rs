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
    let lora = if a.lora_rank > 0 {
        let targets = LoraTarget::parse_list(&a.lora_targets).map_err(anyhow::Error::msg).context("--lora-targets")?;
        Some(LoraConfig { rank: a.lora_rank, alpha: a.lora_alpha, dropout: a.lora_dropout, targets })
    } else {
        None
    };
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
