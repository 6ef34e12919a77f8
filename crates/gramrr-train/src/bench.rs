//! Training speed and memory on synthetic data, for BENCHMARKS.md (side by side with
//! tools/bench_train_torch.py, which runs the same configuration in PyTorch).

use std::path::Path;
use std::time::Instant;

use candle_core::Device;
use gramrr_model::config::DecoderConfig;
use gramrr_model::model::Decoder;
use gramrr_model::tokenizer::TextTokenizer;
use gramrr_model::weights::SafetensorsCheckpoint;
use gramrr_model::WeightDType;
use rand::{Rng, SeedableRng};

use crate::data::SftExample;
use crate::error::Result;
use crate::lora::{LoraConfig, LoraTarget};
use crate::trainer::{train_sft, SftConfig, StepMetrics, TrainObserver};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BenchTrainOptions {
    /// LoRA rank on all seven projections (alpha = 2·rank); `None` for full fine-tuning.
    pub lora_rank: Option<usize>,
    pub seq_len: usize,
    pub batch_size: usize,
    /// Timed optimizer steps, after `warmup` untimed ones.
    pub steps: usize,
    pub warmup: usize,
    /// Data-parallel CPU workers (`SftConfig::workers`).
    #[serde(default = "one")]
    pub workers: usize,
}

fn one() -> usize {
    1
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BenchTrainResult {
    pub framework: String,
    /// Which GEMM the f32 matmuls used (`gramrr_model::blas::describe`).
    #[serde(default)]
    pub matmul: String,
    pub mode: String,
    pub options: BenchTrainOptions,
    pub threads: usize,
    pub trainable_params: usize,
    /// Tokens (prompt + completion) per second over the timed steps.
    pub tokens_per_sec: f64,
    pub step_seconds: Vec<f64>,
    /// CPU seconds (user + system) of each step, all threads.
    pub step_cpu_seconds: Vec<f64>,
    /// Tokens per CPU-second over the timed steps, times the thread count: what tokens/s would
    /// be with the cores to ourselves (the machine is shared).
    pub tokens_per_sec_cpu: f64,
    /// Peak resident memory of the process (VmHWM), MiB.
    pub peak_rss_mib: f64,
    pub load_seconds: f64,
}

/// Peak resident set size of this process in MiB (Linux; 0 elsewhere).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU time (user + system) of this process in seconds, from /proc/self/stat (Linux; 0
/// elsewhere). On a shared machine, tokens per CPU-second is steadier than wall time.
pub fn process_cpu_seconds() -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = s.rsplit_once(')').map_or("", |x| x.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

struct Times(Vec<f64>, Vec<f64>, f64);
impl TrainObserver for Times {
    fn on_step(&mut self, m: &StepMetrics) {
        self.0.push(m.step_seconds);
        let now = process_cpu_seconds();
        self.1.push(now - self.2);
        self.2 = now;
        eprintln!("step {}/{}: {:.2} s, loss {:.4}", m.step, m.total_steps, m.step_seconds, m.loss);
    }
}

/// Trains on random token sequences (half prompt, half completion, as tools/bench_train_torch.py
/// does) and measures tokens/s and peak memory.
pub fn bench_train(model_dir: &Path, opts: &BenchTrainOptions) -> Result<BenchTrainResult> {
    let t0 = Instant::now();
    let cfg = DecoderConfig::from_file(&model_dir.join("config.json"))?;
    let ck = SafetensorsCheckpoint::open(model_dir, &Device::Cpu, WeightDType::F32)?;
    let decoder = Decoder::load(&cfg, &ck)?;
    drop(ck);
    let tokenizer = TextTokenizer::from_dir(model_dir)?;
    let load_seconds = t0.elapsed().as_secs_f64();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let total = opts.steps + opts.warmup;
    let half = opts.seq_len / 2;
    let examples: Vec<SftExample> = (0..total * opts.batch_size)
        .map(|_| {
            let mut ids = |n: usize| (0..n).map(|_| rng.random_range(0..cfg.vocab_size as u32)).collect::<Vec<u32>>();
            let p = ids(half);
            SftExample::new(p, ids(opts.seq_len - half))
        })
        .collect();
    let lora = opts.lora_rank.map(|r| LoraConfig { rank: r, alpha: 2.0 * r as f64, dropout: 0.0, targets: LoraTarget::ALL.to_vec() });
    let mode = if lora.is_some() { "lora" } else { "full" }.to_string();
    let sft = SftConfig {
        lora,
        max_steps: Some(total),
        lr: 1e-5,
        batch_size: opts.batch_size,
        max_len: opts.seq_len,
        shuffle: false,
        merge_lora_on_return: false,
        workers: opts.workers,
        ..Default::default()
    };
    let mut times = Times(vec![], vec![], process_cpu_seconds());
    let (_, report) = train_sft(decoder, &tokenizer, &examples, &sft, None, &mut times)?;
    let timed: Vec<f64> = times.0[opts.warmup.min(times.0.len())..].to_vec();
    let secs: f64 = timed.iter().sum();
    let tokens = (timed.len() * opts.batch_size * opts.seq_len) as f64;
    Ok(BenchTrainResult {
        framework: "gramrr (candle 0.11.1)".into(),
        matmul: gramrr_model::blas::describe(),
        mode,
        options: opts.clone(),
        threads: rayon::current_num_threads(),
        trainable_params: report.trainable_params,
        tokens_per_sec: tokens / secs.max(1e-9),
        tokens_per_sec_cpu: tokens / (times.1[opts.warmup.min(times.1.len())..].iter().sum::<f64>() / rayon::current_num_threads() as f64).max(1e-9),
        step_seconds: times.0,
        step_cpu_seconds: times.1,
        peak_rss_mib: peak_rss_mib(),
        load_seconds,
    })
}
