//! The replica pool against tiny fake OpenAI servers on loopback (std threads): a replica that
//! dies mid-run, one that answers 500/429, one that hangs, one without log-probs; in-flight
//! bounds and pair affinity.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fixture;
use gramrr_model::backend::{Backend, GenerateRequest, Prompt, SamplingParams, ScoreRequest};
use gramrr_model::tokenizer::TextTokenizer;
use gramrr_remote::{Needs, RemoteBackend, RemoteConfig};
use serde_json::{json, Value};

/// How a fake replica misbehaves.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// After this many completions, close every connection and refuse new ones.
    DieAfter(usize),
    /// Every 3rd completion answers 500, every 5th 429.
    Flaky,
    /// After this many completions, read requests and never answer.
    HangAfter(usize),
    /// Completions without any log-probs (as a server with them switched off).
    NoLogprobs,
    /// `echo` gives no prompt log-probs, but vLLM's `prompt_logprobs` does.
    PromptLogprobsOnly,
}

/// The log-prob the fakes give token `id` at any position: the test knows the exact answer.
fn lp(id: u64) -> f64 {
    -((id % 97) as f64 + 1.0) / 8.0
}

struct Fake {
    url: String,
    completions: Arc<AtomicUsize>,
    max_concurrent: Arc<AtomicUsize>,
    /// Sorted prompt ids of every completion answered.
    seen: Arc<Mutex<Vec<Vec<u64>>>>,
    dead: Arc<AtomicBool>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.dead.store(true, Ordering::SeqCst);
    }
}

fn answer(body: &Value, fault: Fault) -> Value {
    let ids: Vec<u64> = body["prompt"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    let n = body.get("n").and_then(Value::as_u64).unwrap_or(1) as usize;
    let echo = body.get("echo").and_then(Value::as_bool).unwrap_or(false);
    let logprobs = body.get("logprobs").and_then(Value::as_u64);
    let gen_id = ids.iter().sum::<u64>() % 300 + 3;
    let choices: Vec<Value> = (0..n)
        .map(|i| {
            let mut c = json!({"index": i, "text": format!("t{}", ids.iter().sum::<u64>() + i as u64), "finish_reason": "length"});
            if let (Some(k), false) = (logprobs, fault == Fault::NoLogprobs) {
                let echo = echo && fault != Fault::PromptLogprobsOnly;
                let shown: Vec<u64> = if echo { ids.iter().copied().chain([gen_id]).collect() } else { vec![gen_id] };
                let token_lp: Vec<Value> =
                    shown.iter().enumerate().map(|(j, &t)| if echo && j == 0 { Value::Null } else { json!(lp(t)) }).collect();
                let top: Vec<Value> =
                    shown.iter().map(|&t| json!((0..k).map(|x| (format!("token_id:{}", t + x), json!(lp(t + x)))).collect::<serde_json::Map<_, _>>())).collect();
                c["logprobs"] = json!({"tokens": shown.iter().map(|t| format!("token_id:{t}")).collect::<Vec<_>>(), "token_logprobs": token_lp, "top_logprobs": top});
            }
            if body.get("prompt_logprobs").is_some() && fault == Fault::PromptLogprobsOnly {
                let p: Vec<Value> = ids
                    .iter()
                    .enumerate()
                    .map(|(j, &t)| if j == 0 { Value::Null } else { json!({t.to_string(): {"logprob": lp(t), "rank": 1}}) })
                    .collect();
                c["prompt_logprobs"] = json!(p);
            }
            c
        })
        .collect();
    json!({"choices": choices, "usage": {"prompt_tokens": ids.len(), "completion_tokens": n, "total_tokens": ids.len() + n}})
}

fn respond(s: &mut TcpStream, status: u16, body: &Value) -> std::io::Result<()> {
    let text = body.to_string();
    write!(s, "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}", text.len())
}

fn serve_conn(stream: TcpStream, fault: Fault, f: Arc<FakeState>) -> std::io::Result<()> {
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 || f.dead.load(Ordering::SeqCst) {
            return Ok(());
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut len = 0;
        loop {
            let mut h = String::new();
            r.read_line(&mut h)?;
            if h.trim().is_empty() {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
        if path.ends_with("/models") {
            respond(&mut w, 200, &json!({"data": [{"id": "fake"}]}))?;
            continue;
        }
        let k = f.completions.fetch_add(1, Ordering::SeqCst) + 1;
        let now = f.active.fetch_add(1, Ordering::SeqCst) + 1;
        f.max_concurrent.fetch_max(now, Ordering::SeqCst);
        let body: Value = serde_json::from_slice(&body).unwrap();
        // A little service time, so concurrency shows.
        std::thread::sleep(Duration::from_millis(2));
        let result = match fault {
            Fault::DieAfter(m) if k > m => {
                f.dead.store(true, Ordering::SeqCst);
                let _ = w.shutdown(Shutdown::Both);
                Ok(())
            }
            Fault::HangAfter(m) if k > m => {
                while !f.dead.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(())
            }
            Fault::Flaky if k.is_multiple_of(3) => respond(&mut w, 500, &json!({"error": "boom"})),
            Fault::Flaky if k.is_multiple_of(5) => respond(&mut w, 429, &json!({"error": "slow down"})),
            _ => {
                let mut ids: Vec<u64> = body["prompt"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
                ids.sort_unstable();
                f.seen.lock().unwrap().push(ids);
                respond(&mut w, 200, &answer(&body, fault))
            }
        };
        f.active.fetch_sub(1, Ordering::SeqCst);
        result?;
        if f.dead.load(Ordering::SeqCst) {
            return Ok(());
        }
    }
}

struct FakeState {
    completions: Arc<AtomicUsize>,
    active: AtomicUsize,
    max_concurrent: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Vec<u64>>>>,
    dead: Arc<AtomicBool>,
}

fn fake(fault: Fault) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let state = Arc::new(FakeState {
        completions: Arc::new(AtomicUsize::new(0)),
        active: AtomicUsize::new(0),
        max_concurrent: Arc::new(AtomicUsize::new(0)),
        seen: Arc::new(Mutex::new(vec![])),
        dead: Arc::new(AtomicBool::new(false)),
    });
    let s = state.clone();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        // Dropping the listener when dead refuses new connections, as a killed process would.
        while !s.dead.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).unwrap();
                    let s2 = s.clone();
                    std::thread::spawn(move || serve_conn(stream, fault, s2));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    });
    Fake {
        url,
        completions: state.completions.clone(),
        max_concurrent: state.max_concurrent.clone(),
        seen: state.seen.clone(),
        dead: state.dead.clone(),
    }
}

