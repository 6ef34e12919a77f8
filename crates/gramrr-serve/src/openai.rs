//! The OpenAI-compatible routes: `POST /v1/completions` and `GET /v1/models`, so that anything
//! that drives vLLM, SGLang or llama.cpp's server (gramrr's own remote backend, the `openai`
//! Python client) can drive `gramrr serve` too.
//!
//! `/v1/completions` takes `prompt` as a string, a list of token ids, or a list of either (a
//! batch); `max_tokens` (0 is allowed with `echo`: prompt log-probs only), `temperature`,
//! `top_p`, `top_k`, `seed`, `stop`, `n`, `echo`, `logprobs` (top tokens per position, at most
//! 20), and vLLM's `return_tokens_as_token_ids` (log-prob keys `"token_id:N"`) and
//! `return_token_ids` (each choice's `token_ids`). String prompts are encoded with special tokens,
//! as vLLM does. Choice `i·n + j` answers prompt `i`, sample `j`, drawn from the RNG seeded with
//! `(seed, j)`. The work goes through the same engine queue as the judge routes, so requests
//! from many clients are batched together and a full queue answers 503.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use gramrr_model::backend::{FinishReason, SamplingParams};
use gramrr_model::engine::PositionLogprobs;
use gramrr_model::Engine;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::api::ApiError;
use crate::worker::{Output, Work};
use crate::AppState;

/// The model behind the OpenAI routes: a local engine and the name clients address it by.
#[derive(Clone)]
pub struct CompletionModel {
    pub engine: Arc<Engine>,
    /// The `id` in `/v1/models` and the `model` every request must name (or leave out).
    pub name: String,
}

/// Most top tokens per position a request may ask for (vLLM's default `max_logprobs`).
pub const MAX_LOGPROBS: usize = 20;

