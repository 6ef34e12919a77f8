//! gramrr-serve: a pairwise judge over HTTP.
//!
//! - `POST /get_reward`: OpenRLHF's remote reward model protocol. Request
//!   `{"query": [str], "prompts"?: [str], "labels"?: [str]}`, response
//!   `{"rewards": [float], "scores": [float], "extra_logs": {...}}`. How a pairwise judge turns
//!   queries into scalars is described in [`reward`]; how a query is split into the user's
//!   question and the response in [`query`].
//! - `POST /v1/judge`: `{"prompt": str | messages, "response_a", "response_b", "mode"?,
//!   "votes"?, "both_orders"?}` → `{"label": "A"|"B"|null, "p_a", "consistent", "rationales",
//!   "failure"}`. `consistent` is `true` when only one order ran.
//! - `POST /v1/rank`: `{"prompt", "responses": [str], "strategy"?, "opponents"?}` →
//!   `{"best", "ranking", "scores", "comparisons"}`.
//! - `POST /v1/completions`, `GET /v1/models`: the OpenAI-compatible API of vLLM and
//!   llama.cpp's server, over the same engine queue ([`openai`]).
//! - `GET /health` (never needs the key) and `GET /metrics` (Prometheus text).
//!
//! Requests from many clients are batched together ([`worker`]): a bounded queue feeds one
//! engine thread, which combines whatever arrives within `max_wait` up to `max_batch` items.
//! A full queue answers 503 with `Retry-After`; an over-long body or list 413; malformed JSON or
//! a missing/mistyped field 400 naming the field; with an API key, a missing or wrong
//! `Authorization: Bearer` (or `X-API-Key`) 401. Shutdown stops accepting connections and
//! answers every request already accepted.

pub mod api;
pub mod metrics;
pub mod openai;
pub mod query;
pub mod reward;
mod worker;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use gramrr_judge::reward::GroupNorm;
use gramrr_judge::{PairwiseJudge, StrategyKind};
use serde_json::json;
use tokio::sync::oneshot;

use crate::api::{ApiError, Limits};
use crate::metrics::Metrics;
use crate::reward::{RewardPlan, RewardResponse};
use crate::worker::{Job, Output, Work, WorkerConfig};

/// Server settings. The judge's own config is the default for every request.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub host: String,
    pub port: u16,
    pub api_key: Option<String>,
    /// Items (pairs, candidates, queries) the worker combines into one batch.
    pub max_batch: usize,
    /// How long the worker waits for more requests after the first one.
    pub max_wait: Duration,
    /// Requests waiting for the engine before new ones get 503.
    pub queue: usize,
    pub max_body_bytes: usize,
    /// Longest `query`, `prompts`, `labels` or `responses` list.
    pub max_items: usize,
    pub max_votes: usize,
    /// `/v1/rank`'s strategy when the request names none.
    pub strategy: StrategyKind,
    /// `/get_reward`'s normalisation within each prompt group.
    pub reward_norm: GroupNorm,
    /// `/get_reward`'s opponents per response within a group; `None` is a full round robin.
    pub reward_opponents: Option<usize>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            host: "127.0.0.1".into(),
            port: 8000,
            api_key: None,
            max_batch: 64,
            max_wait: Duration::from_millis(10),
            queue: 1024,
            max_body_bytes: 16 << 20,
            max_items: 4096,
            max_votes: 64,
            strategy: StrategyKind::Linear,
            reward_norm: GroupNorm::None,
            reward_opponents: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("serve config: {field}: {message}")]
    Config { field: &'static str, message: String },
    #[error("binding {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
    #[error("judge config: {0}")]
    Judge(Box<gramrr_judge::JudgeError>),
}

struct Shared {
    tx: SyncSender<Job>,
    judge: PairwiseJudge,
    config: ServeConfig,
    metrics: Arc<Metrics>,
    completions: Option<openai::CompletionModel>,
}

type AppState = Arc<Shared>;

impl Shared {
    fn limits(&self) -> Limits {
        Limits { max_items: self.config.max_items, max_votes: self.config.max_votes }
    }

    async fn submit(&self, work: Work, size: usize) -> Result<Output, ApiError> {
        let (reply, rx) = oneshot::channel();
        // Counted before the send so that the worker's decrement can never come first.
        self.metrics.queue_depth.fetch_add(1, Ordering::SeqCst);
        match self.tx.try_send(Job { work, size, reply }) {
            Ok(()) => {}
            Err(e) => {
                self.metrics.queue_depth.fetch_sub(1, Ordering::SeqCst);
                let message = match e {
                    TrySendError::Full(_) => {
                        self.metrics.rejected_full();
                        format!("the queue is full ({} requests waiting); retry later", self.config.queue)
                    }
                    TrySendError::Disconnected(_) => "the server is shutting down".to_string(),
                };
                let mut err = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message);
                err.retry_after = Some(1);
                return Err(err);
            }
        }
        match rx.await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(message)) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)),
            Err(_) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the engine worker stopped")),
        }
    }
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rej| ApiError::new(rej.status(), rej.body_text()))
}

