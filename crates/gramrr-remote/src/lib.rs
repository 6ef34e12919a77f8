//! gramrr-remote: the [`Backend`] trait over OpenAI-compatible `/v1/completions` servers (vLLM,
//! SGLang, llama.cpp's server, `gramrr serve`), across one or more replicas.
//!
//! The chat template and the label tokens come from the model's own tokenizer (a directory, or
//! the `.gguf` file the server hosts) and are applied here; the server receives **token-id
//! arrays** as `prompt`, so the remote path scores and continues exactly the token sequences the
//! local engine would. A server that takes only text (llama-cpp-python's) gets the ids decoded
//! with their special tokens; it re-tokenizes them, and every answer's `usage.prompt_tokens` is
//! checked against the ids' count.
//!
//! - `generate`: one request per distinct prompt, its samples as `n` (where the server honours
//!   `n`), with `max_tokens`, `temperature`, `top_p`, `top_k`, `seed`, `stop`.
//! - `score`: the prompt and completion ids with `echo` + `logprobs` and `max_tokens: 1`, or
//!   vLLM's `prompt_logprobs` where echo gives none, or else one request per completion token
//!   with that token forced by `logit_bias` (its unbiased log-prob comes back).
//! - `label_probs`: `max_tokens: 1` with the top log-probs of the next token; a label not among
//!   them is scored as a one-token continuation, so its exact log-prob comes back.
//!
//! [`RemoteBackend::connect`] probes the servers first (`/models`, then tiny requests) and
//! refuses, naming the missing capability, a server that cannot give what [`Needs`] asks for.
//! Echoed log-probs are used only where they agree with the log-prob of the same token forced
//! as a generation: llama-cpp-python 0.3.36 echoes them one position off unless the prompt
//! starts with BOS.
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
use gramrr_model::gguf::{is_gguf_path, tokenizer_from_gguf, GgufFile};
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
    /// `prompt` may be an array of token ids; where not (llama-cpp-python's server validates it
    /// as text), the ids go as their decoded text, special tokens included.
    pub token_prompts: bool,
    /// `logit_bias` forces a token under greedy decoding and the token's unbiased log-prob
    /// comes back: scoring one token per request where no prompt log-probs do.
    pub forced_logprobs: bool,
}

#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// Base URLs ending in `/v1`, one per replica.
    pub urls: Vec<String>,
    /// The model's tokenizer: a directory, `org/name` in the local HF cache, or a `.gguf` file.
    /// Empty: the served model's name, where that is a `.gguf` file on this machine (as
    /// llama.cpp's server names its model).
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

/// The tokenizer named by `spec` (a directory, `org/name`, or a `.gguf` file); an empty `spec`
/// takes `served`, the model name a server lists, where that is a `.gguf` file on this machine.
pub fn load_tokenizer(spec: &str, served: &str) -> Result<TextTokenizer, RemoteError> {
    let spec = if !spec.is_empty() {
        spec
    } else if is_gguf_path(served) && std::path::Path::new(served).is_file() {
        served
    } else {
        return Err(RemoteError::Config(format!(
            "no tokenizer given, and the served model {served:?} is not a .gguf file on this machine: give --tokenizer DIR|org/name|FILE.gguf"
        )));
    };
    if is_gguf_path(spec) {
        return Ok(tokenizer_from_gguf(&GgufFile::open(std::path::Path::new(spec))?)?);
    }
    let dir = gramrr_model::hub::resolve_model_dir(spec)?;
    Ok(TextTokenizer::from_dir(&dir)?)
}

/// The `prompt` of a request for `ids`: the ids themselves, or their text for a server that
/// takes only text.
fn prompt_json(tok: &TextTokenizer, ids: &[u32], token_prompts: bool) -> Result<Value, RemoteError> {
    if token_prompts {
        return Ok(json!(ids));
    }
    let text = tok.decode(ids, false)?;
    // A token sequence that ends (or breaks) inside a UTF-8 character has no text: it decodes
    // to U+FFFD, which the server would tokenize as another character.
    if text.contains('\u{FFFD}') {
        return Err(RemoteError::Answer(format!(
            "this server takes prompts as text only, and {} tokens ending {:?} split a UTF-8 character (scoring a completion token by token needs each prefix as text)",
            ids.len(),
            &ids[ids.len().saturating_sub(3)..]
        )));
    }
    Ok(json!(text))
}