fn config(urls: &[&Fake]) -> RemoteConfig {
    let mut c = RemoteConfig::new(urls.iter().map(|f| f.url.clone()).collect(), fixture("qwen3-qknorm").to_string_lossy());
    c.pool.max_in_flight = 4;
    c.pool.backoff = Duration::from_millis(5);
    c.pool.recheck_after = Duration::from_millis(300);
    c.pool.request_timeout = Duration::from_secs(2);
    c
}

fn tokenizer() -> TextTokenizer {
    TextTokenizer::from_dir(&fixture("qwen3-qknorm")).unwrap()
}

fn score_requests(n: usize) -> Vec<ScoreRequest> {
    (0..n).map(|i| ScoreRequest { prompt: Prompt::Raw(format!("item {i} asks")), completion: format!(" answer {}", i * 7) }).collect()
}

/// Checks every score against the fakes' rule: each answer is its own item's, exactly.
fn check_scores(reqs: &[ScoreRequest], got: &[gramrr_model::backend::ScoreOutput]) {
    let tok = tokenizer();
    assert_eq!(reqs.len(), got.len());
    for (i, (r, g)) in reqs.iter().zip(got).enumerate() {
        let Prompt::Raw(p) = &r.prompt else { unreachable!() };
        let c = tok.encode(&r.completion, false).unwrap();
        assert_eq!(g.prompt_tokens, tok.encode(p, true).unwrap().len(), "item {i}");
        let want: Vec<f32> = c.iter().map(|&t| lp(t as u64) as f32).collect();
        assert_eq!(g.token_logprobs, want, "item {i}");
    }
}

#[test]
fn one_of_two_replicas_dies_mid_run_and_every_item_is_answered_once_by_its_own_result() {
    let (a, b) = (fake(Fault::DieAfter(40)), fake(Fault::None));
    let remote = RemoteBackend::connect(config(&[&a, &b])).unwrap();
    let reqs = score_requests(300);
    let got = remote.score(&reqs).unwrap();
    check_scores(&reqs, &got);
    assert!(a.dead.load(Ordering::SeqCst), "replica a died");
    // Each answered its 5 probe requests (completion, n, top log-probs, a logit_bias-forced
    // token, echo); a answered at most 35 items before dying, b the rest, and no item was
    // answered by both.
    let (a_items, b_items) = (a.seen.lock().unwrap().len() - 5, b.seen.lock().unwrap().len() - 5);
    assert!(a_items <= 35 && a_items + b_items == 300, "a answered {a_items}, b {b_items}");
    assert!(remote.counters().1 >= 1, "the dead replica's requests were re-sent");
}

