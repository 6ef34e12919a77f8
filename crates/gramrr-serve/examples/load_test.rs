//! A bounded load test for a running `gramrr serve`: exactly `--requests` POSTs from
//! `--clients` concurrent connections, then a JSON line with throughput, latency percentiles and
//! status counts. It stops by itself; every request has a timeout.
//!
//! ```text
//! cargo run --release -p gramrr-serve --example load_test -- \
//!     --url 127.0.0.1:8000 --pairs pairs.jsonl --requests 500 --clients 64 [--path /v1/judge]
//! ```
//! `--pairs` is JSONL with `prompt`, `response_a`, `response_b` (as `gramrr demo` writes
//! `data/test.jsonl`); requests cycle through it. `--path /get_reward` sends each pair's two
//! responses as one OpenRLHF query batch instead.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Args {
    url: SocketAddr,
    pairs: String,
    requests: usize,
    clients: usize,
    path: String,
    timeout: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        url: "127.0.0.1:8000".parse().unwrap(),
        pairs: String::new(),
        requests: 500,
        clients: 64,
        path: "/v1/judge".into(),
        timeout: Duration::from_secs(120),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => a.url = val()?.trim_start_matches("http://").parse().map_err(|e| format!("--url: {e}"))?,
            "--pairs" => a.pairs = val()?,
            "--requests" => a.requests = val()?.parse().map_err(|e| format!("--requests: {e}"))?,
            "--clients" => a.clients = val()?.parse().map_err(|e| format!("--clients: {e}"))?,
            "--path" => a.path = val()?,
            "--timeout-s" => a.timeout = Duration::from_secs(val()?.parse().map_err(|e| format!("--timeout-s: {e}"))?),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.pairs.is_empty() {
        return Err("--pairs FILE.jsonl is required".into());
    }
    Ok(a)
}

fn body_for(path: &str, pair: &Value) -> Value {
    let prompt = pair["prompt"].clone();
    if path == "/get_reward" {
        let p = prompt.as_str().unwrap_or_default().to_string();
        json!({"query": [pair["response_a"], pair["response_b"]], "prompts": [p, p]})
    } else {
        json!({"prompt": prompt, "response_a": pair["response_a"], "response_b": pair["response_b"], "both_orders": false})
    }
}

/// One POST on its own connection; returns the status code.
async fn post(addr: SocketAddr, path: &str, body: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(addr).await?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let head = String::from_utf8_lossy(&buf[..buf.len().min(64)]).into_owned();
    head.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| std::io::Error::other(format!("no status line in {head:?}")))
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let a = parse_args()?;
    let text = std::fs::read_to_string(&a.pairs).map_err(|e| format!("{}: {e}", a.pairs))?;
    let bodies: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str::<Value>(l).map(|v| body_for(&a.path, &v).to_string()).map_err(|e| format!("{}:{}: {e}", a.pairs, i + 1)))
        .collect::<Result<_, _>>()?;
    if bodies.is_empty() {
        return Err(format!("{}: no pairs", a.pairs));
    }
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..a.clients {
        let (bodies, next, path, url, timeout, total) = (bodies.clone(), next.clone(), a.path.clone(), a.url, a.timeout, a.requests);
        tasks.push(tokio::spawn(async move {
            let mut out: Vec<(f64, Result<u16, String>)> = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return out;
                }
                let t = Instant::now();
                let r = match tokio::time::timeout(timeout, post(url, &path, &bodies[i % bodies.len()])).await {
                    Ok(Ok(code)) => Ok(code),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("timeout".into()),
                };
                out.push((t.elapsed().as_secs_f64() * 1000.0, r));
            }
        }));
    }
    let mut latencies = Vec::new();
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for t in tasks {
        for (ms, r) in t.await.map_err(|e| e.to_string())? {
            let key = match r {
                Ok(code) => code.to_string(),
                Err(e) => e,
            };
            if key == "200" {
                latencies.push(ms);
            }
            *statuses.entry(key).or_default() += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let report = json!({
        "path": a.path,
        "requests": a.requests,
        "clients": a.clients,
        "seconds": seconds,
        "ok": latencies.len(),
        "requests_per_s": latencies.len() as f64 / seconds,
        "latency_ms": {"p50": percentile(&latencies, 0.5), "p90": percentile(&latencies, 0.9), "p99": percentile(&latencies, 0.99), "max": latencies.last()},
        "statuses": statuses,
    });
    println!("{report}");
    Ok(())
}
