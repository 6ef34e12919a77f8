//! `gramrr init-model`, `train-tokenizer`, `logprobs`, `generate` and `bench engine`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::{Args, Subcommand, ValueEnum};
use gramrr_model::backend::{Backend, ChatMessage, GenerateRequest, Prompt, SamplingParams, ScoreRequest};
use gramrr_model::init::{self, InitSpec};
use gramrr_model::{Architecture, DeviceChoice, Engine, LoadOptions, WeightDType};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::io::{progress_bar, read_jsonl, JsonlWriter};

/// How to load a model: shared by every subcommand that runs one.
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model directory in Hugging Face layout, `org/name[@revision]` in the local HF cache
    /// (HF_HUB_CACHE, HF_HOME/hub or ~/.cache/huggingface/hub), or a `.gguf` file (llama.cpp's
    /// format: Llama, Qwen2 or Qwen3 with a byte-level BPE tokenizer; config, tokenizer and chat
    /// template come from the file). Nothing is ever downloaded.
    /// Or OpenAI-compatible servers of the model: `http://host:port/v1` (vLLM, SGLang,
    /// llama.cpp's server, gramrr serve), comma-separated for replicas; then give --tokenizer
    /// (not needed for a llama.cpp server of a .gguf file on this machine).
    /// The API key comes from GRAMRR_API_KEY or OPENAI_API_KEY.
    #[arg(long)]
    pub model: String,
    /// GGUF only: dequantize the weights to f32 at load. By default quantized weights stay
    /// quantized and matmuls run on them (8-bit activations, as llama.cpp does): less memory
    /// and faster decoding, log-probs within the format's tolerance of the f32 computation.
    #[arg(long)]
    pub dequantize: bool,
    /// With a server --model: the model's tokenizer (directory, `org/name` or a `.gguf` file),
    /// for its chat template and label tokens; prompts go to the server as token ids (as text
    /// where it takes only text) [default: the served model's name where that is a .gguf file
    /// on this machine, as llama.cpp's server lists it].
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// With a server --model: the `model` name to request [default: the first one the
    /// server's /v1/models lists]. For `gramrr serve`: the name its /v1/models gives
    /// [default: --model].
    #[arg(long)]
    pub served_model: Option<String>,
    /// With a server --model: most requests in flight per replica.
    #[arg(long, default_value_t = 16)]
    pub max_in_flight: usize,
    /// With a server --model: seconds before a request is given up on that replica and re-sent.
    #[arg(long, default_value_t = 600)]
    pub request_timeout: u64,
    /// Weight precision: f32, or bf16 (matrices held as bf16; CPU matmuls take bf16 products
    /// with f32 sums, on AVX512-BF16 where the CPU has it).
    #[arg(long, default_value = "f32")]
    pub dtype: WeightDType,
    /// cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// Most sequences per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
}

impl ModelArgs {
    pub fn load(&self) -> Result<Engine> {
        if gramrr_remote::is_url(&self.model) {
            bail!("--model {}: this command needs a local model directory (the weights themselves), not a server", self.model);
        }
        let opts = LoadOptions {
            device: self.device,
            dtype: self.dtype,
            batch_size: self.batch_size,
            dequantize: self.dequantize,
            ..Default::default()
        };
        Engine::load(&self.model, &opts).with_context(|| format!("loading model {}", self.model))
    }

    pub fn is_remote(&self) -> bool {
        gramrr_remote::is_url(&self.model)
    }

    /// The model behind a command: the local engine, or the remote servers (probed for what
    /// `needs` asks, so a server that cannot do the work is refused before any).
    pub fn backend(&self, needs: gramrr_remote::Needs) -> Result<Arc<dyn Backend>> {
        Ok(self.connect(needs)?.backend)
    }

    /// [`Self::backend`], keeping the remote side's handle for progress lines.
    pub fn connect(&self, needs: gramrr_remote::Needs) -> Result<Connected> {
        if !self.is_remote() {
            return Ok(Connected { backend: Arc::new(self.load()?), remote: None });
        }
        let r = Arc::new(self.remote(needs)?);
        Ok(Connected { backend: r.clone(), remote: Some(r) })
    }