#[test]
fn a_replica_answering_500_and_429_is_retried_until_every_item_is_done() {
    let a = fake(Fault::Flaky);
    let mut cfg = config(&[&a]);
    cfg.pool.retries = 8;
    // The probe meets the errors too and retries through them.
    let remote = RemoteBackend::connect(cfg).unwrap();
    let before = a.completions.load(Ordering::SeqCst);
    let reqs = score_requests(60);
    let got = remote.score(&reqs).unwrap();
    check_scores(&reqs, &got);
    let sent = a.completions.load(Ordering::SeqCst) - before;
    assert!(sent > 60, "errors were answered and retried ({sent} requests for 60 items)");
    assert!(remote.counters().1 as usize >= sent - 60, "retries counted: {:?}", remote.counters());
}

#[test]
fn a_hanging_replica_costs_one_deadline_and_its_requests_are_re_sent() {
    let (a, b) = (fake(Fault::HangAfter(5 + 3)), fake(Fault::None));
    let remote = RemoteBackend::connect(config(&[&a, &b])).unwrap();
    let reqs = score_requests(80);
    let started = Instant::now();
    let got = remote.score(&reqs).unwrap();
    let took = started.elapsed();
    check_scores(&reqs, &got);
    // One 2 s deadline for the requests stuck on a (in parallel), not one per request.
    assert!(took < Duration::from_secs(12), "took {took:?}");
    assert!(took >= Duration::from_secs(2), "the hang was met ({took:?})");
    a.dead.store(true, Ordering::SeqCst);
}

#[test]
fn a_server_without_logprobs_is_refused_before_any_work_naming_what_is_missing() {
    let a = fake(Fault::NoLogprobs);
    let err = RemoteBackend::connect(config(&[&a])).err().expect("refused");
    let msg = err.to_string();
    assert!(msg.contains(&a.url) && msg.contains("no prompt log-probs") && msg.contains("to score completions"), "{msg}");
    // Generation alone needs none of it.
    let mut cfg = config(&[&a]);
    cfg.needs = Needs::GENERATE;
    let remote = RemoteBackend::connect(cfg).unwrap();
    let out = remote
        .generate(&[GenerateRequest { prompt: Prompt::Raw("hi".into()), seed_offset: 0 }], &SamplingParams { max_new_tokens: 4, ..Default::default() })
        .unwrap();
    assert!(out[0].text.starts_with('t'));
    // And a scoring call on it fails with the missing field named, not a wrong number.
    let err = remote.score(&score_requests(1)).expect_err("no log-probs to read");
    assert!(err.to_string().contains("logprobs"), "{err}");
}

#[test]
fn in_flight_is_bounded_per_replica_and_both_orders_of_a_pair_share_a_replica() {
    let (a, b) = (fake(Fault::None), fake(Fault::None));
    let remote = RemoteBackend::connect(config(&[&a, &b])).unwrap();
    // Pairs as the judge builds them: the same texts in both orders.
    let reqs: Vec<GenerateRequest> = (0..120)
        .map(|i| {
            let (x, y) = (format!("alpha{}", i / 2), format!("beta{}", i / 2));
            let text = if i % 2 == 0 { format!("A: {x}\nB: {y}\n") } else { format!("A: {y}\nB: {x}\n") };
            GenerateRequest { prompt: Prompt::Raw(text), seed_offset: i as u64 }
        })
        .collect();
    let got = remote.generate(&reqs, &SamplingParams { max_new_tokens: 4, ..Default::default() }).unwrap();
    assert_eq!(got.len(), 120);
    for f in [&a, &b] {
        let m = f.max_concurrent.load(Ordering::SeqCst);
        assert!((1..=4).contains(&m), "{m} concurrent requests on one replica (bound 4)");
    }
    let seen_a: HashSet<Vec<u64>> = a.seen.lock().unwrap().iter().cloned().collect();
    let seen_b: HashSet<Vec<u64>> = b.seen.lock().unwrap().iter().cloned().collect();
    let probe_prompts = seen_a.intersection(&seen_b).count();
    // The probe's two prompts (its text, and its text plus a forced token) reach both; no
    // pair's multiset does.
    assert!(probe_prompts <= 2, "{probe_prompts} pairs were split across replicas");
    assert!(seen_a.len() > 10 && seen_b.len() > 10, "work spread over both replicas: {} and {}", seen_a.len(), seen_b.len());
}

#[test]
fn a_server_with_prompt_logprobs_but_no_echo_logprobs_scores_through_them() {
    let a = fake(Fault::PromptLogprobsOnly);
    let remote = RemoteBackend::connect(config(&[&a])).unwrap();
    assert!(!remote.capabilities.echo_logprobs && remote.capabilities.prompt_logprobs, "{:?}", remote.capabilities);
    let reqs = score_requests(20);
    check_scores(&reqs, &remote.score(&reqs).unwrap());
}
