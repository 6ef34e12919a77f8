//! The candle engine: a loaded [`Decoder`] plus its tokenizer, implementing [`Backend`].
//!
//! Scoring and label probabilities pad on the right (a causal mask is then enough: real tokens
//! never see padding). Generation pads on the left, so every row's next token is at the same
//! column, with per-row rotary positions and a key-padding mask, as transformers does.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::backend::*;
use crate::config::DecoderConfig;
use crate::error::{ModelError, Result};
use crate::ops::exp_f32;
use crate::model::{attention_mask, Decoder, ForwardCtx, ForwardInput, KvCache};
use crate::sampling::{item_rng, sample_token};
use crate::tokenizer::TextTokenizer;
use crate::weights::{SafetensorsCheckpoint, WeightDType};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            s if s.starts_with("cuda:") => {
                s[5..].parse().map(DeviceChoice::Cuda).map_err(|_| format!("bad device {s:?}"))
            }
            other => Err(format!("unknown device {other:?} (expected cpu, cuda or cuda:N)")),
        }
    }
}

impl DeviceChoice {
    pub fn device(self) -> Result<Device> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(i) => {
                if !cfg!(feature = "cuda") {
                    return Err(ModelError::Device(
                        "this gramrr was built without CUDA; rebuild with `--features cuda`".into(),
                    ));
                }
                Device::new_cuda(i).map_err(|e| ModelError::Device(e.to_string()))
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: DeviceChoice,
    pub dtype: WeightDType,
    /// Most sequences per forward pass.
    pub batch_size: usize,
    /// Most (padded) tokens per forward pass; bounds activation memory.
    pub max_batch_tokens: usize,
    /// Batches run concurrently on this many CPU threads, each with a one-thread kernel pool.
    /// Pays for small models, whose matrices are too small for a threaded GEMM; 1 leaves the
    /// threading to the kernels. Outputs do not depend on it (per-item seeds).
    pub workers: usize,
    /// GGUF only: dequantize the weights to f32 at load instead of computing on them
    /// quantized (exact f32 arithmetic on the dequantized values, more memory, slower decoding).
    pub dequantize: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { device: DeviceChoice::Cpu, dtype: WeightDType::F32, batch_size: 8, max_batch_tokens: 8192, workers: 1, dequantize: false }
    }
}

/// What `generation_config.json` contributes: stop tokens (an id or a list) and padding.
#[derive(Debug, Clone, Default)]
pub struct GenerationConfig {
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

impl GenerationConfig {
    pub fn from_dir(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join("generation_config.json");
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Json { path: path.clone(), source: e })?;
        let ids = |v: Option<&serde_json::Value>| -> Vec<u32> {
            match v {
                Some(serde_json::Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
                Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect(),
                _ => vec![],
            }
        };
        Ok(Some(Self {
            eos_token_ids: ids(v.get("eos_token_id")),
            pad_token_id: ids(v.get("pad_token_id")).first().copied(),
        }))
    }
}

/// One scored position of a sequence: its token, that token's log-probability, and the most
/// likely tokens there with theirs.
#[derive(Debug, Clone, PartialEq)]
pub struct PositionLogprobs {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// Runs `f` on a thread of rayon's global pool, the pool the kernels thread on.
///
/// A parallel kernel called from outside the pool hands its work over and sleeps on a lock
/// until a worker has done it: a futex wake-up and a sleep for every matmul. Decoding makes
/// some two hundred such calls per token (7 per layer), and on the 2-core EPYC that hand-over
/// was a third of a decoding step's time (perf: `LockLatch::wait_and_reset`, `try_to_wake_up`,
/// `sched_yield`). Called from a worker, the same kernels split their work by stealing, and
/// the caller's thread does its share instead of waiting; the hand-over is paid once per batch.
pub fn on_rayon_worker<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    rayon::scope(|_| f())
}

pub struct Engine {
    pub model: Decoder,
    pub tokenizer: TextTokenizer,
    pub generation: GenerationConfig,
    pub dir: PathBuf,
    pub batch_size: usize,
    pub max_batch_tokens: usize,
    /// One single-threaded pool per data-parallel worker (empty: run on the caller's pools).
    workers: Vec<rayon::ThreadPool>,
}

impl Engine {
    /// Loads a model from a directory, an `org/name` in the offline HF cache, or a `.gguf` file
    /// (config, tokenizer and chat template from its metadata; weights kept quantized unless
    /// `opts.dequantize`).
    pub fn load(model: &str, opts: &LoadOptions) -> Result<Self> {
        if crate::gguf::is_gguf_path(model) {
            let path = PathBuf::from(model);
            let device = opts.device.device()?;
            let (_cfg, tokenizer, decoder) = crate::gguf::load(&path, &device, opts.dequantize)?;
            return Self::from_parts(decoder, tokenizer, path, opts);
        }
        let dir = crate::hub::resolve_model_dir(model)?;
        let device = opts.device.device()?;
        let cfg = DecoderConfig::from_file(&dir.join("config.json"))?;
        let tokenizer = TextTokenizer::from_dir(&dir)?;
        let ck = SafetensorsCheckpoint::open(&dir, &device, opts.dtype)?;
        let decoder = Decoder::load(&cfg, &ck)?;
        drop(ck);
        Self::from_parts(decoder, tokenizer, dir, opts)
    }

