//! Request parsing and response shapes. Requests are parsed by hand from a JSON value so
//! that every error names the field it is about.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use gramrr_data::{Conversation, Label};
use gramrr_judge::{JudgeConfig, JudgeMode, PairInput, PairVerdict, RankInput, RankOutcome, StrategyKind};
use gramrr_model::backend::ChatMessage;
use serde_json::{json, Map, Value};

use crate::reward::RewardItem;

/// An error answer: `{"error": message, "field": name-or-null}` with its status.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub field: Option<String>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), field: None, retry_after: None }
    }
    pub fn field(status: StatusCode, field: &str, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), field: Some(field.to_string()), retry_after: None }
    }
    pub fn bad(field: &str, message: impl Into<String>) -> Self {
        Self::field(StatusCode::BAD_REQUEST, field, message)
    }
    pub fn missing(field: &str) -> Self {
        Self::bad(field, format!("missing field `{field}`"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(json!({"error": self.message, "field": self.field}))).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_items: usize,
    pub max_votes: usize,
}

pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::new(StatusCode::BAD_REQUEST, "the request body must be a JSON object")),
        Err(e) => Err(ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}"))),
    }
}

fn string(obj: &Map<String, Value>, name: &str) -> Result<String, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Err(ApiError::missing(name)),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(ApiError::bad(name, format!("field `{name}` must be a string"))),
    }
}

fn present<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).filter(|v| !v.is_null())
}

/// A string, or a list of `{"role", "content"}` messages.
fn conversation(obj: &Map<String, Value>, name: &str) -> Result<Conversation, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Err(ApiError::missing(name)),
        Some(Value::String(s)) => Ok(Conversation::Text(s.clone())),
        Some(v @ Value::Array(_)) => serde_json::from_value::<Vec<ChatMessage>>(v.clone())
            .map(Conversation::Messages)
            .map_err(|e| ApiError::bad(name, format!("field `{name}` must be a string or a list of {{\"role\", \"content\"}} messages: {e}"))),
        Some(_) => Err(ApiError::bad(name, format!("field `{name}` must be a string or a list of messages"))),
    }
}

