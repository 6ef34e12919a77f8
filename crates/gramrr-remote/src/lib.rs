//! gramrr-remote: the [`Backend`] trait over OpenAI-compatible `/v1/completions` servers (vLLM,
//! SGLang, llama.cpp's server, `gramrr serve`), across one or more replicas.
//!
//! The chat template and the label tokens come from the model's own tokenizer directory and are
//! applied here; the server receives **token-id arrays** as `prompt`, so the remote path scores
//! and continues exactly the token sequences the local engine would.
//!
//! - `generate`: one request per distinct prompt, its samples as `n` (where the server honours
//!   `n`), with `max_tokens`, `temperature`, `top_p`, `top_k`, `seed`, `stop`.
//! - `score`: the prompt and completion ids with `echo` + `logprobs` and `max_tokens: 1`, or
//!   vLLM's `prompt_logprobs` where echo gives none.
//! - `label_probs`: `max_tokens: 1` with the top log-probs of the next token; a label not among
//!   them is scored as a one-token continuation with echo, so its exact log-prob comes back.
//!
//! [`RemoteBackend::connect`] probes the servers first (`/models`, then tiny requests) and
//! refuses, naming the missing capability, a server that cannot give what [`Needs`] asks for.
//! Sampled generations are reproducible for a given server and batch but are not the local
//! engine's samples: each request's `seed` is derived from the run seed and the first sample's
//! `seed_offset`.

pub mod instant;
pub mod launch;
mod pool;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use gramrr_backend::{
    Backend, BackendError, BackendResult, FinishReason, GenerateOutput, GenerateRequest, LabelOutput, LabelRequest, Prompt,
    SamplingParams, ScoreOutput, ScoreRequest,
};
use gramrr_model::tokenizer::TextTokenizer;
use serde_json::{json, Value};

pub use pool::PoolConfig;
use pool::{Call, Pool};

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("remote model: {0}")]
    Config(String),
    #[error("tokenizer for the remote model: {0}")]
    Tokenizer(#[from] gramrr_model::ModelError),
    #[error("server {url}: {message}")]
    Probe { url: String, message: String },
    #[error("server {url} cannot be used: {capability} (needed {why})")]
    Missing { url: String, capability: &'static str, why: &'static str },
    #[error("{0}")]
    Request(String),
    #[error("server answer: {0}")]
    Answer(String),
}

impl From<RemoteError> for BackendError {
    fn from(e: RemoteError) -> Self {
        BackendError::Other(e.to_string())
    }
}

/// What the caller will ask of the server; the probe refuses a server that lacks any of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    pub generate: bool,
    pub score: bool,
    pub labels: bool,
}

impl Needs {
    pub const ALL: Needs = Needs { generate: true, score: true, labels: true };
    pub const GENERATE: Needs = Needs { generate: true, score: false, labels: false };
    pub const SCORE: Needs = Needs { generate: false, score: true, labels: false };
}

/// What the probe found the server to support.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Top log-probs per generated position it returns (0: none).
    pub top_logprobs: usize,
    /// Top log-prob keys are `"token_id:N"` (vLLM's `return_tokens_as_token_ids`).
    pub ids_as_keys: bool,
    /// `echo` with `logprobs` returns the prompt tokens' log-probs.
    pub echo_logprobs: bool,
    /// vLLM's `prompt_logprobs` returns them.
    pub prompt_logprobs: bool,
    /// One request returns `n` samples.
    pub multi_n: bool,
}

#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// Base URLs ending in `/v1`, one per replica.
    pub urls: Vec<String>,
    /// The model's tokenizer: a directory, or `org/name` in the local HF cache.
    pub tokenizer: String,
    /// The `model` to name in requests; `None` takes the first one `/v1/models` lists.
    pub served_model: Option<String>,
    pub needs: Needs,
    pub pool: PoolConfig,
}

