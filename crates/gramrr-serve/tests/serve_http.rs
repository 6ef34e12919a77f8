//! The server on loopback with a fake backend: batching, equality with offline judging, every
//! error path, disconnects and graceful shutdown.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{post, request};
use gramrr_data::prompt::JudgeTemplate;
use gramrr_judge::testing::OracleBackend;
use gramrr_judge::{JudgeConfig, PairInput, PairwiseJudge};
use gramrr_model::backend::SamplingParams;
use gramrr_serve::{start, ServeConfig, ServerHandle};
use serde_json::json;
use tokio::io::AsyncWriteExt;

fn sampled_judge(backend: Arc<OracleBackend>) -> PairwiseJudge {
    let config = JudgeConfig {
        votes: 3,
        sampling: SamplingParams { temperature: 0.8, max_new_tokens: 64, seed: 11, ..Default::default() },
        ..JudgeConfig::default()
    };
    PairwiseJudge::new(backend, JudgeTemplate::gram_rr(), config)
}

fn loopback(config: ServeConfig) -> ServeConfig {
    ServeConfig { host: "127.0.0.1".into(), port: 0, ..config }
}

async fn server(backend: Arc<OracleBackend>, config: ServeConfig) -> (ServerHandle, PairwiseJudge) {
    let judge = sampled_judge(backend);
    (start(loopback(config), judge.clone()).await.unwrap(), judge)
}