async fn judge_handler(State(s): State<AppState>, body: Result<Bytes, BytesRejection>) -> Result<Json<serde_json::Value>, ApiError> {
    let obj = api::parse_object(&body_bytes(body)?)?;
    let (pair, config) = api::parse_judge(&obj, &s.judge.config, &s.limits())?;
    config.validate().map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    match s.submit(Work::Judge { pair, config }, 1).await? {
        Output::Judge(v) => Ok(Json(api::judge_response(&v))),
        _ => unreachable!("a judge job answers with a verdict"),
    }
}

async fn rank_handler(State(s): State<AppState>, body: Result<Bytes, BytesRejection>) -> Result<Json<serde_json::Value>, ApiError> {
    let obj = api::parse_object(&body_bytes(body)?)?;
    let (input, strategy, config) = api::parse_rank(&obj, &s.judge.config, s.config.strategy, &s.limits())?;
    config.validate().map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let size = input.responses.len();
    match s.submit(Work::Rank { input, strategy, config }, size).await? {
        Output::Rank(o) => Ok(Json(api::rank_response(&o))),
        _ => unreachable!("a rank job answers with a ranking"),
    }
}

async fn reward_handler(State(s): State<AppState>, body: Result<Bytes, BytesRejection>) -> Result<Json<RewardResponse>, ApiError> {
    let obj = api::parse_object(&body_bytes(body)?)?;
    let items = api::parse_reward(&obj, &s.limits())?;
    let (plan, pairs) = RewardPlan::new(&items, s.config.reward_opponents, s.config.reward_norm);
    if pairs.is_empty() {
        // Nothing to judge (an empty list, or lone responses without labels).
        return Ok(Json(plan.finish(&[])));
    }
    let size = items.len();
    match s.submit(Work::Reward { pairs, plan, config: s.judge.config.clone() }, size).await? {
        Output::Reward(r) => Ok(Json(r)),
        _ => unreachable!("a reward job answers with rewards"),
    }
}

async fn health(State(s): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "model": s.judge.backend().name(),
        "template": s.judge.template.name,
        "mode": s.judge.config.mode,
        "queue_depth": s.metrics.queue_depth.load(Ordering::SeqCst),
    }))
}

async fn metrics_handler(State(s): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render()).into_response()
}

/// Compares in time independent of where the first difference is.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(headers: &HeaderMap, key: &str) -> bool {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    let x_key = headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim);
    [bearer, x_key].into_iter().flatten().any(|given| same_secret(given.as_bytes(), key.as_bytes()))
}

async fn auth(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(key) = &s.config.api_key {
        if !authorized(req.headers(), key) {
            let mut r = ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong API key (Authorization: Bearer KEY)").into_response();
            r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    next.run(req).await
}

async fn observe(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let endpoint = match req.uri().path() {
        p @ ("/get_reward" | "/v1/judge" | "/v1/rank" | "/v1/completions" | "/v1/models" | "/health" | "/metrics") => p.to_string(),
        _ => "other".to_string(),
    };
    let started = Instant::now();
    let r = next.run(req).await;
    s.metrics.request(&endpoint, r.status().as_u16(), started.elapsed().as_secs_f64());
    r
}

/// How much of an over-long body is read and thrown away before the 413 is sent, and for how long.
/// Past either bound the connection is closed unread, as before.
const DRAIN_MAX_BYTES: u64 = 256 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// Reads every request body here, up to `max_body_bytes`. An over-long body is answered 413 only
/// after the rest of it has been read and discarded (up to [`DRAIN_MAX_BYTES`] or [`DRAIN_TIME`]),
/// as nginx's lingering close does. Otherwise the server would close the connection while the
/// client is still sending, and clients that write the whole body before reading (Python's
/// `urllib` and `requests`, so OpenRLHF's reward client) see a reset or a broken pipe instead of
/// the status. Discarded bytes are never kept, so draining costs no memory.
async fn bounded_body(State(s): State<AppState>, req: Request, next: Next) -> Response {
    use http_body_util::BodyExt;
    let limit = s.config.max_body_bytes as u64;
    let (parts, mut body) = req.into_parts();
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let mut over = declared.is_some_and(|n| n > limit);
    let mut kept = Vec::new();
    let mut total = 0u64;
    let mut drain_deadline = over.then(|| tokio::time::Instant::now() + DRAIN_TIME);
    loop {
        let frame = match drain_deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, body.frame()).await {
                Ok(f) => f,
                Err(_) => break,
            },
            None => body.frame().await,
        };
        let data = match frame {
            None => break,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue, // trailers
            },
            Some(Err(e)) => {
                if over {
                    break;
                }
                return ApiError::new(StatusCode::BAD_REQUEST, format!("reading the request body: {e}")).into_response();
            }
        };
        total += data.len() as u64;
        if !over && total > limit {
            over = true;
            kept = Vec::new();
            drain_deadline = Some(tokio::time::Instant::now() + DRAIN_TIME);
        }
        if over {
            if total > DRAIN_MAX_BYTES {
                break;
            }
        } else {
            kept.extend_from_slice(&data);
        }
    }
    if over {
        let size = declared.map_or_else(|| format!("over {limit}"), |n| n.to_string());
        let mut r = ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body of {size} bytes is over the server's limit of {limit} bytes (--max-body-bytes)"),
        )
        .into_response();
        r.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
        return r;
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(kept))).await
}