impl RemoteConfig {
    pub fn new(urls: Vec<String>, tokenizer: impl Into<String>) -> Self {
        RemoteConfig { urls, tokenizer: tokenizer.into(), served_model: None, needs: Needs::ALL, pool: PoolConfig::default() }
    }
}

/// `true` for `http://…` and `https://…`: a `--model` that names a server, not a directory.
pub fn is_url(spec: &str) -> bool {
    spec.starts_with("http://") || spec.starts_with("https://")
}

/// Splits a comma-separated list of base URLs, dropping trailing slashes.
pub fn parse_urls(spec: &str) -> Result<Vec<String>, RemoteError> {
    let urls: Vec<String> = spec.split(',').map(|u| u.trim().trim_end_matches('/').to_string()).filter(|u| !u.is_empty()).collect();
    if urls.is_empty() {
        return Err(RemoteError::Config(format!("{spec:?} names no server URL")));
    }
    for u in &urls {
        if !is_url(u) {
            return Err(RemoteError::Config(format!("{u:?} is not an http:// or https:// URL")));
        }
        if u.starts_with("https://") && !cfg!(feature = "https") {
            return Err(RemoteError::Config(format!("{u}: this build has no TLS; rebuild with `--features gramrr-remote/https`")));
        }
    }
    Ok(urls)
}

pub struct RemoteBackend {
    pool: Arc<Pool>,
    tokenizer: TextTokenizer,
    model: String,
    pub capabilities: Capabilities,
}

fn hash_of<T: Hash>(x: &T) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    x.hash(&mut h);
    h.finish()
}

/// The replica-affinity key of a prompt: its tokens as a multiset, so the two orders of a pair
/// (the same texts swapped) and the k samples of one prompt share a key, and with it a replica
/// and its prefix cache.
fn affinity(ids: &[u32]) -> u64 {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    hash_of(&sorted)
}

/// splitmix64 of the run seed and an item's offset: the `seed` of one request.
fn request_seed(seed: u64, offset: u64) -> u64 {
    let mut z = seed ^ offset.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    // vLLM and llama.cpp read the seed as a signed 64- or 32-bit integer.
    (z ^ (z >> 31)) & 0x7FFF_FFFF
}

fn choices(v: &Value) -> Result<Vec<&Value>, RemoteError> {
    let mut c: Vec<&Value> = v
        .get("choices")
        .and_then(Value::as_array)
        .ok_or_else(|| RemoteError::Answer(format!("no `choices` list in {}", short(v))))?
        .iter()
        .collect();
    c.sort_by_key(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0));
    Ok(c)
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 300 {
        let mut end = 300;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    } else {
        s
    }
}

/// `choices[0].logprobs.token_logprobs` as numbers (`None` for nulls).
fn token_logprobs(v: &Value) -> Result<Vec<Option<f64>>, RemoteError> {
    let c = choices(v)?;
    let lp = c
        .first()
        .and_then(|c| c.get("logprobs"))
        .and_then(|l| l.get("token_logprobs"))
        .and_then(Value::as_array)
        .ok_or_else(|| RemoteError::Answer(format!("no `choices[0].logprobs.token_logprobs` in {}", short(v))))?;
    Ok(lp.iter().map(Value::as_f64).collect())
}

/// vLLM's `choices[0].prompt_logprobs`: per position null or `{"<id>": {"logprob": x, ...}}`.
fn prompt_logprobs(v: &Value, ids: &[u32]) -> Result<Vec<Option<f64>>, RemoteError> {
    let c = choices(v)?;
    let lp = c
        .first()
        .and_then(|c| c.get("prompt_logprobs"))
        .and_then(Value::as_array)
        .ok_or_else(|| RemoteError::Answer(format!("no `choices[0].prompt_logprobs` in {}", short(v))))?;
    Ok(lp
        .iter()
        .zip(ids)
        .map(|(p, id)| p.get(id.to_string()).and_then(|e| e.get("logprob").or(Some(e))).and_then(Value::as_f64))
        .collect())
}

