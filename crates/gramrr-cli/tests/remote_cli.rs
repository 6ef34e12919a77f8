//! `--model http://…/v1` on the CLI: `gramrr generate`, `logprobs` and `judge` through a
//! `gramrr serve` process (with an API key from GRAMRR_API_KEY) give the local engine's answers.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

fn gramrr(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gramrr")).args(args).env("RUST_LOG", "warn").env("GRAMRR_API_KEY", "k3y").output().unwrap()
}

fn ok(o: &std::process::Output) {
    assert!(o.status.success(), "gramrr failed: {}", String::from_utf8_lossy(&o.stderr));
}

fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn generate_logprobs_and_judge_through_a_served_model_match_local() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let model = d.join("model");
    let m = model.to_str().unwrap();
    ok(&gramrr(&["init-model", "--out", m, "--hidden", "32", "--layers", "1", "--heads", "2", "--kv-heads", "1", "--intermediate", "64", "--seed", "2"]));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _server = Server(
        Command::new(env!("CARGO_BIN_EXE_gramrr"))
            .args(["serve", "--model", m, "--port", &port.to_string(), "--api-key", "k3y", "--served-model", "tiny"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}/v1");
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // A server --model without --tokenizer is refused with the fix named.
    let o = gramrr(&["generate", "--model", &url, "--input", "x", "--output", "y"]);
    assert!(!o.status.success());
    std::fs::write(d.join("gen.jsonl"), "{\"prompt\": \"Hello there\"}\n{\"messages\": [{\"role\": \"user\", \"content\": \"Hi?\"}]}\n{\"prompt\": \"Count: one two\"}\n").unwrap();
    std::fs::write(d.join("lp.jsonl"), "{\"prompt\": \"Hello\", \"completion\": \" there friend\"}\n{\"prompt\": \"A\", \"completion\": \"B C D\"}\n").unwrap();
    std::fs::write(
        d.join("pairs.jsonl"),
        (0..4).map(|i| format!("{{\"id\": \"p{i}\", \"prompt\": \"{i}+{i}?\", \"response_a\": \"{}\", \"response_b\": \"{}\"}}\n", 2 * i, 2 * i + 1)).collect::<String>(),
    )
    .unwrap();
    let pi = d.join("pairs.jsonl");
    let (gi, li) = (d.join("gen.jsonl"), d.join("lp.jsonl"));
    for (tag, spec) in [("local", m.to_string()), ("remote", url.clone())] {
        let mut common = vec!["--model".to_string(), spec.clone()];
        if tag == "remote" {
            common.extend(["--tokenizer".into(), m.into(), "--served-model".into(), "tiny".into()]);
        }
        let c: Vec<&str> = common.iter().map(String::as_str).collect();
        let out = d.join(format!("gen-{tag}.jsonl"));
        ok(&gramrr(&[&["generate"], &c[..], &["--input", gi.to_str().unwrap(), "--output", out.to_str().unwrap(), "--max-new-tokens", "12"]].concat()));
        let out = d.join(format!("lp-{tag}.jsonl"));
        ok(&gramrr(&[&["logprobs"], &c[..], &["--input", li.to_str().unwrap(), "--output", out.to_str().unwrap()]].concat()));
        for mode in ["prob", "reason"] {
            let out = d.join(format!("judge-{mode}-{tag}.jsonl"));
            let args = ["--input", pi.to_str().unwrap(), "--output", out.to_str().unwrap(), "--template", "compact", "--mode", mode, "--max-new-tokens", "8"];
            ok(&gramrr(&[&["judge"], &c[..], &args[..]].concat()));
        }
    }
    for mode in ["prob", "reason"] {
        let (a, b) = (jsonl(&d.join(format!("judge-{mode}-local.jsonl"))), jsonl(&d.join(format!("judge-{mode}-remote.jsonl"))));
        assert_eq!(a.len(), 4);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x["label"], y["label"], "{mode}");
            assert!((x["p_a"].as_f64().unwrap() - y["p_a"].as_f64().unwrap()).abs() < 1e-4, "{mode}: {x} vs {y}");
        }
    }
    assert_eq!(jsonl(&d.join("gen-local.jsonl")), jsonl(&d.join("gen-remote.jsonl")));
    for (a, b) in jsonl(&d.join("lp-local.jsonl")).iter().zip(jsonl(&d.join("lp-remote.jsonl"))) {
        assert_eq!(a["completion_tokens"], b["completion_tokens"]);
        assert!((a["logprob"].as_f64().unwrap() - b["logprob"].as_f64().unwrap()).abs() < 1e-4, "{a} vs {b}");
    }
}