fn router(state: AppState) -> Router {
    let body_limit = state.config.max_body_bytes;
    Router::new()
        .route("/get_reward", post(reward_handler))
        .route("/v1/judge", post(judge_handler))
        .route("/v1/rank", post(rank_handler))
        .route("/metrics", get(metrics_handler))
        .route("/v1/completions", post(openai::completions_handler))
        .route("/v1/models", get(openai::models_handler))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth))
        .route("/health", get(health))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), bounded_body))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// A running server.
pub struct ServerHandle {
    addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    worker: std::thread::JoinHandle<()>,
    stop: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
}

impl ServerHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections, answers every request already accepted, then stops the
    /// engine worker once its queue is empty.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        let _ = self.shutdown.send(());
        let served = self.server.await.map_err(|e| std::io::Error::other(e.to_string()))?;
        self.stop.store(true, Ordering::SeqCst);
        let worker = self.worker;
        tokio::task::spawn_blocking(move || worker.join()).await.map_err(|e| std::io::Error::other(e.to_string()))?.ok();
        served?;
        Ok(())
    }
}

/// Binds and starts serving on the current tokio runtime.
pub async fn start(config: ServeConfig, judge: PairwiseJudge) -> Result<ServerHandle, ServeError> {
    start_with(config, judge, None).await
}

/// [`start`], also answering the OpenAI routes ([`openai`]) from `completions`' engine.
pub async fn start_with(
    config: ServeConfig,
    judge: PairwiseJudge,
    completions: Option<openai::CompletionModel>,
) -> Result<ServerHandle, ServeError> {
    let positive = |field, v: usize| {
        if v == 0 { Err(ServeError::Config { field, message: "must be at least 1".into() }) } else { Ok(()) }
    };
    positive("queue", config.queue)?;
    positive("max_batch", config.max_batch)?;
    positive("max_items", config.max_items)?;
    positive("max_votes", config.max_votes)?;
    judge.config.validate().map_err(|e| ServeError::Judge(Box::new(e)))?;
    let addr = format!("{}:{}", config.host, config.port);
    let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|source| ServeError::Bind { addr: addr.clone(), source })?;
    let local = listener.local_addr()?;
    let metrics = Arc::new(Metrics::new(config.queue));
    let (tx, rx) = sync_channel(config.queue);
    let stop = Arc::new(AtomicBool::new(false));
    let worker = worker::spawn(
        judge.clone(),
        rx,
        WorkerConfig { max_batch: config.max_batch, max_wait: config.max_wait },
        metrics.clone(),
        stop.clone(),
    );
    let state = Arc::new(Shared { tx, judge, config, metrics: metrics.clone(), completions });
    let app = router(state);
    let (shutdown, signal) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = signal.await;
            })
            .await
    });
    tracing::info!(%local, "gramrr serve listening");
    Ok(ServerHandle { addr: local, shutdown, server, worker, stop, metrics })
}

/// Serves until Ctrl-C (or SIGTERM on Unix), then shuts down gracefully. Blocks.
pub fn run(config: ServeConfig, judge: PairwiseJudge, completions: Option<openai::CompletionModel>) -> Result<(), ServeError> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let handle = start_with(config, judge, completions).await?;
        eprintln!("gramrr serve: listening on http://{}", handle.addr());
        shutdown_signal().await;
        eprintln!("gramrr serve: shutting down; finishing accepted requests");
        handle.shutdown().await
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
