//! The replicas behind one remote model, and how a batch of requests is spread over them.
//!
//! - At most `max_in_flight` requests per replica; each request goes to the live replica with
//!   the fewest outstanding, except that requests with the same affinity key (the two orders of
//!   a pair, the k samples of a prompt) follow the first one's replica while it is up, for its
//!   prefix cache.
//! - Connection errors, timeouts, 429 and 5xx are retried with exponential backoff, up to
//!   `retries` times per request. A replica that fails to connect or times out is taken out for
//!   `recheck_after`; then one request checks `/models` before it takes work again. Its
//!   requests go to the others meanwhile.
//! - Every request has a deadline (`request_timeout`): a replica that hangs costs one timeout.
//! - Each request's answer is placed once, by its index: a re-sent request can never produce
//!   two answers for one item.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::RemoteError;

/// How requests are sent. Defaults suit a GPU server a few milliseconds to minutes away.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub max_in_flight: usize,
    pub request_timeout: Duration,
    pub retries: usize,
    /// First retry delay; doubles with each further attempt.
    pub backoff: Duration,
    pub recheck_after: Duration,
    pub api_key: Option<String>,
    /// A progress bar on stderr for batches of at least this many requests (0: never).
    pub progress_from: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_in_flight: 16,
            request_timeout: Duration::from_secs(600),
            retries: 5,
            backoff: Duration::from_millis(200),
            recheck_after: Duration::from_secs(10),
            api_key: None,
            progress_from: 0,
        }
    }
}

/// One request of a batch.
pub(crate) struct Call {
    /// Requests with the same key go to the same replica while it is up.
    pub affinity: u64,
    pub body: Value,
}

#[derive(Debug, Default)]
struct ReplicaState {
    outstanding: usize,
    /// Out of rotation until then.
    down_until: Option<Instant>,
    /// A request is checking whether it is back.
    checking: bool,
}

/// Why one attempt failed, and whether trying again may help.
enum Failure {
    /// Connection refused/reset, timeout: the replica is taken out.
    Unreachable(String),
    /// 429 or 5xx: the replica is alive but busy or failing; retried.
    Retry(String),
    /// Any other answer (400, 404, unparseable): retrying would give the same.
    Fatal(String),
}

pub(crate) struct Pool {
    pub urls: Vec<String>,
    cfg: PoolConfig,
    agent: ureq::Agent,
    probe_agent: ureq::Agent,
    state: Mutex<Vec<ReplicaState>>,
    changed: Condvar,
    /// Totals for the progress line and for reports.
    pub requests_done: AtomicU64,
    pub retries_done: AtomicU64,
    pub tokens_done: AtomicU64,
    /// When the first batch started, for the rates.
    pub first_use: Mutex<Option<Instant>>,
}

fn agent(timeout: Duration, idle: usize) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_idle_connections_per_host(idle.max(1))
        .max_idle_connections(idle.max(1) * 64)
        .build()
        .into()
}

impl Pool {
    pub fn new(urls: Vec<String>, cfg: PoolConfig) -> Self {
        let n = urls.len();
        Pool {
            agent: agent(cfg.request_timeout, cfg.max_in_flight),
            probe_agent: agent(Duration::from_secs(5).min(cfg.request_timeout), 1),
            urls,
            cfg,
            state: Mutex::new((0..n).map(|_| ReplicaState::default()).collect()),
            changed: Condvar::new(),
            requests_done: AtomicU64::new(0),
            retries_done: AtomicU64::new(0),
            tokens_done: AtomicU64::new(0),
            first_use: Mutex::new(None),
        }
    }

    /// Takes a replica out until its recheck time.
    pub fn mark_down(&self, replica: usize) {
        self.state.lock().unwrap()[replica].down_until = Some(Instant::now() + self.cfg.recheck_after);
    }

    pub fn replicas_up(&self) -> usize {
        let now = Instant::now();
        self.state.lock().unwrap().iter().filter(|r| r.down_until.is_none_or(|t| t <= now)).count()
    }