/// For text prompts: the server's own count of prompt tokens (`usage.prompt_tokens`) must be
/// ours, or it is continuing or scoring a different token sequence.
fn check_retokenized(v: &Value, n: usize, token_prompts: bool) -> Result<(), RemoteError> {
    if token_prompts {
        return Ok(());
    }
    match v.get("usage").and_then(|u| u.get("prompt_tokens")).and_then(Value::as_u64) {
        Some(m) if m as usize != n => Err(RemoteError::Answer(format!(
            "the server takes prompts as text and tokenized this one into {m} tokens where gramrr has {n}: either these tokens are not how the text tokenizes as a whole (a completion scored token by token whose prefix merges across the prompt-completion boundary, e.g. \"\\n\" + \"   \"), or --tokenizer is not the served model's"
        ))),
        _ => Ok(()),
    }
}

/// The body that forces `target` after `prompt` (greedy, `logit_bias` +100) and asks for its
/// log-prob, which servers compute before the bias (checked by the probe).
fn forced_body(model: &str, prompt: Value, target: u32, token_prompts: bool) -> Value {
    let mut body = json!({"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0, "logprobs": 1,
        "logit_bias": {target.to_string(): 100.0}});
    llamacpp_neutral(&mut body, 0, token_prompts);
    body
}

/// llama-cpp-python's server (the text-prompt one) samples with its own defaults unless told
/// otherwise: top_k 40, min_p 0.05 and repeat_penalty 1.1 — the last changes even greedy
/// answers. These fields make its sampling OpenAI's; other servers are not sent them.
fn llamacpp_neutral(body: &mut Value, top_k: usize, token_prompts: bool) {
    if !token_prompts {
        body["top_k"] = json!(top_k);
        body["min_p"] = json!(0.0);
        body["repeat_penalty"] = json!(1.0);
    }
}

impl RemoteBackend {
    /// Loads the tokenizer, finds the served model and probes each replica. Replicas that
    /// cannot be reached are reported and left out until they answer; a reachable replica
    /// that lacks a needed capability refuses the whole backend.
    pub fn connect(cfg: RemoteConfig) -> Result<Self, RemoteError> {
        if cfg.urls.is_empty() {
            return Err(RemoteError::Config("no server URL".into()));
        }
        let pool = Arc::new(Pool::new(cfg.urls.clone(), cfg.pool.clone()));
        let mut model = cfg.served_model.clone();
        let mut reachable = vec![];
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
            reachable.push(r);
        }
        if reachable.is_empty() {
            let why: Vec<String> = unreachable.iter().map(|(_, e)| e.clone()).collect();
            return Err(RemoteError::Config(format!("no server answered: {}", why.join("; "))));
        }
        let model = model.expect("a reachable replica named the model");
        // After /models: llama.cpp's server names its model by the .gguf path, the tokenizer's default.
        let tokenizer = load_tokenizer(&cfg.tokenizer, &model)?;
        let mut capabilities: Option<Capabilities> = None;
        for &r in &reachable {
            let caps = probe(&pool, r, &model, &tokenizer, cfg.needs)?;
            capabilities = Some(match capabilities {
                // Replicas are meant to be identical; use what all of them offer.
                Some(c) => Capabilities {
                    top_logprobs: c.top_logprobs.min(caps.top_logprobs),
                    ids_as_keys: c.ids_as_keys && caps.ids_as_keys,
                    echo_logprobs: c.echo_logprobs && caps.echo_logprobs,
                    prompt_logprobs: c.prompt_logprobs && caps.prompt_logprobs,
                    multi_n: c.multi_n && caps.multi_n,
                    token_prompts: c.token_prompts && caps.token_prompts,
                    forced_logprobs: c.forced_logprobs && caps.forced_logprobs,
                },
                None => caps,
            });
        }
        let capabilities = capabilities.expect("at least one replica probed");
        for (r, e) in &unreachable {
            eprintln!("warning: replica {} does not answer ({e}); it is left out until it does", cfg.urls[*r]);
            pool.mark_down(*r);
        }
        Ok(RemoteBackend { pool, tokenizer, model, capabilities })
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

