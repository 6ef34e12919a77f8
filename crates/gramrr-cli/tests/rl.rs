//! `gramrr train grpo` end to end through the binary, and the RL-framework examples under
//! `examples/rl/` against a running `gramrr serve`: each through its framework's own code where
//! the framework is installed (a `skipped:` line says where it is not, and the request shape is
//! checked with python3 alone). `GRAMRR_RL_PYTHON` names the interpreter that has the frameworks
//! (default `python3`); examples/rl/README.md says how they were installed.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn gramrr() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gramrr"))
}

fn ok(o: Output, what: &str) -> String {
    assert!(o.status.success(), "{what} failed:\n{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn tiny_model(dir: &Path) {
    ok(gramrr().args(["init-model", "--out", dir.to_str().unwrap(), "--chars", "abcdefgh q:0123456789+=?AB"]).output().unwrap(), "init-model");
}

fn has_python(module: &str) -> bool {
    Command::new(rl_python()).args(["-c", &format!("import {module}")]).output().is_ok_and(|o| o.status.success())
}

/// The Python that runs the examples: verl's pins (omegaconf's antlr4 4.9, packaging < 26) clash
/// with other packages, so it may live in its own environment.
fn rl_python() -> String {
    std::env::var("GRAMRR_RL_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Written past the test harness's capture, so the skip shows in `cargo test` output.
fn skipped(what: &str) {
    let _ = std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("skipped: {what}\n"));
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn train_grpo_with_a_reward_command_writes_its_run() {
    if !has_python("json") {
        // Written past the test harness's capture, so the skip shows in `cargo test` output.
        let _ = std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("skipped: python3 is not installed (the reward command is a python one-liner)\n"));
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("policy");
    tiny_model(&model);
    let prompts = tmp.path().join("prompts.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"q: 1+2=\", \"reference\": \"3\"}\n{\"prompt\": \"q: 4+4=\"}\n").unwrap();
    let out = tmp.path().join("run");
    let cmd = r#"python3 -c 'import sys,json
for l in sys.stdin: print(json.dumps({"score": json.loads(l)["response"].count("a")}))'"#;
    let run = |extra: &[&str]| {
        gramrr()
            .args(["train", "grpo", "--model", model.to_str().unwrap(), "--prompts", prompts.to_str().unwrap()])
            .args(["--out", out.to_str().unwrap(), "--steps", "3", "--prompts-per-step", "2", "--group-size", "4"])
            .args(["--max-new-tokens", "5", "--lr", "1e-3", "--lora-rank", "2", "--num-iterations", "2"])
            .args(extra)
            .output()
            .unwrap()
    };
    let stdout = ok(run(&["--reward-command", cmd]), "train grpo");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["steps"], 3);
    assert_eq!(report["mode"], "lora");
    for f in ["adapter_model.safetensors", "adapter_config.json", "metrics.jsonl", "samples.jsonl", "summary.md", "curves.png"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    for key in ["reward_mean", "kl", "response_tokens", "clip_fraction", "rm_calls", "rm_seconds"] {
        assert!(lines[0].get(key).is_some(), "{key} missing from {}", lines[0]);
    }
    assert_eq!(lines[0]["rm_calls"], 8);
    // A failing reward command is named, with its stderr.
    let o = run(&["--reward-command", "echo model went away >&2; exit 4"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("reward command `echo model went away") && err.contains("model went away") && err.contains("4"), "{err}");
    // No reward at all is refused before anything loads.
    let o = run(&[]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no reward"), "{}", String::from_utf8_lossy(&o.stderr));
}

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `gramrr serve` of a tiny random judge in prob mode (no generation: fast, always a number).
fn serve(model: &Path) -> (Server, String) {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = gramrr()
        .args(["serve", "--model", model.to_str().unwrap(), "--port", &port.to_string(), "--mode", "prob", "--template", "compact"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server(child);
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(60), "gramrr serve did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    (server, format!("http://127.0.0.1:{port}"))
}

fn python(script: &str, args: &[&str]) -> serde_json::Value {
    let o = Command::new(rl_python()).arg(repo().join("examples/rl").join(script)).args(args).output().unwrap();
    let out = ok(o, script);
    serde_json::from_str(out.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("{script}: {e}: {out}"))
}

#[test]
fn rl_framework_examples_talk_to_gramrr_serve() {
    if !has_python("json") {
        // Written past the test harness's capture, so the skip shows in `cargo test` output.
        let _ = std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("skipped: python3 is not installed\n"));
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("judge");
    tiny_model(&model);
    let (_server, url) = serve(&model);

    // The policy's tokenizer for the frameworks' own code: it must spell the examples' answers
    // ("It is 48."), or the text the framework decodes is not the text sent.
    let policy_tok = tmp.path().join("policy-tokenizer");
    ok(gramrr().args(["init-model", "--out", policy_tok.to_str().unwrap(), "--chars", "abcdefghiIst q:0123456789+-=?.AB"]).output().unwrap(), "init-model");
    let close = |a: &serde_json::Value, b: &serde_json::Value, tol: f64| {
        let (a, b) = (a.as_array().unwrap(), b.as_array().unwrap());
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() <= tol)
    };

    // OpenRLHF: its rollout executor's remote-RM call where installed, else the same request with
    // urllib. Either way the reward is the judge's P(response better than the label), so it must
    // equal /v1/judge's p_a asked directly: that pins the query OpenRLHF builds (prompt and
    // continuation decoded together) to the question and response gramrr judges.
    let v = python("openrlhf_request.py", &["--url", &format!("{url}/get_reward"), "--tokenizer", policy_tok.to_str().unwrap()]);
    assert_eq!(v["rewards"].as_array().unwrap().len(), 2, "{v}");
    assert!(close(&v["rewards"], &v["p_better"], 1e-12), "rewards are not the judge's P(better than label): {v}");
    assert!(close(&v["scores"], &v["p_better"], 1e-12), "{v}");
    assert_ne!(v["rewards"][0], v["rewards"][1], "a right and a wrong answer got the same reward: {v}");
    if v["client"] == "openrlhf" {
        eprintln!("OpenRLHF {} SingleTurnAgentExecutor with gramrr serve: {v}", v["openrlhf_version"]);
        assert!(v["observation_tokens"].as_array().unwrap().iter().all(|n| n.as_u64().unwrap() > 0), "{v}");
    } else {
        skipped(&format!("OpenRLHF's own remote-RM client ({}): checked the documented request/response shape with urllib", v["openrlhf_missing"]));
        for k in ["rewards", "scores", "extra_logs"] {
            assert!(v["response_keys"].as_array().unwrap().iter().any(|x| x == k), "{k} missing: {v}");
        }
    }

    // verl: compute_score through verl's reward loop where installed (its loader, its naive reward
    // manager, its rm_scores tensor); the scores must be /v1/rank's, asked directly.
    let v = python("verl_reward.py", &["--url", &url, "--tokenizer", policy_tok.to_str().unwrap()]);
    assert!(close(&v["scores"], &v["direct"], 1e-12), "verl's scores are not /v1/rank's: {v}");
    assert_ne!(v["scores"][0], v["scores"][1], "a right and a wrong answer got the same score: {v}");
    if v["client"] == "verl" {
        eprintln!("verl {} reward loop with gramrr serve: {v}", v["verl_version"]);
        assert_eq!(v["reward_manager"], "NaiveRewardManager", "{v}");
        // One score per response, on its last valid token: the shape of the responses tensor.
        assert_eq!(v["rm_scores_shape"], v["responses_shape"], "{v}");
        assert_eq!(v["rm_scores_nonzero"], 2, "{v}");
        assert!(close(&v["rm_scores_sum"], &v["scores"], 1e-6), "{v}");
    } else {
        skipped(&format!("verl's reward loop ({}): called compute_score directly", v["verl_missing"]));
    }
    // The batch manager's call: Bradley–Terry log-strengths of one group are centred.
    let s: Vec<f64> = v["batch_scores"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(s.len(), 5);
    assert!((s[0] + s[1] + s[2]).abs() < 1e-6 && (s[3] + s[4]).abs() < 1e-6, "{s:?}");

    // gramrr's own GRPO against the server: /v1/judge for the prompt with a reference (3 calls),
    // /v1/rank for the other (a round robin of 3: 3 comparisons).
    let prompts = tmp.path().join("prompts.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"q: 1+2=\", \"reference\": \"3\"}\n{\"prompt\": \"q: 4+4=\"}\n").unwrap();
    let run = tmp.path().join("grpo");
    let o = gramrr()
        .args(["train", "grpo", "--model", model.to_str().unwrap(), "--prompts", prompts.to_str().unwrap(), "--rm-url", &url])
        .args(["--out", run.to_str().unwrap(), "--steps", "2", "--prompts-per-step", "2", "--group-size", "3", "--max-new-tokens", "4"])
        .output()
        .unwrap();
    ok(o, "train grpo --rm-url");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    for l in metrics.lines() {
        let m: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(m["rm_calls"], 6, "{m}");
        assert!(m["reward_mean"].as_f64().unwrap().is_finite());
    }
    assert_eq!(metrics.lines().count(), 2);

    // TRL: GRPOTrainer on a tiny policy on CPU, rewarded by the server.
    if !(has_python("trl") && has_python("torch")) {
        skipped("TRL GRPOTrainer example (trl/torch not installed)");
        return;
    }
    let policy = tmp.path().join("policy");
    tiny_model(&policy);
    let v = python("trl_grpo.py", &["--policy", policy.to_str().unwrap(), "--url", &url, "--out", tmp.path().join("trl").to_str().unwrap()]);
    eprintln!("TRL GRPOTrainer with gramrr serve rewards: {v}");
    assert_eq!(v["steps"], 2, "{v}");
    assert!(!v["rewards"].as_array().unwrap().is_empty(), "{v}");
}
