//! `gramrr pipeline run CONFIG.toml` end to end on a tiny random model in the GRAM-R² format:
//! every stage runs and is recorded with content hashes; a rerun needs --resume and then skips
//! everything; the stage subcommands and `status` work on the same run.

use std::path::Path;
use std::process::Command;

fn gramrr(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gramrr")).args(args).env("RUST_LOG", "warn").output().unwrap()
}

fn ok(o: &std::process::Output) -> String {
    assert!(o.status.success(), "gramrr failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const Z_A: &str = "<think>\nFeedback: A answers the question.\n\nComparision: B does not.\n\nConclusion: A is better.\n</think>\n<answer>\nA\n</answer>";
const Z_B: &str = "<think>\nFeedback: B answers the question.\n\nComparision: A does not.\n\nConclusion: B is better.\n</think>\n<answer>\nB\n</answer>";

fn pairs(path: &Path, prefix: &str, n: usize, label: bool, rationale: bool) {
    let mut s = String::new();
    for i in 0..n {
        let l = if i % 2 == 0 { "A" } else { "B" };
        let mut v = serde_json::json!({
            "id": format!("{prefix}-{i}"),
            "prompt": format!("What is {i} + {i}?"),
            "response_a": format!("{}", 2 * i + (i % 2)),
            "response_b": format!("{}", 2 * i + 1 - (i % 2)),
        });
        if label {
            v["label"] = l.into();
        }
        if rationale {
            v["rationale"] = (if l == "A" { Z_A } else { Z_B }).into();
        }
        s.push_str(&v.to_string());
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

#[test]
fn pipeline_runs_every_stage_then_resume_skips_them() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(&gramrr(&["init-model", "--out", d.join("model").to_str().unwrap(), "--hidden", "32", "--layers", "1", "--heads", "2", "--kv-heads", "1", "--intermediate", "64", "--seed", "1"]));
    pairs(&d.join("seed.jsonl"), "seed", 4, true, true);
    pairs(&d.join("labeled.jsonl"), "lab", 5, true, false);
    pairs(&d.join("unlabeled.jsonl"), "unl", 6, false, false);
    pairs(&d.join("test.jsonl"), "test", 3, true, false);
    pairs(&d.join("task.jsonl"), "task", 3, true, false);
    pairs(&d.join("task_rationales.jsonl"), "task-z", 2, true, true);
    let task = [std::fs::read_to_string(d.join("task.jsonl")).unwrap(), std::fs::read_to_string(d.join("task_rationales.jsonl")).unwrap()].concat();
    std::fs::write(d.join("task.jsonl"), task).unwrap();
    let cfg = d.join("pipeline.toml");
    std::fs::write(
        &cfg,
        r#"
run_dir = "run"
seed = 1
[format]
name = "gram-rr"
[data]
seed_rationales = "seed.jsonl"
labeled = "labeled.jsonl"
unlabeled = "unlabeled.jsonl"
[model]
base = "model"
[synthesis]
k = 2
max_new_tokens = 8
chunk = 2
[self_training]
iterations = 2
votes = 2
max_new_tokens = 8
threshold = 0.0
chunk = 2
[train]
steps = 1
batch_size = 2
lr = 1e-4
max_len = 4096
[baseline]
enabled = true
[control]
enabled = true
[adapt]
data = "task.jsonl"
[eval]
data = "test.jsonl"
"#,
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let o = gramrr(&["pipeline", "run", c]);
    ok(&o);
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for k in ["baseline", "rm", "iter1", "iter2", "final", "control", "adapt"] {
        assert!(summary["accuracy"][k].is_number(), "no accuracy for {k}: {summary}");
    }
    assert_eq!(summary["iterations"].as_array().unwrap().len(), 2);

    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("run/manifest.json")).unwrap()).unwrap();
    let stages = manifest["stages"].as_object().unwrap();
    for s in ["prover", "synth", "rm", "iter1/pseudo", "iter1/prove", "iter1/rm", "iter2/rm", "final", "baseline", "control", "adapt/synth", "adapt/train", "eval/adapt"] {
        assert_eq!(stages[s]["status"], "done", "stage {s}");
        for (_, h) in stages[s]["outputs"].as_object().unwrap() {
            assert_eq!(h["sha256"].as_str().unwrap().len(), 64);
        }
    }
    assert_eq!(manifest["inputs"]["labeled"]["sha256"].as_str().unwrap().len(), 64);
    // Every synthesized sample is recorded with its scores and, when dropped, the reason.
    let item: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(d.join("run/synth/items.jsonl")).unwrap().lines().next().unwrap()).unwrap();
    let s0 = &item["samples"][0];
    assert!(s0["lp_ctx"].is_number() && s0["lp_free"].is_number());
    assert!(s0["rejection"]["reason"].is_string(), "a random model's proof is rejected: {s0}");

    let o = gramrr(&["pipeline", "run", c]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--resume"));

    let err = ok(&gramrr(&["pipeline", "run", c, "--resume"]));
    assert!(!err.contains(": training"), "nothing is retrained on resume:\n{err}");
    let again: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("run/manifest.json")).unwrap()).unwrap();
    assert_eq!(again["stages"], manifest["stages"]);

    // Stage commands continue the same run; status lists it.
    ok(&gramrr(&["pipeline", "final", c]));
    let o = gramrr(&["pipeline", "status", c]);
    ok(&o);
    let status: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(status["final"]["status"], "done");
}