    pub fn remote(&self, needs: gramrr_remote::Needs) -> Result<gramrr_remote::RemoteBackend> {
        let urls = gramrr_remote::parse_urls(&self.model)?;
        let tokenizer = self.tokenizer.clone().unwrap_or_default();
        let mut cfg = gramrr_remote::RemoteConfig::new(urls, tokenizer);
        cfg.served_model = self.served_model.clone();
        cfg.needs = needs;
        cfg.pool.max_in_flight = self.max_in_flight.max(1);
        cfg.pool.request_timeout = std::time::Duration::from_secs(self.request_timeout.max(1));
        cfg.pool.api_key = std::env::var("GRAMRR_API_KEY").or_else(|_| std::env::var("OPENAI_API_KEY")).ok().filter(|k| !k.is_empty());
        gramrr_remote::RemoteBackend::connect(cfg).with_context(|| format!("connecting to {}", self.model))
    }

    /// Requests handed to the backend at once: a few engine batches locally, enough to keep
    /// every replica's in-flight slots busy remotely.
    pub fn chunk(&self, local_batches: usize) -> usize {
        if self.is_remote() {
            self.model.split(',').count() * self.max_in_flight.max(1) * 4
        } else {
            self.batch_size.max(1) * local_batches
        }
    }
}

/// A command's model, and for servers the client whose rates the progress bar shows.
pub struct Connected {
    pub backend: Arc<dyn Backend>,
    pub remote: Option<Arc<gramrr_remote::RemoteBackend>>,
}