    fn with_key(&self, req: ureq::RequestBuilder<ureq::typestate::WithBody>) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        match &self.cfg.api_key {
            Some(k) => req.header("Authorization", format!("Bearer {k}")),
            None => req,
        }
    }

    /// `GET {url}/models` with the short probe timeout.
    pub fn get_models(&self, replica: usize) -> Result<Value, String> {
        let url = format!("{}/models", self.urls[replica]);
        let mut req = self.probe_agent.get(&url);
        if let Some(k) = &self.cfg.api_key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        let mut resp = req.call().map_err(|e| format!("GET {url}: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().map_err(|e| format!("GET {url}: reading the answer: {e}"))?;
        if status != 200 {
            return Err(format!("GET {url}: HTTP {status}: {}", clip(&text)));
        }
        serde_json::from_str(&text).map_err(|e| format!("GET {url}: not JSON ({e}): {}", clip(&text)))
    }

    /// One POST, one attempt: for a request form the server may refuse with a 5xx that retrying
    /// cannot change (llama-cpp-python answers a token-id `prompt` with a 500 validation error).
    pub fn post_one_attempt(&self, replica: usize, path: &str, body: &Value) -> Result<Value, String> {
        match self.attempt(&self.agent, replica, path, body) {
            Ok(v) => Ok(v),
            Err(Failure::Unreachable(m) | Failure::Retry(m) | Failure::Fatal(m)) => Err(m),
        }
    }

    /// One POST to one replica, retried (with backoff) on 429 and 5xx only: the probe's
    /// requests, where any other refusal means the capability is missing.
    pub fn post_once(&self, replica: usize, path: &str, body: &Value) -> Result<Value, String> {
        let mut tries = 0;
        loop {
            match self.attempt(&self.agent, replica, path, body) {
                Ok(v) => return Ok(v),
                Err(Failure::Retry(m)) if tries >= self.cfg.retries => return Err(m),
                Err(Failure::Retry(_)) => {
                    std::thread::sleep(self.cfg.backoff * 2u32.saturating_pow(tries.min(16) as u32));
                    tries += 1;
                }
                Err(Failure::Unreachable(m) | Failure::Fatal(m)) => return Err(m),
            }
        }
    }

    fn attempt(&self, agent: &ureq::Agent, replica: usize, path: &str, body: &Value) -> Result<Value, Failure> {
        let url = format!("{}{path}", self.urls[replica]);
        let req = self.with_key(agent.post(&url).header("Content-Type", "application/json"));
        let payload = serde_json::to_vec(body).expect("a JSON value serialises");
        let mut resp = match req.send(&payload[..]) {
            Ok(r) => r,
            Err(e) => return Err(Failure::Unreachable(format!("POST {url}: {e}"))),
        };
        let status = resp.status().as_u16();
        let text = match resp.body_mut().with_config().limit(1 << 30).read_to_string() {
            Ok(t) => t,
            Err(e) => return Err(Failure::Unreachable(format!("POST {url}: reading the answer: {e}"))),
        };
        match status {
            200 => serde_json::from_str(&text).map_err(|e| Failure::Fatal(format!("POST {url}: the answer is not JSON ({e}): {}", clip(&text)))),
            429 | 500..=599 => Err(Failure::Retry(format!("POST {url}: HTTP {status}: {}", clip(&text)))),
            _ => Err(Failure::Fatal(format!("POST {url}: HTTP {status}: {}", clip(&text)))),
        }
    }

    /// Picks a replica for a request, blocking while all are full or down; `true` when the
    /// replica is back from a time out and this request must check it first.
    fn acquire(&self, affinity: u64, pinned: &Mutex<HashMap<u64, usize>>) -> (usize, bool) {
        let mut st = self.state.lock().unwrap();
        loop {
            let now = Instant::now();
            let up = |r: &ReplicaState| r.down_until.is_none_or(|t| t <= now) && !r.checking;
            let pin = pinned.lock().unwrap().get(&affinity).copied();
            let choice = match pin {
                Some(p) if up(&st[p]) => (st[p].outstanding < self.cfg.max_in_flight).then_some(p),
                _ => (0..st.len()).filter(|&i| up(&st[i]) && st[i].outstanding < self.cfg.max_in_flight).min_by_key(|&i| st[i].outstanding),
            };
            if let Some(i) = choice {
                st[i].outstanding += 1;
                // Its time out is over: this request checks it first.
                let check = st[i].down_until.is_some();
                st[i].checking = check;
                pinned.lock().unwrap().insert(affinity, i);
                return (i, check);
            }
            // Everything full or down: wait for a release, or for the first one to come back.
            let wake = st.iter().filter_map(|r| r.down_until).filter(|&t| t > now).min().map(|t| t - now);
            let wait = wake.unwrap_or(Duration::from_millis(200)).min(Duration::from_millis(200));
            st = self.changed.wait_timeout(st, wait).unwrap().0;
        }
    }

    fn release(&self, replica: usize, outcome: Option<bool>) {
        let mut st = self.state.lock().unwrap();
        let r = &mut st[replica];
        r.outstanding -= 1;
        match outcome {
            Some(true) => {
                r.down_until = None;
                r.checking = false;
            }
            Some(false) => {
                r.down_until = Some(Instant::now() + self.cfg.recheck_after);
                r.checking = false;
            }
            None => {}
        }
        self.changed.notify_all();
    }

    /// Sends every call to `path` and returns the answers in order; the first call that fails
    /// for good fails the batch (after the calls already in flight finish).
    pub fn run(&self, path: &str, calls: Vec<Call>, label: &str) -> Result<Vec<Value>, RemoteError> {
        let n = calls.len();
        if n == 0 {
            return Ok(vec![]);
        }
        let queue: Mutex<VecDeque<(usize, usize)>> = Mutex::new((0..n).map(|i| (i, 0)).collect());
        let answers: Mutex<Vec<Option<Value>>> = Mutex::new(vec![None; n]);
        let fatal: Mutex<Option<String>> = Mutex::new(None);
        let pinned: Mutex<HashMap<u64, usize>> = Mutex::new(HashMap::new());
        let pending = Mutex::new(n);
        let bar = self.progress(n, label);
        self.first_use.lock().unwrap().get_or_insert_with(Instant::now);
        let started = Instant::now();
        let tokens = AtomicU64::new(0);
        let threads = (self.urls.len() * self.cfg.max_in_flight).min(n).max(1);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| loop {
                    if fatal.lock().unwrap().is_some() {
                        return;
                    }
                    let Some((i, tries)) = queue.lock().unwrap().pop_front() else {
                        // Nothing queued, but a failing request may come back: wait while any is open.
                        if *pending.lock().unwrap() == 0 {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    let call = &calls[i];
                    let (replica, check) = self.acquire(call.affinity, &pinned);
                    if check {
                        if let Err(e) = self.get_models(replica) {
                            self.release(replica, Some(false));
                            pinned.lock().unwrap().remove(&call.affinity);
                            if tries >= self.cfg.retries {
                                fatal.lock().unwrap().get_or_insert(format!("no replica answers; the last check: {e}"));
                                return;
                            }
                            queue.lock().unwrap().push_front((i, tries + 1));
                            continue;
                        }
                    }
                    match self.attempt(&self.agent, replica, path, &call.body) {
                        Ok(v) => {
                            self.release(replica, Some(true));
                            if let Some(u) = v.get("usage").and_then(|u| u.get("total_tokens")).and_then(Value::as_u64) {
                                tokens.fetch_add(u, Ordering::Relaxed);
                                self.tokens_done.fetch_add(u, Ordering::Relaxed);
                            }
                            let mut a = answers.lock().unwrap();
                            if a[i].is_none() {
                                a[i] = Some(v);
                                *pending.lock().unwrap() -= 1;
                            }
                            drop(a);
                            self.requests_done.fetch_add(1, Ordering::Relaxed);
                            if let Some(b) = &bar {
                                let secs = started.elapsed().as_secs_f64().max(1e-9);
                                b.inc(1);
                                b.set_message(format!(
                                    "{:.1} req/s, {:.0} tok/s, replicas up {}/{}",
                                    b.position() as f64 / secs,
                                    tokens.load(Ordering::Relaxed) as f64 / secs,
                                    self.replicas_up(),
                                    self.urls.len()
                                ));
                            }
                        }
                        Err(failure) => {
                            let (message, unreachable) = match failure {
                                Failure::Fatal(m) => {
                                    self.release(replica, None);
                                    fatal.lock().unwrap().get_or_insert(m);
                                    return;
                                }
                                Failure::Unreachable(m) => (m, true),
                                Failure::Retry(m) => (m, false),
                            };
                            self.release(replica, if unreachable { Some(false) } else { None });
                            if unreachable {
                                // The pair's other requests pick a live replica from now on.
                                pinned.lock().unwrap().remove(&call.affinity);
                            }
                            if tries >= self.cfg.retries {
                                fatal.lock().unwrap().get_or_insert(format!("gave up after {} attempts: {message}", tries + 1));
                                return;
                            }
                            self.retries_done.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(self.cfg.backoff * 2u32.saturating_pow(tries.min(16) as u32));
                            queue.lock().unwrap().push_back((i, tries + 1));
                        }
                    }
                });
            }
        });
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        if let Some(m) = fatal.into_inner().unwrap() {
            return Err(RemoteError::Request(m));
        }
        Ok(answers.into_inner().unwrap().into_iter().map(|a| a.expect("every call answered")).collect())
    }

    /// `requests/s, tokens/s, replicas up` since the first batch, for progress lines.
    pub fn status_line(&self) -> String {
        let secs = self.first_use.lock().unwrap().map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0).max(1e-9);
        format!(
            "{:.1} req/s, {:.0} tok/s, replicas up {}/{}",
            self.requests_done.load(Ordering::Relaxed) as f64 / secs,
            self.tokens_done.load(Ordering::Relaxed) as f64 / secs,
            self.replicas_up(),
            self.urls.len()
        )
    }

    fn progress(&self, n: usize, label: &str) -> Option<ProgressBar> {
        if self.cfg.progress_from == 0 || n < self.cfg.progress_from {
            return None;
        }
        let b = ProgressBar::new(n as u64);
        b.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}, eta {eta})")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        b.set_prefix(label.to_string());
        Some(b)
    }
}

fn clip(s: &str) -> String {
    let s = s.trim();
    if s.len() <= 300 {
        return s.to_string();
    }
    let mut end = 300;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