    fn prompt(&self, ids: &[u32]) -> Result<Value, RemoteError> {
        prompt_json(&self.tokenizer, ids, self.capabilities.token_prompts)
    }

    /// The teacher-forced body for `ids`, whose log-probs from position 1 on come back.
    fn scoring_body(&self, ids: &[u32]) -> Result<Value, RemoteError> {
        let prompt = self.prompt(ids)?;
        Ok(if self.capabilities.echo_logprobs {
            json!({"model": self.model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0, "echo": true, "logprobs": 1})
        } else {
            json!({"model": self.model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0})
        })
    }

    /// Log-probs of `ids[1..]` from an answer to [`Self::scoring_body`].
    fn scored(&self, v: &Value, ids: &[u32]) -> Result<Vec<Option<f64>>, RemoteError> {
        check_retokenized(v, ids.len(), self.capabilities.token_prompts)?;
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

    /// Log-probs of `ids[from..]`, each given everything before it, for each `(ids, from,
    /// affinity)`: one request per sequence where the server gives prompt log-probs, else one
    /// per scored token, forced by `logit_bias` (llama-cpp-python's server).
    fn teacher_forced(&self, seqs: &[(Vec<u32>, usize, u64)], what: &str) -> Result<Vec<Vec<f64>>, BackendError> {
        let caps = &self.capabilities;
        if caps.echo_logprobs || caps.prompt_logprobs {
            let calls = seqs.iter().map(|(ids, _, k)| Ok(Call { affinity: *k, body: self.scoring_body(ids)? })).collect::<Result<_, RemoteError>>()?;
            let answers = self.pool.run("/completions", calls, what)?;
            let mut out = Vec::with_capacity(seqs.len());
            for (i, ((ids, from, _), v)) in seqs.iter().zip(&answers).enumerate() {
                let lp = self.scored(v, ids)?;
                out.push(
                    lp[*from..]
                        .iter()
                        .enumerate()
                        .map(|(j, x)| x.ok_or_else(|| RemoteError::Answer(format!("item {i}: token {} has no log-prob", from + j))))
                        .collect::<Result<Vec<f64>, _>>()?,
                );
            }
            return Ok(out);
        }
        if !caps.forced_logprobs {
            return Err(RemoteError::Answer("the server gives no prompt log-probs (neither `echo` with `logprobs` nor `prompt_logprobs`) and does not honour `logit_bias`".into()).into());
        }
        let mut calls = vec![];
        let mut at = vec![];
        for (i, (ids, from, k)) in seqs.iter().enumerate() {
            for pos in *from..ids.len() {
                calls.push(Call { affinity: *k, body: forced_body(&self.model, self.prompt(&ids[..pos])?, ids[pos], caps.token_prompts) });
                at.push((i, pos));
            }
        }
        let answers = self.pool.run("/completions", calls, what)?;
        let mut out: Vec<Vec<f64>> = seqs.iter().map(|(ids, from, _)| Vec::with_capacity(ids.len() - from)).collect();
        for (&(i, pos), v) in at.iter().zip(&answers) {
            let ids = &seqs[i].0;
            check_retokenized(v, pos, caps.token_prompts)?;
            let want = self.tokenizer.decode(&ids[pos..=pos], false)?;
            let got = choices(v)?.first().and_then(|c| c.get("text")).and_then(Value::as_str).unwrap_or_default().to_string();
            // A token that is part of a multi-byte character decodes to U+FFFD on our side and
            // to nothing on the server's; only whole characters can be compared.
            if !want.contains('\u{FFFD}') && got != want {
                return Err(RemoteError::Answer(format!("item {i}: forced token {} ({want:?}) came back as {got:?}: logit_bias was not honoured", ids[pos])).into());
            }
            let lp = token_logprobs(v)?
                .first()
                .copied()
                .flatten()
                .ok_or_else(|| RemoteError::Answer(format!("item {i}: token {pos} has no log-prob in {}", short(v))))?;
            out[i].push(lp);
        }
        Ok(out)
    }
}

/// The capability probe of one replica: tiny requests that show what it answers.
fn probe(pool: &Pool, r: usize, model: &str, tok: &TextTokenizer, needs: Needs) -> Result<Capabilities, RemoteError> {
    let url = &pool.urls[r];
    let ids = tok.encode("Hello, world. The answer is", true)?;
    let mut caps = Capabilities::default();
    let first_text = |v: &Value| -> Result<(), RemoteError> {
        choices(v)?.first().and_then(|c| c.get("text")).and_then(Value::as_str).map(|_| ()).ok_or_else(|| RemoteError::Answer(format!("no choices[0].text in {}", short(v))))
    };
    // Completions from token ids: everything else builds on it; from the same tokens as text
    // where the server takes only text.
    match pool.post_one_attempt(r, "/completions", &json!({"model": model, "prompt": ids, "max_tokens": 1, "temperature": 0.0})) {
        Ok(v) => {
            first_text(&v)?;
            caps.token_prompts = true;
        }
        Err(m) => {
            let text = tok.decode(&ids, false)?;
            let v = pool.post_once(r, "/completions", &json!({"model": model, "prompt": text, "max_tokens": 1, "temperature": 0.0})).map_err(|m2| RemoteError::Probe {
                url: url.clone(),
                message: format!("a completion from a token-id prompt failed ({m}), and from the same prompt as text ({m2}) (needed for every request)"),
            })?;
            first_text(&v)?;
            check_retokenized(&v, ids.len(), false).map_err(|e| RemoteError::Probe { url: url.clone(), message: format!("it takes prompts as text only, and {e}") })?;
        }
    }
    let tp = caps.token_prompts;
    let prompt = prompt_json(tok, &ids, tp)?;
    // Several samples per request.
    if let Ok(v) = pool.post_once(r, "/completions", &json!({"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 1.0, "n": 2, "seed": 1})) {
        caps.multi_n = choices(&v).map(|c| c.len() == 2).unwrap_or(false);
    }
    // Top log-probs of the next token: 20 (vLLM's default ceiling), else OpenAI's 5.
    let mut greedy_lp = None;
    for k in [20usize, 5] {
        let body = json!({"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0, "logprobs": k, "return_tokens_as_token_ids": true});
        if let Ok(v) = pool.post_once(r, "/completions", &body) {
            let top = choices(&v).ok().and_then(|c| c.first().and_then(|c| c.get("logprobs")).and_then(|l| l.get("top_logprobs")).and_then(|t| t.get(0)).and_then(Value::as_object).cloned());
            if let Some(top) = top.filter(|t| !t.is_empty()) {
                caps.top_logprobs = top.len().min(k);
                caps.ids_as_keys = top.keys().all(|k| k.starts_with("token_id:"));
                greedy_lp = token_logprobs(&v).ok().and_then(|lp| lp.first().copied().flatten());
                break;
            }
        }
    }
    // A token forced by logit_bias: it must come back, with a log-prob below the greedy
    // token's (a bias leaking into the log-prob would give about 0). " zebra" is unlikely
    // to be the greedy next token.
    let target = *tok.encode(" zebra", false)?.last().ok_or_else(|| RemoteError::Answer("\" zebra\" encodes to no token".into()))?;
    let mut forced_lp = None;
    if let Ok(v) = pool.post_once(r, "/completions", &forced_body(model, prompt.clone(), target, tp)) {
        let text = choices(&v).ok().and_then(|c| c.first().and_then(|c| c.get("text")).and_then(Value::as_str).map(str::to_string));
        let lp = token_logprobs(&v).ok().and_then(|lp| lp.first().copied().flatten());
        if let (Some(text), Some(lp)) = (text, lp) {
            if text == tok.decode(&[target], false)? && lp < greedy_lp.unwrap_or(0.0) - 1e-3 {
                caps.forced_logprobs = true;
                forced_lp = Some(lp);
            }
        }
    }
    // Prompt log-probs: echo, else vLLM's prompt_logprobs. Echo is checked against the forced
    // log-prob of its last prompt token where the server forces tokens: llama-cpp-python's
    // echo pairs each token with the next position's distribution unless the prompt starts
    // with BOS.
    let seq: Vec<u32> = ids.iter().copied().chain([target]).collect();
    let echo = json!({"model": model, "prompt": prompt_json(tok, &seq, tp)?, "max_tokens": 1, "temperature": 0.0, "echo": true, "logprobs": 1});
    if let Ok(v) = pool.post_once(r, "/completions", &echo) {
        caps.echo_logprobs = token_logprobs(&v)
            .map(|lp| {
                lp.len() > seq.len()
                    && lp[1..seq.len()].iter().all(Option::is_some)
                    // Same server, same tokens: only the batch split differs.
                    && forced_lp.is_none_or(|f| (lp[seq.len() - 1].unwrap() - f).abs() < 0.05)
            })
            .unwrap_or(false);
    }
    if !caps.echo_logprobs && tp {
        let body = json!({"model": model, "prompt": ids, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0});
        if let Ok(v) = pool.post_once(r, "/completions", &body) {
            caps.prompt_logprobs = prompt_logprobs(&v, &ids).map(|lp| lp.len() >= ids.len() && lp[1..].iter().all(Option::is_some)).unwrap_or(false);
        }
    }
    let can_score = caps.echo_logprobs || caps.prompt_logprobs || caps.forced_logprobs;
    if needs.score && !can_score {
        return Err(RemoteError::Missing {
            url: url.clone(),
            capability: "no prompt log-probs (neither `echo` with `logprobs`, nor vLLM's `prompt_logprobs`, nor a token forced by `logit_bias` returned them)",
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
        let seqs: Vec<(Vec<u32>, usize, u64)> = todo
            .iter()
            .map(|&i| {
                let (p, c) = &items[i];
                (p.iter().chain(c).copied().collect(), p.len(), affinity(p))
            })
            .collect();
        let scored = self.teacher_forced(&seqs, "score")?;
        let mut out: Vec<ScoreOutput> = items
            .iter()
            .map(|(p, _)| ScoreOutput { prompt_tokens: p.len(), completion_tokens: 0, token_logprobs: vec![], logprob: 0.0 })
            .collect();
        for (&i, lp) in todo.iter().zip(scored) {
            let (p, c) = &items[i];
            let token_logprobs: Vec<f32> = lp.iter().map(|&x| x as f32).collect();
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
                    "model": self.model, "prompt": self.prompt(p)?, "max_tokens": params.max_new_tokens,
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
                llamacpp_neutral(&mut body, params.top_k, self.capabilities.token_prompts);
                if params.ignore_eos && !self.capabilities.token_prompts {
                    // llama-cpp-python has no ignore_eos; a bias keeps EOS from being sampled.
                    if let Some(eos) = self.tokenizer.eos_token_id {
                        body["logit_bias"] = json!({eos.to_string(): -100.0});
                    }
                }
                Ok(Call { affinity: affinity(p), body })
            })
            .collect::<Result<_, RemoteError>>()?;
        let answers = self.pool.run("/completions", calls, "generate")?;
        let mut out: Vec<Option<GenerateOutput>> = vec![None; requests.len()];
        for (g, v) in groups.iter().zip(&answers) {
            check_retokenized(v, prompts[g[0]].len(), self.capabilities.token_prompts)?;
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
            if self.capabilities.token_prompts {
                let mut ids = self.encode_prompt(&r.prompt)?;
                ids.extend(self.tokenizer.encode(&r.continuation, false)?);
                seqs.push(ids);
            } else {
                // A text-only server tokenizes prompt and continuation as one text, merging
                // across the boundary (" " + "<answer>" is " <" + ...); the labels are read
                // after that tokenization, so it is the one encoded here.
                seqs.push(match &r.prompt {
                    Prompt::Raw(t) => self.tokenizer.encode(&format!("{t}{}", r.continuation), true)?,
                    Prompt::Chat(_) => self.tokenizer.encode(&format!("{}{}", self.render(&r.prompt)?, r.continuation), false)?,
                });
            }
        }
        let keys: Vec<u64> = requests.iter().map(|r| self.encode_prompt(&r.prompt).map(|p| affinity(&p))).collect::<BackendResult<_>>()?;
        let mut found: Vec<Vec<Option<f32>>> = vec![vec![None; cand.len()]; seqs.len()];
        let top = self.capabilities.top_logprobs;
        if top > 0 {
            let calls = seqs
                .iter()
                .zip(&keys)
                .map(|(s, &k)| {
                    Ok(Call {
                        affinity: k,
                        body: json!({"model": self.model, "prompt": self.prompt(s)?, "max_tokens": 1, "temperature": 0.0, "logprobs": top, "return_tokens_as_token_ids": true}),
                    })
                })
                .collect::<Result<_, RemoteError>>()?;
            let answers = self.pool.run("/completions", calls, "labels")?;
            let names: Vec<String> = cand
                .iter()
                .map(|&id| if self.capabilities.ids_as_keys { Ok(format!("token_id:{id}")) } else { self.tokenizer.decode(&[id], false) })
                .collect::<gramrr_model::Result<_>>()?;
            for (i, v) in answers.iter().enumerate() {
                check_retokenized(v, seqs[i].len(), self.capabilities.token_prompts)?;
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
            let with_label: Vec<(Vec<u32>, usize, u64)> = missing
                .iter()
                .map(|&(i, j)| {
                    let ids: Vec<u32> = seqs[i].iter().copied().chain([cand[j]]).collect();
                    let at = ids.len() - 1;
                    (ids, at, keys[i])
                })
                .collect();
            let scored = self.teacher_forced(&with_label, "label scores")?;
            for (&(i, j), lp) in missing.iter().zip(scored) {
                found[i][j] = Some(*lp.first().ok_or_else(|| RemoteError::Answer(format!("item {i}: label {:?} has no log-prob", labels[j])))? as f32);
            }
        }
        Ok(found
            .into_iter()
            .map(|row| {
                let logprobs: Vec<f32> = row.into_iter().map(|x| x.expect("every label found or scored")).collect();
                LabelOutput::from_logprobs(logprobs)
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
    fn a_text_prompt_retokenized_to_another_length_is_refused() {
        let v = json!({"choices": [{"text": "x"}], "usage": {"prompt_tokens": 6}});
        assert!(check_retokenized(&v, 6, false).is_ok());
        assert!(check_retokenized(&v, 7, true).is_ok(), "token-id prompts are sent as they are");
        let err = check_retokenized(&v, 7, false).unwrap_err().to_string();
        assert!(err.contains("into 6 tokens where gramrr has 7"), "{err}");
        // A server that reports no usage cannot be checked, and is not refused for it.
        assert!(check_retokenized(&json!({"choices": []}), 7, false).is_ok());
    }

    #[test]
    fn llama_cpp_sampling_defaults_are_overridden_only_for_text_prompt_servers() {
        let mut body = json!({"temperature": 0.0});
        llamacpp_neutral(&mut body, 0, true);
        assert_eq!(body, json!({"temperature": 0.0}));
        llamacpp_neutral(&mut body, 5, false);
        assert_eq!(body, json!({"temperature": 0.0, "top_k": 5, "min_p": 0.0, "repeat_penalty": 1.0}));
        let f = forced_body("m", json!("text"), 42, false);
        assert_eq!(f["logit_bias"], json!({"42": 100.0}));
        assert_eq!((f["max_tokens"].as_u64(), f["logprobs"].as_u64()), (Some(1), Some(1)));
    }

    #[test]
    fn vllm_prompt_logprobs_are_read_by_token_id() {
        let v = json!({"choices": [{"index": 0, "text": "", "prompt_logprobs": [null, {"7": {"logprob": -0.5, "rank": 1}, "3": {"logprob": -0.1}}, {"9": -2.0}]}]});
        assert_eq!(prompt_logprobs(&v, &[1, 7, 9]).unwrap(), vec![None, Some(-0.5), Some(-2.0)]);
    }
}
