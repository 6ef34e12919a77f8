//! A `gramrr serve` reward server as the reward, over its HTTP API: `/v1/judge` against the
//! reference answer where a prompt has one (reward = `p_a`, the response being A), `/v1/rank`
//! with a round robin otherwise (Bradley–Terry scores or win rates).
//!
//! A plain HTTP/1.1 client over `std::net` (one request per connection, `http://` only): the
//! server is local or on a private network, and the workspace has no HTTP client crate.
//! Requests of a step go out concurrently (up to 16 at a time) so the server can batch them.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{json, Value};

use crate::error::{Result, RlError};
use crate::reward::{GroupScore, RewardBatch, RewardGroup, RewardModel};

pub struct ServerReward {
    /// `http://host:port` (a trailing path prefix is kept).
    pub url: String,
    pub api_key: Option<String>,
    pub opponents: Option<usize>,
    pub score: GroupScore,
    pub use_reference: bool,
    pub timeout: Duration,
}

impl ServerReward {
    pub fn new(url: impl Into<String>) -> Self {
        ServerReward {
            url: url.into().trim_end_matches('/').to_string(),
            api_key: None,
            opponents: None,
            score: GroupScore::BradleyTerry,
            use_reference: true,
            timeout: Duration::from_secs(600),
        }
    }

    fn err(&self, m: String) -> RlError {
        RlError::RewardServer { url: self.url.clone(), message: m }
    }

    /// POSTs JSON to `path` and returns the JSON answer of a 200.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let rest = self.url.strip_prefix("http://").ok_or_else(|| self.err("only http:// URLs are supported".into()))?;
        let (host, prefix) = rest.split_once('/').map_or((rest, String::new()), |(h, p)| (h, format!("/{p}")));
        let mut s = TcpStream::connect(host).map_err(|e| self.err(format!("cannot connect: {e}")))?;
        s.set_read_timeout(Some(self.timeout)).ok();
        let body = body.to_string();
        let mut req = format!(
            "POST {prefix}{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(k) = &self.api_key {
            req.push_str(&format!("Authorization: Bearer {k}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(&body);
        s.write_all(req.as_bytes()).map_err(|e| self.err(format!("{path}: sending: {e}")))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).map_err(|e| self.err(format!("{path}: reading the answer: {e}")))?;
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| self.err(format!("{path}: not an HTTP answer")))?;
        let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| self.err(format!("{path}: no status line")))?;
        let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
        let body = if chunked { dechunk(body) } else { body.to_string() };
        if status != 200 {
            return Err(self.err(format!("{path}: HTTP {status}: {}", body.trim())));
        }
        serde_json::from_str(&body).map_err(|e| self.err(format!("{path}: answer is not JSON ({e})")))
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

impl RewardModel for ServerReward {
    fn name(&self) -> String {
        format!("server({})", self.url)
    }

    fn rewards(&self, groups: &[RewardGroup]) -> Result<RewardBatch> {
        // Every request of the step, then all of them at once.
        let mut reqs: Vec<(usize, Option<usize>, &str, Value)> = vec![];
        for (i, g) in groups.iter().enumerate() {
            match (&g.reference, self.use_reference) {
                (Some(r), true) => {
                    for (k, resp) in g.responses.iter().enumerate() {
                        reqs.push((i, Some(k), "/v1/judge", json!({"prompt": g.prompt, "response_a": resp, "response_b": r})));
                    }
                }
                _ => {
                    let mut body = json!({"prompt": g.prompt, "responses": g.responses, "strategy": "round-robin"});
                    if let Some(k) = self.opponents {
                        body["opponents"] = json!(k);
                    }
                    reqs.push((i, None, "/v1/rank", body));
                }
            }
        }
        let mut answers: Vec<Option<Result<Value>>> = (0..reqs.len()).map(|_| None).collect();
        for (chunk, slots) in reqs.chunks(16).zip(answers.chunks_mut(16)) {
            std::thread::scope(|s| {
                let hs: Vec<_> = chunk.iter().map(|(_, _, path, body)| s.spawn(move || self.post(path, body))).collect();
                for (slot, h) in slots.iter_mut().zip(hs) {
                    *slot = Some(h.join().expect("a request thread does not panic"));
                }
            });
        }
        let mut rewards: Vec<Vec<f64>> = groups.iter().map(|g| vec![0.0; g.responses.len()]).collect();
        let mut calls = 0;
        for ((i, k, path, _), a) in reqs.iter().zip(answers) {
            let v = a.expect("every request answered")?;
            match k {
                Some(k) => {
                    rewards[*i][*k] = v.get("p_a").and_then(Value::as_f64).ok_or_else(|| self.err(format!("{path}: no numeric \"p_a\" in {v}")))?;
                    calls += 1;
                }
                None => {
                    let field = match self.score {
                        GroupScore::BradleyTerry => "scores",
                        GroupScore::WinRate => "win_rate",
                    };
                    let xs: Vec<f64> = v
                        .get(field)
                        .and_then(Value::as_array)
                        .map(|a| a.iter().filter_map(Value::as_f64).collect())
                        .ok_or_else(|| self.err(format!("{path}: no \"{field}\" list in the answer")))?;
                    if xs.len() != groups[*i].responses.len() {
                        return Err(self.err(format!("{path}: {} {field} for {} responses", xs.len(), groups[*i].responses.len())));
                    }
                    rewards[*i] = xs;
                    calls += v.get("comparisons").and_then(Value::as_u64).unwrap_or(0) as usize;
                }
            }
        }
        Ok(RewardBatch { rewards, calls, parts: vec![] })
    }
}