    pub fn from_parts(model: Decoder, tokenizer: TextTokenizer, dir: PathBuf, opts: &LoadOptions) -> Result<Self> {
        let mut generation =
            if dir.is_dir() { GenerationConfig::from_dir(&dir)?.unwrap_or_default() } else { GenerationConfig::default() };
        // Stop at every end token anyone declares: generation_config, config.json, tokenizer.
        for id in model.cfg.eos_token_ids.iter().chain(tokenizer.eos_token_id.iter()) {
            if !generation.eos_token_ids.contains(id) {
                generation.eos_token_ids.push(*id);
            }
        }
        if generation.pad_token_id.is_none() {
            generation.pad_token_id = model.cfg.pad_token_id.or(tokenizer.pad_token_id);
        }
        Ok(Self {
            model,
            tokenizer,
            generation,
            dir,
            batch_size: opts.batch_size.max(1),
            max_batch_tokens: opts.max_batch_tokens.max(1),
            workers: crate::worker_pools(opts.workers)
                .map_err(|e| ModelError::Input(format!("cannot start {} engine workers: {e}", opts.workers)))?,
        })
    }

    pub fn device(&self) -> &Device {
        self.model.device()
    }

    fn pad_id(&self) -> u32 {
        self.generation.pad_token_id.or(self.generation.eos_token_ids.first().copied()).unwrap_or(0)
    }

    /// Token ids of a prompt: raw text with special tokens, or a chat rendered with the
    /// generation prompt and encoded without them (the template writes them itself).
    pub fn encode_prompt(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        match prompt {
            Prompt::Raw(t) => self.tokenizer.encode(t, true),
            Prompt::Chat(m) => {
                let text = self.tokenizer.apply_chat_template(m, true, &Default::default())?;
                self.tokenizer.encode(&text, false)
            }
        }
    }

    pub fn render_prompt(&self, prompt: &Prompt) -> Result<String> {
        match prompt {
            Prompt::Raw(t) => Ok(t.clone()),
            Prompt::Chat(m) => self.tokenizer.apply_chat_template(m, true, &Default::default()),
        }
    }

    /// Groups item indices (sorted by length, longest first) into batches bounded by
    /// `batch_size` rows and `max_batch_tokens` padded tokens.
    fn batches(&self, lens: &[usize]) -> Vec<Vec<usize>> {
        // With workers, at least one batch each, so none sits idle.
        let rows = match self.workers.len() {
            0 | 1 => self.batch_size,
            w => self.batch_size.min(lens.len().div_ceil(w)).max(1),
        };
        let mut order: Vec<usize> = (0..lens.len()).collect();
        order.sort_by(|&a, &b| lens[b].cmp(&lens[a]).then(a.cmp(&b)));
        let mut out: Vec<Vec<usize>> = Vec::new();
        let mut cur: Vec<usize> = Vec::new();
        let mut cur_max = 0;
        for i in order {
            let max = cur_max.max(lens[i]);
            if !cur.is_empty() && (cur.len() >= rows || max * (cur.len() + 1) > self.max_batch_tokens) {
                out.push(std::mem::take(&mut cur));
                cur_max = 0;
            }
            cur_max = cur_max.max(lens[i]);
            cur.push(i);
        }
        if !cur.is_empty() {
            out.push(cur);
        }
        out
    }