impl Connected {
    /// The progress bar's label: `what`, plus requests/s, tokens/s and replicas up remotely.
    pub fn label(&self, what: &str) -> String {
        match &self.remote {
            Some(r) => format!("{what} ({})", r.status_line()),
            None => what.to_string(),
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ArchArg {
    Llama,
    Qwen2,
    Qwen3,
}

impl From<ArchArg> for Architecture {
    fn from(a: ArchArg) -> Self {
        match a {
            ArchArg::Llama => Architecture::Llama,
            ArchArg::Qwen2 => Architecture::Qwen2,
            ArchArg::Qwen3 => Architecture::Qwen3,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum ShapePreset {
    /// hidden 64, 2 layers, 4 heads, 2 KV heads, intermediate 128.
    Tiny,
    /// Qwen3-0.6B: hidden 1024, 28 layers, 16 heads, 8 KV heads, head_dim 128,
    /// intermediate 3072, vocab 151936 (the benchmarks' reference shape).
    Qwen3_0_6b,
}

/// Write a random model in HF layout (config.json, model.safetensors, tokenizer.json,
/// tokenizer_config.json with a ChatML chat template, generation_config.json).
#[derive(Args)]
pub struct InitModelArgs {
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Architecture (written as LlamaForCausalLM, Qwen2ForCausalLM or Qwen3ForCausalLM).
    #[arg(long, value_enum, default_value = "qwen3")]
    arch: ArchArg,
    /// Starting shape; the flags below override single fields.
    #[arg(long, value_enum, default_value = "tiny")]
    preset: ShapePreset,
    #[arg(long)]
    hidden: Option<usize>,
    #[arg(long)]
    intermediate: Option<usize>,
    #[arg(long)]
    layers: Option<usize>,
    #[arg(long)]
    heads: Option<usize>,
    #[arg(long)]
    kv_heads: Option<usize>,
    /// Head dimension (default hidden / heads).
    #[arg(long)]
    head_dim: Option<usize>,
    /// Model vocabulary size; at least the tokenizer's (a larger one pads the embedding, as Qwen does).
    #[arg(long)]
    vocab_size: Option<usize>,
    /// Untie lm_head from the input embedding.
    #[arg(long)]
    untied: bool,
    /// Apply Llama 3 rope scaling (factor 8, low 1, high 4).
    #[arg(long)]
    llama3_rope: bool,
    /// Use this existing tokenizer directory (tokenizer.json, tokenizer_config.json).
    #[arg(long, conflicts_with_all = ["corpus", "chars"])]
    tokenizer: Option<PathBuf>,
    /// Train a byte-level BPE tokenizer on this text file (default: a small built-in corpus).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Target BPE vocabulary when training a tokenizer.
    #[arg(long, default_value_t = 512)]
    bpe_vocab: usize,
    /// Use a character-level tokenizer over exactly these characters.
    #[arg(long)]
    chars: Option<String>,
    /// Std of the normal init of matrices and embeddings.
    #[arg(long, default_value_t = 0.02)]
    init_std: f64,
    /// Weight file dtype: f32 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: WeightDType,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn init_model(a: InitModelArgs) -> Result<()> {
    let mut spec = match a.preset {
        ShapePreset::Tiny => InitSpec::tiny(a.arch.into()),
        ShapePreset::Qwen3_0_6b => InitSpec { architecture: a.arch.into(), ..InitSpec::qwen3_0_6b() },
    };
    spec.hidden_size = a.hidden.unwrap_or(spec.hidden_size);
    spec.intermediate_size = a.intermediate.unwrap_or(spec.intermediate_size);
    spec.num_hidden_layers = a.layers.unwrap_or(spec.num_hidden_layers);
    spec.num_attention_heads = a.heads.unwrap_or(spec.num_attention_heads);
    spec.num_key_value_heads = a.kv_heads.unwrap_or(spec.num_key_value_heads);
    spec.head_dim = a.head_dim.or(spec.head_dim);
    spec.vocab_size = a.vocab_size.unwrap_or(spec.vocab_size);
    spec.tie_word_embeddings = !a.untied;
    spec.llama3_rope_scaling = a.llama3_rope;
    spec.init_std = a.init_std;
    spec.seed = a.seed;
    let tokenizer = if let Some(dir) = &a.tokenizer {
        let p = dir.join("tokenizer.json");
        tokenizers::Tokenizer::from_file(&p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
    } else if let Some(chars) = &a.chars {
        init::char_tokenizer(chars)?
    } else {
        let text = match &a.corpus {
            Some(p) => std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            None => init::BUILTIN_CORPUS.to_string(),
        };
        init::train_bpe_tokenizer(text.lines(), a.bpe_vocab)?
    };
    let dtype = if a.dtype == WeightDType::Bf16 { DType::BF16 } else { DType::F32 };
    let cfg = init::write_random_model(&a.out, &spec, &tokenizer, dtype)?;
    if let Some(dir) = &a.tokenizer {
        // Keep the user's tokenizer config (chat template, special tokens) rather than ours.
        for f in ["tokenizer_config.json", "chat_template.jinja", "chat_template.json", "special_tokens_map.json"] {
            if dir.join(f).exists() {
                std::fs::copy(dir.join(f), a.out.join(f))?;
            }
        }
    }
    println!(
        "{}",
        json!({"out": a.out, "architecture": cfg.architecture.hf_name(), "parameters": cfg.num_parameters(),
               "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size, "layers": cfg.num_hidden_layers})
    );
    Ok(())
}

/// Train a byte-level BPE tokenizer (or build a character-level one) and save it in HF layout.
#[derive(Args)]
pub struct TrainTokenizerArgs {
    /// Training text, one document per line.
    #[arg(long)]
    input: PathBuf,
    /// Output directory (tokenizer.json, tokenizer_config.json with a ChatML template).
    #[arg(long)]
    out: PathBuf,
    /// Target vocabulary size, special tokens included.
    #[arg(long, default_value_t = 1024)]
    vocab_size: usize,
    /// One token per distinct character of the input instead of BPE.
    #[arg(long)]
    char_level: bool,
}

pub fn train_tokenizer(a: TrainTokenizerArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.input).with_context(|| format!("reading {}", a.input.display()))?;
    let tok = if a.char_level {
        init::char_tokenizer(&text.replace('\n', ""))?
    } else {
        init::train_bpe_tokenizer(text.lines(), a.vocab_size)?
    };
    init::save_tokenizer(&tok, &a.out, init::CHATML_TEMPLATE)?;
    println!("{}", json!({"out": a.out, "vocab_size": tok.get_vocab_size(true)}));
    Ok(())
}

/// Teacher-forced log-probabilities: for each input line {"prompt", "completion"} (raw text),
/// the log-probability of every completion token given everything before it. The prompt is
/// encoded with special tokens (a BOS for Llama 3), the completion without, and appended.
/// Output lines keep the input order:
/// {"prompt_tokens", "completion_tokens", "token_logprobs": [...], "logprob"}.
#[derive(Args)]
pub struct LogprobsArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Input JSONL: {"prompt": str, "completion": str} per line.
    #[arg(long)]
    input: PathBuf,
    /// Output JSONL.
    #[arg(long)]
    output: PathBuf,
}

#[derive(Deserialize)]
struct LogprobsLine {
    prompt: String,
    completion: String,
}

pub fn logprobs(a: LogprobsArgs) -> Result<()> {
    let lines: Vec<LogprobsLine> = read_jsonl(&a.input)?;
    let model = a.model.connect(gramrr_remote::Needs::SCORE)?;
    let engine = model.backend.clone();
    let mut w = JsonlWriter::create(&a.output)?;
    let pb = progress_bar(lines.len() as u64, "scoring");
    // Chunks of several batches: long enough to group by length, short enough for progress.
    for chunk in lines.chunks(a.model.chunk(8)) {
        let reqs: Vec<ScoreRequest> =
            chunk.iter().map(|l| ScoreRequest { prompt: Prompt::Raw(l.prompt.clone()), completion: l.completion.clone() }).collect();
        for o in engine.score(&reqs)? {
            w.write(&o)?;
        }
        pb.set_message(model.label("scoring"));
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    w.finish()
}

/// Batched generation. Input lines are {"prompt": str} (raw text, encoded with special tokens)
/// or {"messages": [{"role", "content"}...]} (rendered with the model's chat template and the
/// generation prompt). Output lines keep the input order:
/// {"text", "token_ids": [...], "finish_reason": "stop"|"length"}.
/// Sampling is seeded per line (seed, line index): the same seed gives the same text whatever
/// the batch size.
#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Input JSONL.
    #[arg(long)]
    input: PathBuf,
    /// Output JSONL.
    #[arg(long)]
    output: PathBuf,
    /// Most new tokens per line.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// 0 is greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling mass (1 keeps all tokens).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Keep the k most likely tokens (0 keeps all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when the text contains this string (repeatable); the string is cut from the text.
    #[arg(long)]
    stop: Vec<String>,
}

#[derive(Deserialize)]
struct GenerateLine {
    prompt: Option<String>,
    messages: Option<Vec<ChatMessage>>,
}

#[derive(Serialize)]
struct GenerateOut<'a> {
    text: &'a str,
    token_ids: &'a [u32],
    finish_reason: gramrr_model::backend::FinishReason,
}

pub fn generate(a: GenerateArgs) -> Result<()> {
    let lines: Vec<GenerateLine> = read_jsonl(&a.input)?;
    let mut reqs = Vec::with_capacity(lines.len());
    for (i, l) in lines.into_iter().enumerate() {
        let prompt = match (l.prompt, l.messages) {
            (Some(p), None) => Prompt::Raw(p),
            (None, Some(m)) => Prompt::Chat(m),
            _ => bail!("{}: record {}: give exactly one of \"prompt\" or \"messages\"", a.input.display(), i + 1),
        };
        reqs.push(GenerateRequest { prompt, seed_offset: i as u64 });
    }
    let model = a.model.connect(gramrr_remote::Needs::GENERATE)?;
    let engine = model.backend.clone();
    let params = SamplingParams {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_p: a.top_p,
        top_k: a.top_k,
        stop: a.stop.clone(),
        seed: a.seed,
        ignore_eos: false,
    };
    let mut w = JsonlWriter::create(&a.output)?;
    let pb = progress_bar(reqs.len() as u64, "generating");
    for chunk in reqs.chunks(a.model.chunk(4)) {
        for o in engine.generate(chunk, &params)? {
            w.write(&GenerateOut { text: &o.text, token_ids: &o.token_ids, finish_reason: o.finish_reason })?;
        }
        pb.set_message(model.label("generating"));
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    w.finish()
}

/// Measure speed and memory; prints JSON (tools/bench_report.py merges it with the PyTorch
/// figures into BENCHMARKS.md).
#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchWhat,
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Engine: scoring throughput, greedy decoding, peak RSS, GEMM efficiency.
    Engine(BenchEngineArgs),
    /// The remote backend's own cost per request: scoring requests against N in-process
    /// loopback servers that answer at once (so only gramrr's client work and the HTTP round
    /// trip show).
    Remote(BenchRemoteArgs),
}

#[derive(Args)]
struct BenchRemoteArgs {
    /// Any model directory: only its tokenizer is used.
    #[arg(long)]
    tokenizer: String,
    /// Instant servers (replicas).
    #[arg(long, default_value_t = 8)]
    servers: usize,
    /// Scoring requests sent.
    #[arg(long, default_value_t = 20000)]
    requests: usize,
    /// Requests in flight per server.
    #[arg(long, default_value_t = 16)]
    max_in_flight: usize,
}

#[derive(Args)]
struct BenchEngineArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Scoring batch: this many sequences ...
    #[arg(long, default_value_t = 4)]
    score_batch: usize,
    /// ... of this many tokens.
    #[arg(long, default_value_t = 512)]
    score_len: usize,
    /// Prompt length for decoding.
    #[arg(long, default_value_t = 128)]
    prompt_len: usize,
    /// New tokens for decoding.
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
    /// Decoding batch sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    decode_batches: Vec<usize>,
    /// Timed repetitions (the best is reported; one untimed warm-up first).
    #[arg(long, default_value_t = 2)]
    reps: usize,
    /// Skip the parts named here (score, decode, gemm, gemm-bf16).
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// Write the JSON here as well as to stdout.
    #[arg(long)]
    output: Option<PathBuf>,
}

/// The bf16 kernels (`--dtype bf16`'s matmuls) on the f32 benchmark's GEMM shape and on the
/// model's MLP shape at prefill and decoding row counts, with the f32 product on the same
/// shapes, and the machine's bf16 peak measured by [`gramrr_model::bf16::peak_probe`] on every
/// thread at once.
fn bench_bf16_gemm(cfg: &gramrr_model::DecoderConfig, rows: usize, reps: usize) -> Result<serde_json::Value> {
    use gramrr_model::bf16;
    let isa = bf16::chosen_isa();
    let (c, f) = (cfg.hidden_size, cfg.intermediate_size);
    let mut shapes = Vec::new();
    for (m, k, n) in [(2048, 1024, 3072), (rows, c, f), (rows, f, c), (8, c, f), (1, c, f)] {
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let wf: Vec<f32> = (0..n * k).map(|i| ((i * 104_729) % 1000) as f32 / 1000.0 - 0.5).collect();
        let w: Vec<u16> = wf.iter().map(|&v| bf16::to_bf16(v)).collect();
        let flops = 2.0 * (m * k * n) as f64;
        // Small products are timed over many calls, so that timer and pool start-up do not count.
        let calls = ((2e9 / flops) as usize).clamp(1, 1000);
        let secs = best_of(reps.max(3), || {
            for _ in 0..calls {
                std::hint::black_box(bf16::matmul(&x, m, &w, n, k, isa));
            }
            Ok(())
        })? / calls as f64;
        let xt = Tensor::from_vec(x, (m, k), &Device::Cpu)?;
        let wt = Tensor::from_vec(wf, (n, k), &Device::Cpu)?;
        let f32_secs = best_of(reps.max(3), || {
            for _ in 0..calls {
                std::hint::black_box(gramrr_model::ops::linear(&xt, &wt)?);
            }
            Ok(())
        })? / calls as f64;
        shapes.push(json!({"m": m, "k": k, "n": n, "gflops_per_second": flops / secs / 1e9,
                           "f32_gflops_per_second": flops / f32_secs / 1e9}));
    }
    let mut v = json!({"kernels": format!("{isa:?}"), "shapes": shapes});
    let iters = 1 << 20;
    if bf16::peak_probe(1).is_some() {
        let mut flops = 0.0;
        let secs = best_of(reps.max(3), || {
            flops = rayon::broadcast(|_| bf16::peak_probe(iters).unwrap_or(0.0)).iter().sum();
            Ok(())
        })?;
        v["measured_peak_gflops_per_second"] = json!(flops / secs / 1e9);
        v["peak_threads"] = json!(rayon::current_num_threads());
    }
    Ok(v)
}

fn vm_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}

fn best_of<F: FnMut() -> Result<()>>(reps: usize, mut f: F) -> Result<f64> {
    f()?; // warm-up: page faults, allocator, thread pool
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

pub fn bench(a: BenchArgs) -> Result<()> {
    match a.what {
        BenchWhat::Engine(b) => bench_engine(b),
        BenchWhat::Remote(b) => bench_remote(b),
    }
}

fn bench_remote(b: BenchRemoteArgs) -> Result<()> {
    let urls = (0..b.servers.max(1)).map(|_| gramrr_remote::instant::spawn()).collect::<std::io::Result<Vec<_>>>()?;
    let mut cfg = gramrr_remote::RemoteConfig::new(urls, b.tokenizer.clone());
    cfg.pool.max_in_flight = b.max_in_flight.max(1);
    let remote = gramrr_remote::RemoteBackend::connect(cfg)?;
    let reqs: Vec<ScoreRequest> = (0..b.requests)
        .map(|i| ScoreRequest {
            prompt: Prompt::Raw(format!("Question {i}: which of the two answers is better, and why? Think it through.")),
            completion: format!(" Answer {i} is better."),
        })
        .collect();
    let t = Instant::now();
    let out = remote.score(&reqs)?;
    let secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(out.len() == reqs.len() && out.iter().all(|o| o.completion_tokens > 0), "every request answered");
    let v = json!({
        "servers": b.servers, "requests": b.requests, "max_in_flight": b.max_in_flight, "seconds": secs,
        "requests_per_s": b.requests as f64 / secs, "us_per_request": secs * 1e6 / b.requests as f64,
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    });
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

fn bench_engine(b: BenchEngineArgs) -> Result<()> {
    let t0 = Instant::now();
    let mut margs = b.model.clone();
    margs.batch_size = margs.batch_size.max(b.score_batch).max(*b.decode_batches.iter().max().unwrap_or(&1));
    let engine = margs.load()?;
    let load_s = t0.elapsed().as_secs_f64();
    let rss_after_load = vm_kib("VmRSS:").unwrap_or(0);
    let cfg = engine.model.cfg.clone();
    let weight_bytes = cfg.num_parameters() as u64 * 4;
    let threads = rayon::current_num_threads();
    let vocab = engine.tokenizer.vocab_size() as u32;
    // Deterministic pseudo-random token ids inside the tokenizer's vocabulary.
    let ids = |n: usize, salt: u32| -> Vec<u32> {
        (0..n as u32).map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(salt * 97)) % (vocab - 8) + 4).collect()
    };
    let mut out = json!({
        "model": engine.dir, "threads": threads, "parameters": cfg.num_parameters(),
        "weight_bytes_f32": weight_bytes, "load_seconds": load_s, "rss_after_load_kib": rss_after_load,
        "matmul": gramrr_model::blas::describe(), "dtype": format!("{:?}", b.model.dtype),
        "bf16_kernels": format!("{:?}", gramrr_model::bf16::chosen_isa()),
    });

    if !b.skip.iter().any(|s| s == "score") {
        // Scoring: the prompt is one token, everything else is completion, so every position
        // goes through lm_head, as in scoring long rationales.
        let items: Vec<(Vec<u32>, Vec<u32>)> =
            (0..b.score_batch).map(|r| (ids(1, r as u32), ids(b.score_len - 1, r as u32 + 1))).collect();
        let secs = best_of(b.reps, || engine.score_ids(&items).map(|_| ()).map_err(Into::into))?;
        let tokens = b.score_batch * b.score_len;
        out["score"] = json!({"batch": b.score_batch, "seq_len": b.score_len, "seconds": secs,
                              "tokens_per_second": tokens as f64 / secs});
        out["peak_rss_kib"] = json!(vm_kib("VmHWM:").unwrap_or(0));
        out["peak_rss_over_weights"] = json!(vm_kib("VmHWM:").unwrap_or(0) as f64 * 1024.0 / weight_bytes as f64);
        // Prefill FLOPs: 2 · (non-embedding params) per token for the projections, the
        // attention score/value products, and lm_head on every position.
        let c = cfg.hidden_size as f64;
        let emb = (cfg.vocab_size as f64) * c;
        let non_emb = cfg.num_parameters() as f64 - emb * if cfg.tie_word_embeddings { 1.0 } else { 2.0 };
        let t = b.score_len as f64;
        let attn = 2.0 * 2.0 * cfg.num_hidden_layers as f64 * (cfg.num_attention_heads * cfg.head_dim) as f64 * t * t / 2.0;
        let flops = b.score_batch as f64 * (2.0 * non_emb * t + attn + 2.0 * emb * t);
        out["score"]["gflops_per_second"] = json!(flops / secs / 1e9);
    }

    if !b.skip.iter().any(|s| s == "decode") {
        let mut dec = serde_json::Map::new();
        for &bs in &b.decode_batches {
            let prompts: Vec<Vec<u32>> = (0..bs).map(|r| ids(b.prompt_len, 1000 + r as u32)).collect();
            let offs: Vec<u64> = (0..bs as u64).collect();
            // No stop tokens: every row decodes exactly `new_tokens`.
            let params = SamplingParams { max_new_tokens: b.new_tokens, ignore_eos: true, ..Default::default() };
            let mut eng_gen = 0usize;
            let secs = best_of(b.reps, || {
                let o = engine.generate_ids(&prompts, &offs, &params)?;
                eng_gen = o.iter().map(|x| x.token_ids.len()).sum();
                Ok(())
            })?;
            // The same prompts with one new token: the prefill and the first step. What the
            // longer run takes beyond it is the decoding steps alone, which is what llama.cpp's
            // per-token figure (`llama_decode` of one token after the prompt) measures.
            let first = SamplingParams { max_new_tokens: 1, ..params.clone() };
            let secs_first = best_of(b.reps, || Ok(engine.generate_ids(&prompts, &offs, &first).map(|_| ())?))?;
            let steps = eng_gen.saturating_sub(bs);
            let steps_per_second = if steps > 0 && secs > secs_first { Some(steps as f64 / (secs - secs_first)) } else { None };
            dec.insert(
                format!("batch_{bs}"),
                json!({"batch": bs, "prompt_len": b.prompt_len, "new_tokens": b.new_tokens, "seconds": secs,
                       "generated_tokens": eng_gen, "tokens_per_second": eng_gen as f64 / secs,
                       "prefill_and_first_token_seconds": secs_first,
                       "decode_steps_tokens_per_second": steps_per_second}),
            );
        }
        out["decode"] = serde_json::Value::Object(dec);
    }

    if !b.skip.iter().any(|s| s == "gemm") {
        // The machine's matmul peak as the model reaches it: a prefill-shaped f32 GEMM through
        // the product the linear layers use (the BLAS when one is loaded), and candle's own.
        let (m, k, n) = (2048usize, 1024usize, 3072usize);
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu)?;
        let flops = 2.0 * (m * k * n) as f64;
        let secs = best_of(b.reps.max(3), || Ok(gramrr_model::ops::linear(&x, &w).map(|_| ())?))?;
        let candle_secs = best_of(b.reps.max(3), || Ok(x.matmul(&w.t()?).map(|_| ())?))?;
        let gf = flops / secs / 1e9;
        out["gemm"] = json!({"m": m, "k": k, "n": n, "gflops_per_second": gf, "via": gramrr_model::blas::describe(),
                             "candle_gflops_per_second": flops / candle_secs / 1e9});
        if let Some(s) = out.get("score").and_then(|s| s.get("gflops_per_second")).and_then(|g| g.as_f64()) {
            out["score"]["fraction_of_gemm_peak"] = json!(s / gf);
        }
    }
    if !b.skip.iter().any(|s| s == "gemm-bf16") {
        out["gemm_bf16"] = bench_bf16_gemm(&cfg, b.score_len, b.reps)?;
    }
    let text = serde_json::to_string_pretty(&out)?;
    println!("{text}");
    if let Some(p) = &b.output {
        std::fs::write(p, text + "\n").with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// Write a model as one GGUF file for llama.cpp, Ollama and LM Studio.
///
/// Matrices are quantized to the chosen type (1-D tensors stay f32); a matrix whose rows do
/// not fit the type's block (256 values for Q4_K, 32 for Q8_0) gets the next finer type, as
/// llama.cpp's quantizer does. Llama's q/k rows are permuted for llama.cpp's RoPE, and the
/// tokenizer (byte-level BPE), chat template and special tokens go into the metadata.
/// Quantize merged models after training (`gramrr merge-lora` first), not during it.
///
/// Example: gramrr export-gguf --model runs/rm/final --out rm.q8_0.gguf --type q8_0
#[derive(Args)]
pub struct ExportGgufArgs {
    /// Model directory (HF layout), `org/name` in the HF cache, or a .gguf file to rewrite.
    #[arg(long)]
    model: String,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
    /// Tensor type: f16, q8_0 (8 bits, near-lossless) or q4_k (4.5 bits; Q6_K for the
    /// embedding/output matrix).
    #[arg(long = "type", default_value = "q8_0")]
    ty: gramrr_model::gguf::ExportType,
    /// `general.name` in the file (default: the model's directory or file name).
    #[arg(long)]
    name: Option<String>,
}

pub fn export_gguf(a: ExportGgufArgs) -> Result<()> {
    let opts = LoadOptions { dequantize: true, ..Default::default() };
    let engine = Engine::load(&a.model, &opts).with_context(|| format!("loading model {}", a.model))?;
    let name = a.name.clone().unwrap_or_else(|| {
        std::path::Path::new(&a.model).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| a.model.clone())
    });
    let report = gramrr_model::gguf::export(&engine.model, &engine.tokenizer, &name, &a.out, a.ty)
        .with_context(|| format!("writing {}", a.out.display()))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