#[derive(Deserialize)]
#[serde(untagged)]
enum PromptField {
    Text(String),
    Ids(Vec<u32>),
    Texts(Vec<String>),
    IdLists(Vec<Vec<u32>>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct CompletionBody {
    model: Option<String>,
    prompt: PromptField,
    max_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i64>,
    seed: Option<u64>,
    stop: Option<StopField>,
    n: Option<usize>,
    #[serde(default)]
    echo: bool,
    logprobs: Option<usize>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    ignore_eos: bool,
    #[serde(default)]
    return_tokens_as_token_ids: bool,
    #[serde(default)]
    return_token_ids: bool,
}

/// One validated completion request, ready for the engine worker.
pub(crate) struct CompletionWork {
    pub engine: Arc<Engine>,
    pub prompts: Vec<Vec<u32>>,
    pub n: usize,
    pub params: SamplingParams,
    pub echo: bool,
    pub logprobs: Option<usize>,
    pub ids_as_keys: bool,
}

pub(crate) struct CompletionChoice {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    pub logprobs: Option<Value>,
}

pub(crate) struct CompletionResult {
    pub choices: Vec<CompletionChoice>,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

fn model_of(s: &AppState) -> Result<&CompletionModel, ApiError> {
    s.completions.as_ref().ok_or_else(|| {
        ApiError::new(StatusCode::NOT_IMPLEMENTED, "this server has no local engine, so it offers no /v1/completions")
    })
}

pub(crate) async fn models_handler(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let m = model_of(&s)?;
    Ok(Json(json!({
        "object": "list",
        "data": [{"id": m.name, "object": "model", "created": 0, "owned_by": "gramrr",
                  "max_model_len": m.engine.model.cfg.max_position_embeddings}],
    })))
}

pub(crate) async fn completions_handler(
    State(s): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let m = model_of(&s)?.clone();
    let bytes = crate::body_bytes(body)?;
    let b: CompletionBody = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("/v1/completions request: {e}")))?;
    if let Some(name) = &b.model {
        if name != &m.name {
            return Err(ApiError::field(StatusCode::NOT_FOUND, "model", format!("model {name:?} is not served here; this server serves {:?}", m.name)));
        }
    }
    if b.stream {
        return Err(ApiError::bad("stream", "streaming is not supported; send \"stream\": false"));
    }
    let limits = s.limits();
    let tok = &m.engine.tokenizer;
    let encode = |t: &str| tok.encode(t, true).map_err(|e| ApiError::bad("prompt", e.to_string()));
    let prompts: Vec<Vec<u32>> = match b.prompt {
        PromptField::Text(t) => vec![encode(&t)?],
        PromptField::Ids(ids) => vec![ids],
        PromptField::Texts(ts) => ts.iter().map(|t| encode(t)).collect::<Result<_, _>>()?,
        PromptField::IdLists(l) => l,
    };
    let vocab = m.engine.model.cfg.vocab_size as u32;
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(ApiError::bad("prompt", format!("prompt {i} is empty")));
        }
        if let Some(&bad) = p.iter().find(|&&t| t >= vocab) {
            return Err(ApiError::bad("prompt", format!("prompt {i}: token id {bad} is outside the vocabulary (size {vocab})")));
        }
    }
    let n = b.n.unwrap_or(1);
    if n == 0 {
        return Err(ApiError::bad("n", "n must be at least 1"));
    }
    let size = prompts.len() * n;
    if prompts.is_empty() || size > limits.max_items {
        return Err(ApiError::field(
            StatusCode::PAYLOAD_TOO_LARGE,
            "prompt",
            format!("{} prompts × n = {n} is {size} completions; this server takes 1..={}", prompts.len(), limits.max_items),
        ));
    }
    let max_tokens = b.max_tokens.unwrap_or(16);
    let max_len = m.engine.model.cfg.max_position_embeddings;
    if let Some(p) = prompts.iter().find(|p| p.len() + max_tokens > max_len) {
        return Err(ApiError::bad("max_tokens", format!("prompt ({} tokens) + max_tokens ({max_tokens}) exceeds the model's {max_len} positions", p.len())));
    }
    if max_tokens == 0 && !b.echo {
        return Err(ApiError::bad("max_tokens", "max_tokens 0 needs \"echo\": true (it returns the prompt only)"));
    }
    if let Some(k) = b.logprobs {
        if k > MAX_LOGPROBS {
            return Err(ApiError::bad("logprobs", format!("logprobs {k} is above this server's limit of {MAX_LOGPROBS}")));
        }
    }
    let temperature = b.temperature.unwrap_or(1.0);
    let top_p = b.top_p.unwrap_or(1.0);
    // Written so that NaN fails too.
    let valid = temperature >= 0.0 && top_p > 0.0 && top_p <= 1.0;
    if !valid {
        return Err(ApiError::bad("temperature", format!("temperature must be >= 0 and top_p in (0, 1] (got {temperature}, {top_p})")));
    }
    let seed = b.seed.unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0));
    let params = SamplingParams {
        max_new_tokens: max_tokens,
        temperature,
        top_p,
        top_k: b.top_k.filter(|&k| k > 0).unwrap_or(0) as usize,
        stop: match b.stop {
            None => vec![],
            Some(StopField::One(s)) => vec![s],
            Some(StopField::Many(v)) => v,
        }
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect(),
        seed,
        ignore_eos: b.ignore_eos,
    };
    let work = CompletionWork {
        engine: m.engine.clone(),
        prompts,
        n,
        params,
        echo: b.echo,
        logprobs: b.logprobs,
        ids_as_keys: b.return_tokens_as_token_ids,
    };
    let prompt_ids: Vec<Vec<u32>> = if b.return_token_ids { work.prompts.clone() } else { vec![] };
    let result = match s.submit(Work::Completion(Box::new(work)), size).await? {
        Output::Completion(r) => r,
        _ => unreachable!("a completion job answers with completions"),
    };
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let choices: Vec<Value> = result
        .choices
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let mut o = Map::new();
            o.insert("index".into(), json!(i));
            o.insert("text".into(), json!(c.text));
            o.insert("logprobs".into(), c.logprobs.unwrap_or(Value::Null));
            o.insert("finish_reason".into(), json!(match c.finish_reason {
                FinishReason::Stop => "stop",
                FinishReason::Length => "length",
            }));
            if b.return_token_ids {
                o.insert("token_ids".into(), json!(c.token_ids));
                o.insert("prompt_token_ids".into(), json!(prompt_ids[i / n]));
            }
            Value::Object(o)
        })
        .collect();
    Ok(Json(json!({
        "id": format!("cmpl-{created}-{:x}", seed),
        "object": "text_completion",
        "created": created,
        "model": m.name,
        "choices": choices,
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        },
    })))
}