impl RemoteBackend {
    /// Loads the tokenizer, finds the served model and probes each replica. Replicas that
    /// cannot be reached are reported and left out until they answer; a reachable replica
    /// that lacks a needed capability refuses the whole backend.
    pub fn connect(cfg: RemoteConfig) -> Result<Self, RemoteError> {
        if cfg.urls.is_empty() {
            return Err(RemoteError::Config("no server URL".into()));
        }
        let dir = gramrr_model::hub::resolve_model_dir(&cfg.tokenizer)?;
        let tokenizer = TextTokenizer::from_dir(&dir)?;
        let pool = Arc::new(Pool::new(cfg.urls.clone(), cfg.pool.clone()));
        let mut model = cfg.served_model.clone();
        let mut capabilities: Option<Capabilities> = None;
        let mut unreachable = vec![];
        for (r, url) in cfg.urls.iter().enumerate() {
            let listed = match pool.get_models(r) {
                Ok(v) => v,
                Err(e) => {
                    unreachable.push((r, e));
                    continue;
                }
            };
            let ids: Vec<String> = listed
                .get("data")
                .and_then(Value::as_array)
                .map(|d| d.iter().filter_map(|m| m.get("id").and_then(Value::as_str).map(str::to_string)).collect())
                .unwrap_or_default();
            match &model {
                Some(m) if !ids.contains(m) => {
                    return Err(RemoteError::Probe { url: url.clone(), message: format!("serves {ids:?}, not {m:?} (--served-model)") })
                }
                Some(_) => {}
                None => {
                    model = Some(ids.first().cloned().ok_or_else(|| RemoteError::Probe {
                        url: url.clone(),
                        message: "GET /models lists no model".into(),
                    })?)
                }
            }
            let caps = probe(&pool, r, model.as_deref().unwrap(), &tokenizer, cfg.needs)?;
            capabilities = Some(match capabilities {
                // Replicas are meant to be identical; use what all of them offer.
                Some(c) => Capabilities {
                    top_logprobs: c.top_logprobs.min(caps.top_logprobs),
                    ids_as_keys: c.ids_as_keys && caps.ids_as_keys,
                    echo_logprobs: c.echo_logprobs && caps.echo_logprobs,
                    prompt_logprobs: c.prompt_logprobs && caps.prompt_logprobs,
                    multi_n: c.multi_n && caps.multi_n,
                },
                None => caps,
            });
        }
        let Some(capabilities) = capabilities else {
            let why: Vec<String> = unreachable.iter().map(|(_, e)| e.clone()).collect();
            return Err(RemoteError::Config(format!("no server answered: {}", why.join("; "))));
        };
        for (r, e) in &unreachable {
            eprintln!("warning: replica {} does not answer ({e}); it is left out until it does", cfg.urls[*r]);
            pool.mark_down(*r);
        }
        Ok(RemoteBackend { pool, tokenizer, model: model.unwrap(), capabilities })
    }

    pub fn served_model(&self) -> &str {
        &self.model
    }

    pub fn urls(&self) -> &[String] {
        &self.pool.urls
    }