fn pair(i: usize) -> PairInput {
    PairInput::new(format!("Question {i}?"), format!("first answer q={}", i % 7), format!("second answer q={}", (i * 3) % 5))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_requests_from_64_clients_match_offline_judging() {
    let backend = Arc::new(OracleBackend::default().with_noise(0.3).with_fail_rate(0.05).with_delay(Duration::from_millis(2)));
    let (handle, judge) =
        server(backend.clone(), ServeConfig { max_batch: 32, max_wait: Duration::from_millis(5), ..ServeConfig::default() }).await;
    let addr = handle.addr();
    const N: usize = 500;
    const CLIENTS: usize = 64;
    let mut tasks = vec![];
    for c in 0..CLIENTS {
        tasks.push(tokio::spawn(async move {
            let mut got = vec![];
            // A bounded loop: each client sends its share and stops.
            for i in (c..N).step_by(CLIENTS) {
                let p = pair(i);
                let r = post(addr, "/v1/judge", &json!({"prompt": p.user_input, "response_a": p.response_a, "response_b": p.response_b})).await;
                assert_eq!(r.status, 200, "{}", r.body);
                got.push((i, r.json()));
            }
            got
        }));
    }
    let mut answers = vec![serde_json::Value::Null; N];
    let all = tokio::time::timeout(Duration::from_secs(120), futures_join(tasks)).await.expect("the load test finishes");
    for (i, v) in all.into_iter().flatten() {
        answers[i] = v;
    }
    assert!(answers.iter().all(|a| !a.is_null()), "every request answered");

    let pairs: Vec<PairInput> = (0..N).map(pair).collect();
    let offline = tokio::task::spawn_blocking(move || judge.judge_batch(&pairs).unwrap()).await.unwrap();
    for (i, (a, v)) in answers.iter().zip(&offline).enumerate() {
        assert_eq!(a["label"], json!(v.label.map(|l| l.as_str())), "item {i}");
        assert_eq!(a["p_a"].as_f64().unwrap(), v.p_a, "item {i}");
        assert_eq!(a["rationales"], json!(v.rationales()), "item {i}");
        assert_eq!(a["consistent"], json!(v.consistent.unwrap_or(true)), "item {i}");
        assert_eq!(a["failure"], json!(v.failure()), "item {i}");
    }
    // Requests were combined: far fewer engine batches than requests.
    let batches = handle.metrics.batches();
    assert!(batches < N as u64 / 2, "{batches} batches for {N} requests");
    let metrics = request(addr, "GET", "/metrics", &[], "").await;
    assert!(metrics.body.contains("gramrr_requests_total{endpoint=\"/v1/judge\",status=\"200\"} 500"), "{}", metrics.body);
    assert!(metrics.body.contains("gramrr_queue_depth 0"));
    assert!(metrics.body.contains("gramrr_batch_items_bucket{le=\"32\"}"));
    handle.shutdown().await.unwrap();
}

async fn futures_join<T: Send + 'static>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = vec![];
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn bad_requests_answer_400_naming_the_field() {
    let (handle, _) = server(Arc::new(OracleBackend::default()), ServeConfig::default()).await;
    let addr = handle.addr();
    let r = request(addr, "POST", "/v1/judge", &[], "{not json").await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().starts_with("malformed JSON"));
    for (body, field) in [
        (json!({"prompt": "q", "response_a": "a"}), "response_b"),
        (json!({"response_a": "a", "response_b": "b"}), "prompt"),
        (json!({"prompt": "q", "response_a": 3, "response_b": "b"}), "response_a"),
        (json!({"prompt": "q", "response_a": "a", "response_b": "b", "votes": 0}), "votes"),
        (json!({"prompt": "q", "response_a": "a", "response_b": "b", "mode": "guess"}), "mode"),
        (json!({"prompt": [{"role": "user"}], "response_a": "a", "response_b": "b"}), "prompt"),
    ] {
        let r = post(addr, "/v1/judge", &body).await;
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(r.json()["field"], field, "{}", r.body);
    }
    let r = post(addr, "/v1/rank", &json!({"prompt": "q", "responses": []})).await;
    assert_eq!((r.status, r.json()["field"].clone()), (400, json!("responses")));
    let r = post(addr, "/v1/rank", &json!({"prompt": "q", "responses": ["a"], "strategy": "bogo"})).await;
    assert_eq!((r.status, r.json()["field"].clone()), (400, json!("strategy")));
    let r = post(addr, "/get_reward", &json!({"prompts": ["p"]})).await;
    assert_eq!((r.status, r.json()["field"].clone()), (400, json!("query")));
    let r = post(addr, "/get_reward", &json!({"query": ["a", "b"], "prompts": ["p"]})).await;
    assert_eq!((r.status, r.json()["field"].clone()), (400, json!("prompts")));
    let r = request(addr, "POST", "/get_reward", &[], "[1, 2]").await;
    assert_eq!(r.status, 400);
    handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn oversized_bodies_and_lists_answer_413() {
    let config = ServeConfig { max_body_bytes: 2048, max_items: 4, ..ServeConfig::default() };
    let (handle, _) = server(Arc::new(OracleBackend::default()), config).await;
    let addr = handle.addr();
    let big = "x".repeat(4096);
    let r = post(addr, "/v1/judge", &json!({"prompt": big, "response_a": "a", "response_b": "b"})).await;
    assert_eq!(r.status, 413);
    let r = post(addr, "/get_reward", &json!({"query": ["a", "b", "c", "d", "e"]})).await;
    assert_eq!((r.status, r.json()["field"].clone()), (413, json!("query")));
    let r = post(addr, "/v1/rank", &json!({"prompt": "q", "responses": ["a", "b", "c", "d", "e"]})).await;
    assert_eq!((r.status, r.json()["field"].clone()), (413, json!("responses")));
    handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn api_key_is_required_except_for_health() {
    let config = ServeConfig { api_key: Some("s3cret".into()), ..ServeConfig::default() };
    let (handle, _) = server(Arc::new(OracleBackend::default()), config).await;
    let addr = handle.addr();
    let body = json!({"prompt": "q", "response_a": "a q=1", "response_b": "b q=0"}).to_string();
    let r = request(addr, "POST", "/v1/judge", &[], &body).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.headers.get("www-authenticate").map(String::as_str), Some("Bearer"));
    let r = request(addr, "POST", "/v1/judge", &[("Authorization", "Bearer wrong")], &body).await;
    assert_eq!(r.status, 401);
    let r = request(addr, "GET", "/metrics", &[], "").await;
    assert_eq!(r.status, 401);
    let r = request(addr, "POST", "/v1/judge", &[("Authorization", "Bearer s3cret")], &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["label"], "A");
    let r = request(addr, "POST", "/v1/judge", &[("X-API-Key", "s3cret")], &body).await;
    assert_eq!(r.status, 200);
    let r = request(addr, "GET", "/health", &[], "").await;
    assert_eq!((r.status, r.json()["status"].clone()), (200, json!("ok")));
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_answers_503_with_retry_after_instead_of_hanging() {
    let backend = Arc::new(OracleBackend::default().with_delay(Duration::from_millis(1000)));
    let config = ServeConfig { queue: 1, max_batch: 1, max_wait: Duration::ZERO, ..ServeConfig::default() };
    let (handle, _) = server(backend, config).await;
    let addr = handle.addr();
    let body = |i: usize| json!({"prompt": format!("q{i}"), "response_a": "a", "response_b": "b"});
    // The first is taken by the engine, the second waits in the one-place queue...
    let first = tokio::spawn(async move { post(addr, "/v1/judge", &body(1)).await.status });
    tokio::time::sleep(Duration::from_millis(250)).await;
    let second = tokio::spawn(async move { post(addr, "/v1/judge", &body(2)).await.status });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...so the third is turned away at once.
    let started = std::time::Instant::now();
    let r = post(addr, "/v1/judge", &body(3)).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.headers.get("retry-after").map(String::as_str), Some("1"));
    assert!(started.elapsed() < Duration::from_millis(500), "turned away without waiting for the engine");
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(second.await.unwrap(), 200);
    let m = request(addr, "GET", "/metrics", &[], "").await.body;
    assert!(m.contains("gramrr_rejected_queue_full_total 1"), "{m}");
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_that_disconnect_mid_request_do_not_disturb_the_server() {
    let backend = Arc::new(OracleBackend::default().with_delay(Duration::from_millis(600)));
    let config = ServeConfig { max_batch: 1, max_wait: Duration::ZERO, ..ServeConfig::default() };
    let (handle, _) = server(backend.clone(), config).await;
    let addr = handle.addr();

    // Half a body, then gone.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = json!({"prompt": "q", "response_a": "a", "response_b": "b"}).to_string();
    let req = common::raw_request(addr, "POST", "/v1/judge", &[], &body);
    s.write_all(&req.as_bytes()[..req.len() - 10]).await.unwrap();
    drop(s);

    // A whole request that occupies the engine, and one queued behind it whose client leaves.
    let busy = tokio::spawn(async move { post(addr, "/v1/judge", &json!({"prompt": "busy", "response_a": "a", "response_b": "b"})).await.status });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(common::raw_request(addr, "POST", "/v1/judge", &[], &json!({"prompt": "leaver", "response_a": "a", "response_b": "b"}).to_string()).as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(s);

    assert_eq!(busy.await.unwrap(), 200);
    let r = post(addr, "/v1/judge", &json!({"prompt": "after", "response_a": "a q=1", "response_b": "b q=0"})).await;
    assert_eq!(r.status, 200);
    let m = request(addr, "GET", "/metrics", &[], "").await.body;
    assert!(m.contains("gramrr_queue_depth 0"), "{m}");
    assert!(m.contains("gramrr_cancelled_total 1"), "the leaver's work was skipped: {m}");
    // Only the busy and the after requests reached the engine: 4 judgments each (3 votes in
    // both orders, stopped once 4 agreeing votes settled it).
    assert_eq!(backend.requests(), 8, "{m}");
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_answers_every_accepted_request() {
    let backend = Arc::new(OracleBackend::default().with_delay(Duration::from_millis(100)));
    let config = ServeConfig { max_batch: 2, max_wait: Duration::ZERO, ..ServeConfig::default() };
    let (handle, _) = server(backend, config).await;
    let addr = handle.addr();
    let tasks: Vec<_> = (0..6)
        .map(|i| tokio::spawn(async move { post(addr, "/v1/judge", &json!({"prompt": format!("q{i}"), "response_a": "a", "response_b": "b"})).await.status }))
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    handle.shutdown().await.unwrap();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "no longer listening");
}

/// `/v1/judge` with `"votes": 5` on a server started with the defaults (one greedy vote) samples
/// its votes, as `gramrr judge --votes 5` does: the rule lives in the judge's config, not in the
/// CLI. Greedy copies would all agree and stop early after three.
#[tokio::test]
async fn votes_requested_over_http_sample_like_the_cli() {
    let backend = Arc::new(OracleBackend::default().with_noise(0.45));
    let judge = PairwiseJudge::new(backend, JudgeTemplate::gram_rr(), JudgeConfig::default());
    assert_eq!(judge.config.sampling.temperature, 0.0);
    let handle = start(loopback(ServeConfig::default()), judge).await.unwrap();
    let addr = handle.addr();
    let (mut split, mut votes_run) = (0, 0);
    for i in 0..12 {
        let p = pair(i);
        let body = json!({"prompt": p.user_input, "response_a": p.response_a, "response_b": p.response_b, "votes": 5, "both_orders": false});
        let r = post(addr, "/v1/judge", &body).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json()["votes"].clone();
        let (a, b) = (v["a"].as_u64().unwrap(), v["b"].as_u64().unwrap());
        votes_run += a + b;
        split += (a > 0 && b > 0) as usize;
    }
    assert!(split >= 3, "sampled votes disagree on some pairs; {split} of 12 split");
    assert!(votes_run > 12 * 3, "early stopping no longer ends every pair after three copies ({votes_run} votes)");
    handle.shutdown().await.unwrap();
}