    /// Runs `f` on every batch of items with these lengths and returns each item's result.
    /// With workers, batches are dealt round-robin to them and run concurrently.
    fn map_batches<T: Send>(&self, lens: &[usize], f: impl Fn(&[usize]) -> Result<Vec<T>> + Sync) -> Result<Vec<T>> {
        let batches = self.batches(lens);
        let mut out: Vec<Option<T>> = std::iter::repeat_with(|| None).take(lens.len()).collect();
        let mut place = |batch: &[usize], results: Vec<T>| {
            for (&i, r) in batch.iter().zip(results) {
                out[i] = Some(r);
            }
        };
        if self.workers.len() < 2 || batches.len() < 2 {
            for b in &batches {
                place(b, on_rayon_worker(|| f(b))?);
            }
        } else {
            let n = self.workers.len();
            let done: Vec<Result<Vec<(usize, Vec<T>)>>> = std::thread::scope(|s| {
                let handles: Vec<_> = self
                    .workers
                    .iter()
                    .enumerate()
                    .map(|(w, pool)| {
                        let (f, batches) = (&f, &batches);
                        s.spawn(move || {
                            pool.install(|| {
                                (w..batches.len()).step_by(n).map(|k| Ok((k, f(&batches[k])?))).collect::<Result<Vec<_>>>()
                            })
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().expect("an engine worker panicked")).collect()
            });
            for r in done {
                for (k, results) in r? {
                    place(&batches[k], results);
                }
            }
        }
        Ok(out.into_iter().map(|o| o.expect("every item is in one batch")).collect())
    }

    /// Hidden states of right-padded sequences: (B·T, C) with T the longest length.
    fn hidden_right_padded(&self, seqs: &[&[u32]]) -> Result<(Tensor, usize)> {
        let t = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        let pad = self.pad_id();
        let ids: Vec<Vec<u32>> = seqs
            .iter()
            .map(|s| s.iter().copied().chain(std::iter::repeat_n(pad, t - s.len())).collect())
            .collect();
        let positions: Vec<Vec<u32>> = seqs.iter().map(|_| (0..t as u32).collect()).collect();
        let input = ForwardInput { ids: &ids, positions: &positions, mask: None, doc_starts: None, left_padding: None };
        let h = self.model.forward_hidden(&input, None, &mut ForwardCtx::inference())?;
        Ok((h, t))
    }

    /// Natural-log probabilities of `targets[i]` under the logits at hidden rows `rows[i]`.
    fn target_logprobs(&self, hidden: &Tensor, rows: &[u32], targets: &[u32]) -> Result<Vec<f32>> {
        self.map_logit_rows(hidden, rows, targets, |row, tok| row[tok as usize] - log_sum_exp(row))
    }

    /// `f(logits, target)` for the full-vocabulary logits at each hidden row `rows[i]`, computed
    /// a chunk of rows at a time so that they never all coexist (256 rows of a 49k vocabulary
    /// are 50 MB), and read in place.
    fn map_logit_rows<T: Send>(&self, hidden: &Tensor, rows: &[u32], targets: &[u32], f: impl Fn(&[f32], u32) -> T + Sync) -> Result<Vec<T>> {
        const CHUNK: usize = 256;
        let mut out = Vec::with_capacity(rows.len());
        for (r, t) in rows.chunks(CHUNK).zip(targets.chunks(CHUNK)) {
            let idx = Tensor::from_vec(r.to_vec(), r.len(), self.device())?;
            let logits = self.model.logits(&hidden.index_select(&idx, 0)?)?.contiguous()?; // (n, V)
            let v = logits.dims()[1];
            let part: Vec<T> = cpu_values(&logits, |flat| flat.par_chunks(v).zip(t.par_iter()).map(|(row, &tok)| f(row, tok)).collect())?;
            out.extend(part);
        }
        Ok(out)
    }

    /// Teacher-forced log-probabilities of `completion` ids after `prompt` ids.
    pub fn score_ids(&self, items: &[(Vec<u32>, Vec<u32>)]) -> Result<Vec<ScoreOutput>> {
        for (i, (p, _)) in items.iter().enumerate() {
            if p.is_empty() {
                return Err(ModelError::Input(format!(
                    "item {i}: the prompt encodes to zero tokens, so the first completion token has no context"
                )));
            }
        }
        let lens: Vec<usize> = items.iter().map(|(p, c)| p.len() + c.len()).collect();
        self.map_batches(&lens, |batch| {
            let seqs: Vec<Vec<u32>> =
                batch.iter().map(|&i| items[i].0.iter().chain(items[i].1.iter()).copied().collect()).collect();
            let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
            let (hidden, t) = self.hidden_right_padded(&refs)?;
            let mut rows = Vec::new();
            let mut targets = Vec::new();
            for (r, &i) in batch.iter().enumerate() {
                let (p, c) = &items[i];
                for (j, &tok) in c.iter().enumerate() {
                    rows.push((r * t + p.len() + j - 1) as u32);
                    targets.push(tok);
                }
            }
            let lp = if rows.is_empty() { vec![] } else { self.target_logprobs(&hidden, &rows, &targets)? };
            let mut k = 0;
            Ok(batch
                .iter()
                .map(|&i| {
                    let (p, c) = &items[i];
                    let token_logprobs = lp[k..k + c.len()].to_vec();
                    k += c.len();
                    ScoreOutput {
                        prompt_tokens: p.len(),
                        completion_tokens: c.len(),
                        logprob: token_logprobs.iter().map(|&x| x as f64).sum(),
                        token_logprobs,
                    }
                })
                .collect())
        })
    }

    /// For each `(sequence, from)`: the log-probability of every token at positions `from..len`
    /// given everything before it, with the `top` most likely tokens at each of those positions
    /// (most likely first). This is what an OpenAI-style `echo` + `logprobs` answer needs.
    pub fn sequence_logprobs(&self, items: &[(Vec<u32>, usize)], top: usize) -> Result<Vec<Vec<PositionLogprobs>>> {
        for (i, (s, from)) in items.iter().enumerate() {
            if *from == 0 || *from > s.len() {
                return Err(ModelError::Input(format!(
                    "item {i}: scored positions start at {from}, outside 1..={} (the first token has no context)",
                    s.len()
                )));
            }
        }
        let lens: Vec<usize> = items.iter().map(|(s, _)| s.len()).collect();
        self.map_batches(&lens, |batch| {
            let refs: Vec<&[u32]> = batch.iter().map(|&i| items[i].0.as_slice()).collect();
            let (hidden, t) = self.hidden_right_padded(&refs)?;
            let mut rows = Vec::new();
            let mut targets = Vec::new();
            for (r, &i) in batch.iter().enumerate() {
                let (s, from) = &items[i];
                for (p, &tok) in s.iter().enumerate().skip(*from) {
                    rows.push((r * t + p - 1) as u32);
                    targets.push(tok);
                }
            }
            // Full rows are needed for the top tokens.
            let flat_out = self.map_logit_rows(&hidden, &rows, &targets, |row, tok| {
                let lse = log_sum_exp(row);
                let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
                if top > 0 {
                    for (id, &x) in row.iter().enumerate() {
                        if best.len() < top || x > best[best.len() - 1].1 {
                            let at = best.partition_point(|&(_, y)| y >= x);
                            best.insert(at, (id as u32, x));
                            best.truncate(top);
                        }
                    }
                }
                PositionLogprobs { token: tok, logprob: row[tok as usize] - lse, top: best.into_iter().map(|(id, x)| (id, x - lse)).collect() }
            })?;
            let mut it = flat_out.into_iter();
            Ok(batch.iter().map(|&i| it.by_ref().take(items[i].0.len() - items[i].1).collect()).collect())
        })
    }

    /// Full-vocabulary log-probabilities of each `candidates` id as the next token after each
    /// sequence.
    pub fn next_token_logprobs(&self, seqs: &[Vec<u32>], candidates: &[u32]) -> Result<Vec<Vec<f32>>> {
        let lens: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
        if let Some(i) = lens.iter().position(|&l| l == 0) {
            return Err(ModelError::Input(format!("item {i}: empty prompt")));
        }
        self.map_batches(&lens, |batch| {
            let refs: Vec<&[u32]> = batch.iter().map(|&i| seqs[i].as_slice()).collect();
            let (hidden, t) = self.hidden_right_padded(&refs)?;
            let rows: Vec<u32> = batch.iter().enumerate().map(|(r, &i)| (r * t + seqs[i].len() - 1) as u32).collect();
            let idx = Tensor::from_vec(rows, batch.len(), self.device())?;
            let logits = self.model.logits(&hidden.index_select(&idx, 0)?)?;
            let v = logits.dims()[1];
            let flat = logits.flatten_all()?.to_vec1::<f32>()?;
            Ok((0..batch.len())
                .map(|r| {
                    let row = &flat[r * v..(r + 1) * v];
                    let lse = log_sum_exp(row);
                    candidates.iter().map(|&c| row[c as usize] - lse).collect()
                })
                .collect())
        })
    }

    /// Batched generation from prompt ids. Output `i` answers `prompts[i]`.
    pub fn generate_ids(
        &self,
        prompts: &[Vec<u32>],
        seed_offsets: &[u64],
        params: &SamplingParams,
    ) -> Result<Vec<GenerateOutput>> {
        if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
            return Err(ModelError::Input(format!("item {i}: empty prompt")));
        }
        let lens: Vec<usize> = prompts.iter().map(|p| p.len() + params.max_new_tokens).collect();
        self.map_batches(&lens, |batch| {
            let rows: Vec<&[u32]> = batch.iter().map(|&i| prompts[i].as_slice()).collect();
            let offs: Vec<u64> = batch.iter().map(|&i| seed_offsets.get(i).copied().unwrap_or(i as u64)).collect();
            self.generate_batch(&rows, &offs, params)
        })
    }

    fn generate_batch(&self, prompts: &[&[u32]], seed_offsets: &[u64], params: &SamplingParams) -> Result<Vec<GenerateOutput>> {
        let dev = self.device();
        let b = prompts.len();
        let t = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
        let pad = self.pad_id();
        let mut cache = KvCache::new(&self.model.cfg, b, t + params.max_new_tokens, dev)?;
        let mut key_valid: Vec<Vec<bool>> = Vec::with_capacity(b);
        let mut ids = Vec::with_capacity(b);
        let mut positions = Vec::with_capacity(b);
        for p in prompts {
            let n_pad = t - p.len();
            ids.push(std::iter::repeat_n(pad, n_pad).chain(p.iter().copied()).collect::<Vec<u32>>());
            // transformers gives padding position 1 (cumsum - 1, masked_fill 1); it is never read.
            positions.push(std::iter::repeat_n(1u32, n_pad).chain(0..p.len() as u32).collect::<Vec<u32>>());
            key_valid.push(std::iter::repeat_n(false, n_pad).chain(std::iter::repeat_n(true, p.len())).collect());
        }
        let left_padding: Vec<u32> = prompts.iter().map(|p| (t - p.len()) as u32).collect();
        let mut rngs: Vec<_> = seed_offsets.iter().map(|&o| item_rng(params.seed, o)).collect();
        let mut generated: Vec<Vec<u32>> = vec![Vec::new(); b];
        let mut finished: Vec<Option<FinishReason>> = vec![None; b];
        let mut texts: Vec<Option<String>> = vec![None; b];
        let mut next_pos: Vec<u32> = prompts.iter().map(|p| p.len() as u32).collect();

        let mut step_ids = ids;
        let mut step_pos = positions;
        let mut cur_t = t;
        let mut ctx = ForwardCtx::inference();
        for _step in 0..params.max_new_tokens {
            let offset = cache.len;
            let mask = attention_mask(&key_valid, cur_t, offset, dev)?;
            let input = ForwardInput { ids: &step_ids, positions: &step_pos, mask: Some(&mask), doc_starts: None, left_padding: Some(&left_padding) };
            let hidden = self.model.forward_hidden(&input, Some(&mut cache), &mut ctx)?; // (B·T, C)
            let last: Vec<u32> = (0..b).map(|r| (r * cur_t + cur_t - 1) as u32).collect();
            let idx = Tensor::from_vec(last, b, dev)?;
            let logits = self.model.logits(&hidden.index_select(&idx, 0)?)?;
            let v = logits.dims()[1];
            let flat = logits.flatten_all()?.to_vec1::<f32>()?;
            let mut next = vec![pad; b];
            for r in 0..b {
                if finished[r].is_some() {
                    continue;
                }
                let tok = sample_token(&flat[r * v..(r + 1) * v], params, &mut rngs[r]);
                generated[r].push(tok);
                next[r] = tok;
                if !params.ignore_eos && self.generation.eos_token_ids.contains(&tok) {
                    finished[r] = Some(FinishReason::Stop);
                } else if !params.stop.is_empty() {
                    let text = self.tokenizer.decode(&generated[r], true)?;
                    if let Some(cut) = params.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                        texts[r] = Some(text[..cut].to_string());
                        finished[r] = Some(FinishReason::Stop);
                    }
                }
            }
            if finished.iter().all(|f| f.is_some()) {
                break;
            }
            for r in 0..b {
                key_valid[r].push(true);
            }
            step_ids = next.into_iter().map(|x| vec![x]).collect();
            step_pos = next_pos.iter().map(|&p| vec![p]).collect();
            next_pos.iter_mut().for_each(|p| *p += 1);
            cur_t = 1;
        }
        let mut out = Vec::with_capacity(b);
        for r in 0..b {
            let text = match texts[r].take() {
                Some(t) => t,
                None => self.tokenizer.decode(&generated[r], true)?,
            };
            out.push(GenerateOutput {
                text,
                token_ids: std::mem::take(&mut generated[r]),
                finish_reason: finished[r].unwrap_or(FinishReason::Length),
                prompt_tokens: prompts[r].len(),
            });
        }
        Ok(out)
    }

    /// The single token id a label string encodes to (without special tokens).
    pub fn label_token_id(&self, label: &str) -> std::result::Result<u32, BackendError> {
        let ids = self.tokenizer.encode(label, false)?;
        if ids.len() != 1 {
            return Err(BackendError::LabelNotOneToken { label: label.to_string(), n: ids.len() });
        }
        Ok(ids[0])
    }
}

/// `f` on a contiguous f32 tensor's values: borrowed in place on the CPU (a chunk of
/// full-vocabulary logits is 50 MB, and copying it out cost a scoring pass ~3%), copied from
/// other devices.
fn cpu_values<T>(t: &Tensor, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
    let (storage, layout) = t.storage_and_layout();
    if let (candle_core::Storage::Cpu(cpu), Some((a, b))) = (&*storage, layout.contiguous_offsets()) {
        return Ok(f(&cpu.as_slice::<f32>()?[a..b]));
    }
    drop(storage);
    Ok(f(&t.flatten_all()?.to_vec1::<f32>()?))
}

/// `ln Σ exp(row)`. Scoring calls it on every position's full-vocabulary logits (150k values
/// for Qwen3), where a scalar f64 `exp` per value was a tenth of the scoring time; here the
/// exponentials are a vectorisable f32 polynomial, summed in f32 over short blocks and in f64
/// across them, so the result stays within a few ulps of the f64 sum.
pub fn log_sum_exp(row: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F, the only feature the function is compiled for.
        return unsafe { log_sum_exp_avx512(row) };
    }
    log_sum_exp_portable(row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn log_sum_exp_avx512(row: &[f32]) -> f32 {
    log_sum_exp_portable(row)
}

#[inline(always)]
fn log_sum_exp_portable(row: &[f32]) -> f32 {
    const LANES: usize = 16;
    const BLOCK: usize = 16 * LANES;
    let mut max = [f32::NEG_INFINITY; LANES];
    let body = row.len() / LANES * LANES;
    for c in row[..body].chunks_exact(LANES) {
        for l in 0..LANES {
            max[l] = max[l].max(c[l]);
        }
    }
    let max = row[body..].iter().copied().fold(max.iter().copied().fold(f32::NEG_INFINITY, f32::max), f32::max);
    if !max.is_finite() {
        return max;
    }
    let mut total = 0f64;
    for block in row.chunks(BLOCK) {
        let mut acc = [0f32; LANES];
        let n = block.len() / LANES * LANES;
        for c in block[..n].chunks_exact(LANES) {
            for l in 0..LANES {
                acc[l] += exp_f32(c[l] - max);
            }
        }
        let tail: f32 = block[n..].iter().map(|&x| exp_f32(x - max)).sum();
        total += (acc.iter().sum::<f32>() + tail) as f64;
    }
    max + total.ln() as f32
}

impl Backend for Engine {
    fn name(&self) -> String {
        self.dir.display().to_string()
    }

    fn score(&self, requests: &[ScoreRequest]) -> BackendResult<Vec<ScoreOutput>> {
        let items = requests
            .iter()
            .map(|r| Ok((self.encode_prompt(&r.prompt)?, self.tokenizer.encode(&r.completion, false)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(self.score_ids(&items)?)
    }

    fn generate(&self, requests: &[GenerateRequest], params: &SamplingParams) -> BackendResult<Vec<GenerateOutput>> {
        let prompts = requests.iter().map(|r| self.encode_prompt(&r.prompt)).collect::<Result<Vec<_>>>()?;
        let offs: Vec<u64> = requests.iter().map(|r| r.seed_offset).collect();
        Ok(self.generate_ids(&prompts, &offs, params)?)
    }

    fn label_probs(&self, requests: &[LabelRequest], labels: &[String]) -> BackendResult<Vec<LabelOutput>> {
        let cand = labels.iter().map(|l| self.label_token_id(l)).collect::<std::result::Result<Vec<_>, _>>()?;
        let seqs = requests
            .iter()
            .map(|r| {
                let mut ids = self.encode_prompt(&r.prompt)?;
                ids.extend(self.tokenizer.encode(&r.continuation, false)?);
                Ok(ids)
            })
            .collect::<Result<Vec<_>>>()?;
        let lps = self.next_token_logprobs(&seqs, &cand)?;
        Ok(lps
            .into_iter()
            .map(LabelOutput::from_logprobs)
            .collect())
    }

    fn render(&self, prompt: &Prompt) -> BackendResult<String> {
        Ok(self.render_prompt(prompt)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(row: &[f32]) -> f64 {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln()
    }

    #[test]
    fn log_sum_exp_matches_float64_on_vocabulary_sized_rows() {
        // Logit-like rows (spread ±30, lengths off the 16-lane width), a row with one dominant
        // value, and values far below the maximum (exp underflow).
        let mut rows: Vec<Vec<f32>> = [151_936usize, 1, 17, 4099]
            .iter()
            .map(|&n| (0..n).map(|i| ((i * 2_654_435_761usize % 60_001) as f32 / 1000.0) - 30.0).collect())
            .collect();
        rows.push((0..1000).map(|i| if i == 500 { 50.0 } else { -60.0 }).collect());
        rows.push(vec![-200.0, 0.0, -100.0]);
        for r in &rows {
            let (got, want) = (log_sum_exp(r) as f64, reference(r));
            assert!((got - want).abs() < 2e-6 * (1.0 + want.abs()), "len {}: {got} vs {want}", r.len());
            assert_eq!(log_sum_exp(r), log_sum_exp_portable(r));
        }
        for x in [-87.5f32, -20.0, -1.0, -0.3, 0.0] {
            let rel = (exp_f32(x) as f64 - (x.max(-87.0) as f64).exp()).abs() / (x.max(-87.0) as f64).exp();
            assert!(rel < 3e-7, "exp({x}): relative error {rel}");
        }
        // Outside its domain it stays defined: NaN flushes like −∞, +∞ clamps.
        assert!(exp_f32(f32::NAN) < 1e-37 && exp_f32(f32::NEG_INFINITY) < 1e-37);
        assert_eq!(exp_f32(f32::INFINITY), exp_f32(88.0));
    }
}