    /// Requests answered and retries made since the backend was created.
    pub fn counters(&self) -> (u64, u64) {
        (self.pool.requests_done.load(std::sync::atomic::Ordering::Relaxed), self.pool.retries_done.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// `requests/s, tokens/s, replicas up` since the first request: for progress bars.
    pub fn status_line(&self) -> String {
        self.pool.status_line()
    }

    /// The prompt's token ids, as the local engine encodes them.
    pub fn encode_prompt(&self, prompt: &Prompt) -> BackendResult<Vec<u32>> {
        Ok(match prompt {
            Prompt::Raw(t) => self.tokenizer.encode(t, true)?,
            Prompt::Chat(m) => {
                let text = self.tokenizer.apply_chat_template(m, true, &Default::default())?;
                self.tokenizer.encode(&text, false)?
            }
        })
    }

    fn label_id(&self, label: &str) -> BackendResult<u32> {
        let ids = self.tokenizer.encode(label, false)?;
        if ids.len() != 1 {
            return Err(BackendError::LabelNotOneToken { label: label.to_string(), n: ids.len() });
        }
        Ok(ids[0])
    }

    /// The teacher-forced body for `ids`, whose log-probs from position 1 on come back.
    fn scoring_body(&self, ids: &[u32]) -> Value {
        if self.capabilities.echo_logprobs {
            json!({"model": self.model, "prompt": ids, "max_tokens": 1, "temperature": 0.0, "echo": true, "logprobs": 1})
        } else {
            json!({"model": self.model, "prompt": ids, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0})
        }
    }

    /// Log-probs of `ids[1..]` from an answer to [`Self::scoring_body`].
    fn scored(&self, v: &Value, ids: &[u32]) -> Result<Vec<Option<f64>>, RemoteError> {
        let lp = if self.capabilities.echo_logprobs { token_logprobs(v)? } else { prompt_logprobs(v, ids)? };
        if lp.len() < ids.len() {
            return Err(RemoteError::Answer(format!(
                "the server returned {} prompt log-probs for a {}-token prompt (it did not echo the token-id prompt)",
                lp.len(),
                ids.len()
            )));
        }
        Ok(lp[..ids.len()].to_vec())
    }
}

/// The capability probe of one replica: tiny requests that show what it answers.
fn probe(pool: &Pool, r: usize, model: &str, tok: &TextTokenizer, needs: Needs) -> Result<Capabilities, RemoteError> {
    let url = &pool.urls[r];
    let ids = tok.encode("Hello, world. The answer is", true)?;
    let mut caps = Capabilities::default();
    // Completions from token ids: everything else builds on it.
    let v = pool
        .post_once(r, "/completions", &json!({"model": model, "prompt": ids, "max_tokens": 1, "temperature": 0.0}))
        .map_err(|m| RemoteError::Probe { url: url.clone(), message: format!("a completion from a token-id prompt failed (needed for every request): {m}") })?;
    choices(&v)?.first().and_then(|c| c.get("text")).and_then(Value::as_str).ok_or_else(|| RemoteError::Answer(format!("no choices[0].text in {}", short(&v))))?;
    // Several samples per request.
    if let Ok(v) = pool.post_once(r, "/completions", &json!({"model": model, "prompt": ids, "max_tokens": 1, "temperature": 1.0, "n": 2, "seed": 1})) {
        caps.multi_n = choices(&v).map(|c| c.len() == 2).unwrap_or(false);
    }
    // Top log-probs of the next token: 20 (vLLM's default ceiling), else OpenAI's 5.
    for k in [20usize, 5] {
        let body = json!({"model": model, "prompt": ids, "max_tokens": 1, "temperature": 0.0, "logprobs": k, "return_tokens_as_token_ids": true});
        if let Ok(v) = pool.post_once(r, "/completions", &body) {
            let top = choices(&v).ok().and_then(|c| c.first().and_then(|c| c.get("logprobs")).and_then(|l| l.get("top_logprobs")).and_then(|t| t.get(0)).and_then(Value::as_object).cloned());
            if let Some(top) = top.filter(|t| !t.is_empty()) {
                caps.top_logprobs = top.len().min(k);
                caps.ids_as_keys = top.keys().all(|k| k.starts_with("token_id:"));
                break;
            }
        }
    }
    // Prompt log-probs: echo, else vLLM's prompt_logprobs.
    let echo = json!({"model": model, "prompt": ids, "max_tokens": 1, "temperature": 0.0, "echo": true, "logprobs": 1});
    if let Ok(v) = pool.post_once(r, "/completions", &echo) {
        caps.echo_logprobs = token_logprobs(&v).map(|lp| lp.len() > ids.len() && lp[1..ids.len()].iter().all(Option::is_some)).unwrap_or(false);
    }
    if !caps.echo_logprobs {
        let body = json!({"model": model, "prompt": ids, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0});
        if let Ok(v) = pool.post_once(r, "/completions", &body) {
            caps.prompt_logprobs = prompt_logprobs(&v, &ids).map(|lp| lp.len() >= ids.len() && lp[1..].iter().all(Option::is_some)).unwrap_or(false);
        }
    }
    let can_score = caps.echo_logprobs || caps.prompt_logprobs;
    if needs.score && !can_score {
        return Err(RemoteError::Missing {
            url: url.clone(),
            capability: "no prompt log-probs (neither `echo` with `logprobs` nor vLLM's `prompt_logprobs` returned them)",
            why: "to score completions",
        });
    }
    if needs.labels && !can_score && caps.top_logprobs == 0 {
        return Err(RemoteError::Missing {
            url: url.clone(),
            capability: "no log-probs at all (neither top `logprobs` of a generated token nor prompt log-probs)",
            why: "for label probabilities",
        });
    }
    let _ = needs.generate;
    Ok(caps)
}

impl Backend for RemoteBackend {
    fn name(&self) -> String {
        format!("{} at {}", self.model, self.pool.urls.join(","))
    }

    fn render(&self, prompt: &Prompt) -> BackendResult<String> {
        Ok(match prompt {
            Prompt::Raw(t) => t.clone(),
            Prompt::Chat(m) => self.tokenizer.apply_chat_template(m, true, &Default::default())?,
        })
    }

    fn score(&self, requests: &[ScoreRequest]) -> BackendResult<Vec<ScoreOutput>> {
        let mut items = Vec::with_capacity(requests.len());
        for (i, r) in requests.iter().enumerate() {
            let p = self.encode_prompt(&r.prompt)?;
            if p.is_empty() {
                return Err(BackendError::Other(format!("item {i}: the prompt encodes to zero tokens")));
            }
            let c = self.tokenizer.encode(&r.completion, false)?;
            items.push((p, c));
        }
        let todo: Vec<usize> = (0..items.len()).filter(|&i| !items[i].1.is_empty()).collect();
        let calls = todo
            .iter()
            .map(|&i| {
                let (p, c) = &items[i];
                let ids: Vec<u32> = p.iter().chain(c).copied().collect();
                Call { affinity: affinity(p), body: self.scoring_body(&ids) }
            })
            .collect();
        let answers = self.pool.run("/completions", calls, "score")?;
        let mut out: Vec<ScoreOutput> = items
            .iter()
            .map(|(p, _)| ScoreOutput { prompt_tokens: p.len(), completion_tokens: 0, token_logprobs: vec![], logprob: 0.0 })
            .collect();
        for (&i, v) in todo.iter().zip(&answers) {
            let (p, c) = &items[i];
            let ids: Vec<u32> = p.iter().chain(c).copied().collect();
            let lp = self.scored(v, &ids)?;
            let token_logprobs = lp[p.len()..]
                .iter()
                .enumerate()
                .map(|(j, x)| x.map(|x| x as f32).ok_or_else(|| RemoteError::Answer(format!("item {i}: completion token {j} has no log-prob"))))
                .collect::<Result<Vec<f32>, _>>()?;
            out[i] = ScoreOutput {
                prompt_tokens: p.len(),
                completion_tokens: c.len(),
                logprob: token_logprobs.iter().map(|&x| x as f64).sum(),
                token_logprobs,
            };
        }
        Ok(out)
    }

    fn generate(&self, requests: &[GenerateRequest], params: &SamplingParams) -> BackendResult<Vec<GenerateOutput>> {
        let prompts = requests.iter().map(|r| self.encode_prompt(&r.prompt)).collect::<BackendResult<Vec<_>>>()?;
        if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
            return Err(BackendError::Other(format!("item {i}: empty prompt")));
        }
        // One request per distinct prompt, its samples in seed-offset order as `n` (greedy
        // decoding gives one answer for all of them).
        let mut groups: Vec<Vec<usize>> = vec![];
        let mut by_prompt: HashMap<&[u32], usize> = HashMap::new();
        for (i, p) in prompts.iter().enumerate() {
            if self.capabilities.multi_n || params.temperature == 0.0 {
                if let Some(&g) = by_prompt.get(p.as_slice()) {
                    groups[g].push(i);
                    continue;
                }
                by_prompt.insert(p.as_slice(), groups.len());
            }
            groups.push(vec![i]);
        }
        let greedy = params.temperature == 0.0;
        for g in &mut groups {
            g.sort_by_key(|&i| (requests[i].seed_offset, i));
        }
        let calls = groups
            .iter()
            .map(|g| {
                let p = &prompts[g[0]];
                let n = if greedy { 1 } else { g.len() };
                let mut body = json!({
                    "model": self.model, "prompt": p, "max_tokens": params.max_new_tokens,
                    "temperature": params.temperature, "top_p": params.top_p, "n": n,
                    "seed": request_seed(params.seed, requests[g[0]].seed_offset), "return_token_ids": true,
                });
                if params.top_k > 0 {
                    body["top_k"] = json!(params.top_k);
                }
                if !params.stop.is_empty() {
                    body["stop"] = json!(params.stop);
                }
                if params.ignore_eos {
                    body["ignore_eos"] = json!(true);
                }
                Call { affinity: affinity(p), body }
            })
            .collect();
        let answers = self.pool.run("/completions", calls, "generate")?;
        let mut out: Vec<Option<GenerateOutput>> = vec![None; requests.len()];
        for (g, v) in groups.iter().zip(&answers) {
            let cs = choices(v)?;
            let want = if greedy { 1 } else { g.len() };
            if cs.len() != want {
                return Err(RemoteError::Answer(format!("asked for {want} samples, the server returned {}", cs.len())).into());
            }
            for (k, &i) in g.iter().enumerate() {
                let c = cs[if greedy { 0 } else { k }];
                let text = c.get("text").and_then(Value::as_str).ok_or_else(|| RemoteError::Answer(format!("no choices[{k}].text in {}", short(v))))?;
                let token_ids = match c.get("token_ids").and_then(Value::as_array) {
                    Some(a) => a.iter().filter_map(|x| x.as_u64().map(|x| x as u32)).collect(),
                    None => self.tokenizer.encode(text, false)?,
                };
                let finish_reason = match c.get("finish_reason").and_then(Value::as_str) {
                    Some("length") => FinishReason::Length,
                    _ => FinishReason::Stop,
                };
                out[i] = Some(GenerateOutput { text: text.to_string(), token_ids, finish_reason, prompt_tokens: prompts[i].len() });
            }
        }
        Ok(out.into_iter().map(|o| o.expect("every request is in one group")).collect())
    }

    fn label_probs(&self, requests: &[LabelRequest], labels: &[String]) -> BackendResult<Vec<LabelOutput>> {
        let cand = labels.iter().map(|l| self.label_id(l)).collect::<BackendResult<Vec<u32>>>()?;
        let mut seqs = Vec::with_capacity(requests.len());
        for r in requests {
            let mut ids = self.encode_prompt(&r.prompt)?;
            ids.extend(self.tokenizer.encode(&r.continuation, false)?);
            seqs.push(ids);
        }
        let keys: Vec<u64> = requests.iter().map(|r| self.encode_prompt(&r.prompt).map(|p| affinity(&p))).collect::<BackendResult<_>>()?;
        let mut found: Vec<Vec<Option<f32>>> = vec![vec![None; cand.len()]; seqs.len()];
        let top = self.capabilities.top_logprobs;
        if top > 0 {
            let calls = seqs
                .iter()
                .zip(&keys)
                .map(|(s, &k)| Call {
                    affinity: k,
                    body: json!({"model": self.model, "prompt": s, "max_tokens": 1, "temperature": 0.0, "logprobs": top, "return_tokens_as_token_ids": true}),
                })
                .collect();
            let answers = self.pool.run("/completions", calls, "labels")?;
            let names: Vec<String> = cand
                .iter()
                .map(|&id| if self.capabilities.ids_as_keys { Ok(format!("token_id:{id}")) } else { self.tokenizer.decode(&[id], false) })
                .collect::<gramrr_model::Result<_>>()?;
            for (i, v) in answers.iter().enumerate() {
                let cs = choices(v)?;
                let Some(t) = cs.first().and_then(|c| c.get("logprobs")).and_then(|l| l.get("top_logprobs")).and_then(|t| t.get(0)).and_then(Value::as_object) else {
                    return Err(RemoteError::Answer(format!("item {i}: no choices[0].logprobs.top_logprobs[0] in {}", short(v))).into());
                };
                for (j, name) in names.iter().enumerate() {
                    found[i][j] = t.get(name).and_then(Value::as_f64).map(|x| x as f32);
                }
            }
        }
        // Labels outside the top: score each as a one-token continuation.
        let missing: Vec<(usize, usize)> =
            (0..seqs.len()).flat_map(|i| (0..cand.len()).map(move |j| (i, j))).filter(|&(i, j)| found[i][j].is_none()).collect();
        if !missing.is_empty() {
            let calls = missing
                .iter()
                .map(|&(i, j)| {
                    let ids: Vec<u32> = seqs[i].iter().copied().chain([cand[j]]).collect();
                    Call { affinity: keys[i], body: self.scoring_body(&ids) }
                })
                .collect();
            let answers = self.pool.run("/completions", calls, "label scores")?;
            for (&(i, j), v) in missing.iter().zip(&answers) {
                let ids: Vec<u32> = seqs[i].iter().copied().chain([cand[j]]).collect();
                let lp = self.scored(v, &ids)?;
                found[i][j] = Some(lp[ids.len() - 1].ok_or_else(|| RemoteError::Answer(format!("item {i}: label {:?} has no log-prob", labels[j])))? as f32);
            }
        }
        Ok(found
            .into_iter()
            .map(|row| {
                let logprobs: Vec<f32> = row.into_iter().map(|x| x.expect("every label found or scored")).collect();
                let max = logprobs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = logprobs.iter().map(|&x| (x - max).exp()).collect();
                let s: f32 = e.iter().sum();
                LabelOutput { probs: e.iter().map(|x| x / s).collect(), logprobs }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split_trimmed_and_checked() {
        assert_eq!(parse_urls("http://a:1/v1/, http://b:2/v1").unwrap(), vec!["http://a:1/v1", "http://b:2/v1"]);
        assert!(parse_urls("a:1/v1").unwrap_err().to_string().contains("not an http"));
        assert!(parse_urls(" , ").is_err());
        assert!(is_url("https://x/v1") && !is_url("./model"));
    }

    #[test]
    fn both_orders_of_a_pair_share_an_affinity_key_and_seeds_fit_31_bits() {
        assert_eq!(affinity(&[5, 1, 9, 1]), affinity(&[9, 1, 1, 5]));
        assert_ne!(affinity(&[5, 1, 9]), affinity(&[5, 1, 8]));
        for (s, o) in [(0, 0), (u64::MAX, 7), (42, 1 << 40)] {
            assert!(request_seed(s, o) <= i32::MAX as u64);
        }
        assert_ne!(request_seed(1, 0), request_seed(1, 1));
    }

    #[test]
    fn vllm_prompt_logprobs_are_read_by_token_id() {
        let v = json!({"choices": [{"index": 0, "text": "", "prompt_logprobs": [null, {"7": {"logprob": -0.5, "rank": 1}, "3": {"logprob": -0.1}}, {"9": -2.0}]}]});
        assert_eq!(prompt_logprobs(&v, &[1, 7, 9]).unwrap(), vec![None, Some(-0.5), Some(-2.0)]);
    }
}