fn string_list(obj: &Map<String, Value>, name: &str, limits: &Limits) -> Result<Option<Vec<Option<String>>>, ApiError> {
    let Some(v) = present(obj, name) else { return Ok(None) };
    let Value::Array(a) = v else {
        return Err(ApiError::bad(name, format!("field `{name}` must be a list of strings")));
    };
    if a.len() > limits.max_items {
        return Err(ApiError::field(
            StatusCode::PAYLOAD_TOO_LARGE,
            name,
            format!("field `{name}` has {} items; the limit is {}", a.len(), limits.max_items),
        ));
    }
    a.iter()
        .enumerate()
        .map(|(i, x)| match x {
            Value::String(s) => Ok(Some(s.clone())),
            Value::Null => Ok(None),
            _ => Err(ApiError::bad(name, format!("field `{name}`[{i}] must be a string"))),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The per-request judge options over the server's defaults.
fn judge_options(obj: &Map<String, Value>, defaults: &JudgeConfig, limits: &Limits) -> Result<JudgeConfig, ApiError> {
    let mut cfg = defaults.clone();
    if let Some(v) = present(obj, "mode") {
        let s = v.as_str().ok_or_else(|| ApiError::bad("mode", "field `mode` must be a string"))?;
        cfg.mode = s.parse::<JudgeMode>().map_err(|e| ApiError::bad("mode", e))?;
    }
    if let Some(v) = present(obj, "votes") {
        let n = v.as_u64().filter(|&n| n >= 1).ok_or_else(|| ApiError::bad("votes", "field `votes` must be a positive integer"))?;
        if n as usize > limits.max_votes {
            return Err(ApiError::bad("votes", format!("field `votes` = {n} is over the limit of {}", limits.max_votes)));
        }
        cfg.votes = n as usize;
    }
    if let Some(v) = present(obj, "both_orders") {
        cfg.both_orders = v.as_bool().ok_or_else(|| ApiError::bad("both_orders", "field `both_orders` must be true or false"))?;
    }
    Ok(cfg)
}

pub fn parse_judge(obj: &Map<String, Value>, defaults: &JudgeConfig, limits: &Limits) -> Result<(PairInput, JudgeConfig), ApiError> {
    let prompt = conversation(obj, "prompt")?;
    let a = string(obj, "response_a")?;
    let b = string(obj, "response_b")?;
    let cfg = judge_options(obj, defaults, limits)?;
    Ok((PairInput::new(prompt.as_text(), a, b), cfg))
}

pub fn parse_rank(
    obj: &Map<String, Value>,
    defaults: &JudgeConfig,
    default_strategy: StrategyKind,
    limits: &Limits,
) -> Result<(RankInput, StrategyKind, JudgeConfig), ApiError> {
    let prompt = conversation(obj, "prompt")?;
    let responses = string_list(obj, "responses", limits)?.ok_or_else(|| ApiError::missing("responses"))?;
    if responses.is_empty() {
        return Err(ApiError::bad("responses", "field `responses` must hold at least one response"));
    }
    let responses = responses
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.ok_or_else(|| ApiError::bad("responses", format!("field `responses`[{i}] must be a string"))))
        .collect::<Result<Vec<_>, _>>()?;
    let mut strategy = default_strategy;
    if let Some(v) = present(obj, "strategy") {
        let s = v.as_str().ok_or_else(|| ApiError::bad("strategy", "field `strategy` must be a string"))?;
        strategy = s.parse().map_err(|e: String| ApiError::bad("strategy", e))?;
    }
    if let Some(v) = present(obj, "opponents") {
        let k = v.as_u64().filter(|&k| k >= 1).ok_or_else(|| ApiError::bad("opponents", "field `opponents` must be a positive integer"))?;
        match &mut strategy {
            StrategyKind::RoundRobin { opponents } => *opponents = Some(k as usize),
            _ => return Err(ApiError::bad("opponents", "field `opponents` only applies to strategy round-robin")),
        }
    }
    let cfg = judge_options(obj, defaults, limits)?;
    Ok((RankInput { id: String::new(), user_input: prompt.as_text(), responses }, strategy, cfg))
}

/// OpenRLHF's request: `query` required; `prompts` and `labels` optional, as long as `query`.
pub fn parse_reward(obj: &Map<String, Value>, limits: &Limits) -> Result<Vec<RewardItem>, ApiError> {
    let queries = string_list(obj, "query", limits)?.ok_or_else(|| ApiError::missing("query"))?;
    let n = queries.len();
    let same_len = |name: &str, list: Option<Vec<Option<String>>>| -> Result<Option<Vec<Option<String>>>, ApiError> {
        match list {
            Some(l) if l.len() != n => Err(ApiError::bad(name, format!("field `{name}` has {} items but `query` has {n}", l.len()))),
            other => Ok(other),
        }
    };
    let prompts = same_len("prompts", string_list(obj, "prompts", limits)?)?;
    let labels = same_len("labels", string_list(obj, "labels", limits)?)?;
    queries
        .into_iter()
        .enumerate()
        .map(|(i, q)| {
            let q = q.ok_or_else(|| ApiError::bad("query", format!("field `query`[{i}] must be a string")))?;
            let p = prompts.as_ref().and_then(|p| p[i].as_deref());
            let l = labels.as_ref().and_then(|l| l[i].as_deref());
            Ok(RewardItem::from_query(&q, p, l))
        })
        .collect()
}

pub fn judge_response(v: &PairVerdict) -> Value {
    json!({
        "label": v.label.map(Label::as_str),
        "p_a": v.p_a,
        "consistent": v.consistent.unwrap_or(true),
        "rationales": v.rationales(),
        "failure": v.failure(),
        "votes": v.votes,
        "usage": v.usage,
    })
}

pub fn rank_response(o: &RankOutcome) -> Value {
    json!({
        "best": o.ranking.best,
        "ranking": o.ranking.ranking,
        "scores": o.ranking.scores,
        "comparisons": o.ranking.comparisons,
        "win_rate": o.ranking.win_rate,
        "usage": o.usage,
    })
}