/// Runs completion jobs that arrived together: the generations of all jobs with the same
/// sampling settings in one engine call, then every log-prob computation in one more.
pub(crate) fn run_batch(jobs: &[&CompletionWork]) -> Vec<Result<CompletionResult, String>> {
    let Some(engine) = jobs.first().map(|j| j.engine.clone()) else { return vec![] };
    // Generation, grouped by settings (their JSON is the key: f32 fields rule out Hash).
    struct Gen {
        job: usize,
        prompt: usize,
        sample: usize,
    }
    let mut groups: std::collections::BTreeMap<String, Vec<Gen>> = Default::default();
    for (j, w) in jobs.iter().enumerate() {
        if w.params.max_new_tokens == 0 {
            continue;
        }
        let key = serde_json::to_string(&w.params).unwrap_or_default();
        for p in 0..w.prompts.len() {
            for k in 0..w.n {
                groups.entry(key.clone()).or_default().push(Gen { job: j, prompt: p, sample: k });
            }
        }
    }
    /// A choice's generated ids, text and finish reason.
    type Generated = Option<(Vec<u32>, String, FinishReason)>;
    let mut generated: Vec<Vec<Generated>> =
        jobs.iter().map(|w| std::iter::repeat_with(|| None).take(w.prompts.len() * w.n).collect()).collect();
    let mut failed: Vec<Option<String>> = vec![None; jobs.len()];
    for items in groups.values() {
        let params = &jobs[items[0].job].params;
        let prompts: Vec<Vec<u32>> = items.iter().map(|g| jobs[g.job].prompts[g.prompt].clone()).collect();
        let offsets: Vec<u64> = items.iter().map(|g| g.sample as u64).collect();
        match engine.generate_ids(&prompts, &offsets, params) {
            Ok(outs) => {
                for (g, o) in items.iter().zip(outs) {
                    generated[g.job][g.prompt * jobs[g.job].n + g.sample] = Some((o.token_ids, o.text, o.finish_reason));
                }
            }
            Err(e) => {
                for g in items {
                    failed[g.job] = Some(format!("generation: {e}"));
                }
            }
        }
    }
    // Log-probs: each choice's sequence, from position 1 with echo, else from the first
    // generated token.
    let mut scored: Vec<(usize, usize)> = vec![];
    let mut seqs: Vec<(Vec<u32>, usize)> = vec![];
    let mut top = 0;
    for (j, w) in jobs.iter().enumerate() {
        let Some(k) = w.logprobs else { continue };
        if failed[j].is_some() {
            continue;
        }
        top = top.max(k);
        for c in 0..w.prompts.len() * w.n {
            let prompt = &w.prompts[c / w.n];
            let gen = generated[j][c].as_ref().map(|g| g.0.as_slice()).unwrap_or(&[]);
            let from = if w.echo { 1 } else { prompt.len() };
            if from < prompt.len() + gen.len() {
                seqs.push((prompt.iter().chain(gen).copied().collect(), from));
                scored.push((j, c));
            }
        }
    }
    let mut logprobs: Vec<Vec<Option<Vec<PositionLogprobs>>>> =
        jobs.iter().map(|w| vec![None; w.prompts.len() * w.n]).collect();
    if !seqs.is_empty() {
        match engine.sequence_logprobs(&seqs, top) {
            Ok(all) => {
                for ((j, c), lp) in scored.into_iter().zip(all) {
                    logprobs[j][c] = Some(lp);
                }
            }
            Err(e) => {
                for (j, _) in scored {
                    failed[j] = Some(format!("log-probs: {e}"));
                }
            }
        }
    }
    jobs.iter()
        .enumerate()
        .map(|(j, w)| {
            if let Some(e) = failed[j].take() {
                return Err(e);
            }
            let tok = &w.engine.tokenizer;
            let piece = |id: u32| -> String {
                if w.ids_as_keys {
                    format!("token_id:{id}")
                } else {
                    tok.decode(&[id], false).unwrap_or_default()
                }
            };
            let mut choices = vec![];
            let mut completion_tokens = 0;
            for (c, slot) in generated[j].iter_mut().enumerate() {
                let prompt = &w.prompts[c / w.n];
                let (gen_ids, gen_text, finish) = slot.take().unwrap_or((vec![], String::new(), FinishReason::Length));
                completion_tokens += gen_ids.len();
                let mut text = String::new();
                if w.echo {
                    text = tok.decode(prompt, false).map_err(|e| e.to_string())?;
                }
                text.push_str(&gen_text);
                let lp = w.logprobs.map(|k| {
                    let positions = logprobs[j][c].take().unwrap_or_default();
                    let shown: Vec<u32> = if w.echo { prompt.iter().chain(&gen_ids).copied().collect() } else { gen_ids.clone() };
                    let mut tokens = vec![];
                    let mut token_logprobs = vec![];
                    let mut tops = vec![];
                    let mut offsets = vec![];
                    let mut offset = 0usize;
                    // With echo the first prompt token has no context: null, as OpenAI answers.
                    let lead = shown.len() - positions.len();
                    for (i, &id) in shown.iter().enumerate() {
                        let s = piece(id);
                        offsets.push(offset);
                        offset += tok.decode(&[id], false).map(|t| t.len()).unwrap_or(0);
                        tokens.push(s);
                        if i < lead {
                            token_logprobs.push(Value::Null);
                            tops.push(Value::Null);
                        } else {
                            let p = &positions[i - lead];
                            token_logprobs.push(json!(p.logprob));
                            let mut m = Map::new();
                            for &(tid, l) in p.top.iter().take(k) {
                                m.entry(piece(tid)).or_insert(json!(l));
                            }
                            tops.push(Value::Object(m));
                        }
                    }
                    json!({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets})
                });
                choices.push(CompletionChoice { text, token_ids: gen_ids, finish_reason: finish, logprobs: lp });
            }
            Ok(CompletionResult { choices, prompt_tokens: w.prompts.iter().map(|p| p.len()).sum(), completion_tokens })
        })
        .collect()
}
