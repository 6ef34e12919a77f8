//! A training run killed with SIGKILL (twice, at different moments) and resumed ends with the
//! same weights, bit for bit, as an uninterrupted run; and the CLI's data errors name the file
//! and line.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../gramrr-train/tests/fixtures")
}

fn train_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let f = fixtures();
    let mut v: Vec<String> = [
        "train",
        "sft",
        "--model",
        f.join("train-base").to_str().unwrap(),
        "--data",
        f.join("sft_weighted.jsonl").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--max-steps",
        "400",
        "--lr",
        "1e-3",
        "--batch-size",
        "3",
        "--grad-accum",
        "2",
        "--scheduler",
        "cosine",
        "--warmup-ratio",
        "0.1",
        "--weight-decay",
        "0.01",
        "--seed",
        "7",
        "--save-every",
        "10",
        "--no-plot",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn gramrr() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gramrr"));
    c.env("RUST_LOG", "warn");
    c
}

fn run_to_end(args: &[String]) {
    let o = gramrr().args(args).stdout(Stdio::null()).output().unwrap();
    assert!(o.status.success(), "gramrr failed: {}", String::from_utf8_lossy(&o.stderr));
}

fn latest(out: &Path) -> Option<String> {
    std::fs::read_to_string(out.join("checkpoints/latest")).ok()
}

/// Starts a run and SIGKILLs it `delay` after a checkpoint newer than `after` appears.
fn start_and_kill(args: &[String], out: &Path, after: Option<String>, delay: Duration) -> String {
    let mut child = gramrr().args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let t0 = Instant::now();
    let seen = loop {
        if let Some(l) = latest(out).filter(|l| Some(l) != after.as_ref()) {
            break l;
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended before a new checkpoint appeared");
        assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoint after 2 minutes");
        std::thread::sleep(Duration::from_millis(2));
    };
    std::thread::sleep(delay);
    assert!(child.try_wait().unwrap().is_none(), "the run finished before it could be killed; make it longer");
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    seen
}

fn check_kill_resume(extra: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("uninterrupted");
    let b = tmp.path().join("killed");
    run_to_end(&train_args(&a, extra));

    let first = start_and_kill(&train_args(&b, extra), &b, None, Duration::from_millis(0));
    let mut resume = train_args(&b, extra);
    resume.push("--resume".into());
    // Killed again while running from the resumed checkpoint, at another moment.
    let _ = start_and_kill(&resume, &b, Some(first), Duration::from_millis(23));
    run_to_end(&resume);

    let file = if extra.contains(&"--lora-rank") { "adapter_model.safetensors" } else { "model.safetensors" };
    let wa = std::fs::read(a.join(file)).unwrap();
    let wb = std::fs::read(b.join(file)).unwrap();
    assert!(wa == wb, "final weights differ between the uninterrupted and the killed-and-resumed run");
    let steps = |p: &Path| -> Vec<(u64, String)> {
        std::fs::read_to_string(p.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["step"].as_u64().unwrap(), v["loss"].to_string())
            })
            .collect()
    };
    assert_eq!(steps(&a), steps(&b), "per-step losses differ");
    assert_eq!(steps(&a).len(), 400);
}

#[test]
fn resume_after_kill_matches_uninterrupted_run() {
    check_kill_resume(&[]);
}

#[test]
fn lora_with_dropout_resume_after_kill_matches_uninterrupted_run() {
    check_kill_resume(&["--lora-rank", "4", "--lora-alpha", "8", "--lora-dropout", "0.1"]);
}

#[test]
fn resume_refuses_different_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let mut args = train_args(&out, &[]);
    args[9] = "20".into(); // --max-steps
    run_to_end(&args);
    let mut changed = args.clone();
    changed[11] = "5e-4".into(); // --lr
    changed.push("--resume".into());
    let o = gramrr().args(&changed).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("different training settings"), "{err}");
}

#[test]
fn bad_data_error_names_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("bad.jsonl");
    std::fs::write(&data, "{\"prompt\": \"a\", \"completion\": \"b\"}\n\n{\"prompt\": \"a\", \"completion\": 3}\n").unwrap();
    let f = fixtures();
    let o = gramrr()
        .args(["train", "sft", "--model", f.join("train-base").to_str().unwrap(), "--data", data.to_str().unwrap()])
        .args(["--out", tmp.path().join("o").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad.jsonl:3:") && err.contains("\"completion\""), "{err}");
}
