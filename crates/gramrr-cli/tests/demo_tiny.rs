//! `gramrr demo` end to end in its smallest world: the report has the promised schema, and
//! two runs with the same seed agree exactly (accuracies and every generated judgment).

use std::path::Path;
use std::process::Command;

fn demo(out: &Path, seed: &str, extra: &[&str]) -> std::process::Output {
    let o = Command::new(env!("CARGO_BIN_EXE_gramrr"))
        .args(["demo", "--size", "tiny", "--seed", seed, "--out", out.to_str().unwrap()])
        .args(extra)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(o.status.success(), "demo failed: {}", String::from_utf8_lossy(&o.stderr));
    o
}

fn report(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap()
}

fn is_num(v: &serde_json::Value) -> bool {
    v.as_f64().is_some_and(|x| x.is_finite())
}

#[test]
fn demo_report_has_the_schema_and_the_same_seed_gives_the_same_results() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    demo(&a, "3", &["--no-rl"]);
    demo(&b, "3", &["--no-rl"]);
    assert!(!a.join("rl").exists(), "--no-rl skips the last act");
    let (ra, rb) = (report(&a), report(&b));

    let acc = &ra["accuracy"];
    for k in ["vanilla_rm", "gram_rr_initial", "gram_rr_final", "control_extra_steps"] {
        assert!(is_num(&acc[k]), "accuracy.{k} = {}", acc[k]);
    }
    let st = acc["gram_rr_self_training"].as_array().expect("a list per iteration");
    assert!(!st.is_empty() && st.iter().all(is_num));
    let pl = ra["pseudo_labels"].as_array().unwrap();
    assert_eq!(pl.len(), st.len());
    for (i, p) in pl.iter().enumerate() {
        assert_eq!(p["iteration"].as_u64(), Some(i as u64 + 1));
        assert!(p["n"].as_u64().unwrap() > 0);
        assert!(p["kept"].as_u64().unwrap() <= p["n"].as_u64().unwrap());
        assert!(is_num(&p["accuracy_all"]) && is_num(&p["accuracy_kept"]));
    }
    assert!(is_num(&ra["proof_selection"]["eq5"]) && is_num(&ra["proof_selection"]["random"]));
    assert!(ra["seconds"].as_f64().unwrap() > 0.0);
    assert!(a.join("report.md").exists());
    assert!(a.join("accuracy.png").exists());

    // Same seed: identical numbers, and identical judgments behind them.
    for k in ["accuracy", "pseudo_labels", "proof_selection"] {
        assert_eq!(ra[k], rb[k], "{k} differs between two runs with the same seed");
    }
    for stage in ["baseline", "rm", "iter1", "final", "control"] {
        let p = |d: &Path| std::fs::read(d.join("run/eval").join(stage).join("predictions.jsonl")).unwrap();
        assert_eq!(p(&a), p(&b), "eval/{stage} predictions differ");
    }

    // A rerun with --resume skips every stage and reports the same.
    let o = demo(&a, "3", &["--resume", "--no-rl"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains(": training"), "a finished stage was trained again:\n{err}");
    assert_eq!(report(&a)["accuracy"], ra["accuracy"]);
}

#[test]
fn demo_rl_act_reports_every_reward_and_best_of_n() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rl");
    demo(&out, "1", &[]);
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("rl/report.json")).unwrap()).unwrap();
    let runs = r["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3, "GRAM-R², vanilla RM and the oracle");
    for run in runs {
        assert!(is_num(&run["gold_before"]) && is_num(&run["gold_after"]), "{run}");
        assert_eq!(run["proxy_reward"].as_array().unwrap().len(), run["sample_gold"].as_array().unwrap().len());
    }
    assert_eq!(runs[0]["gold_before"], runs[2]["gold_before"], "every run starts from the same policy");
    let bon = r["best_of_n"].as_array().unwrap();
    assert_eq!(bon.len(), 3);
    assert!(bon.iter().all(|b| b["accuracy"].as_array().unwrap().len() == 5));
    assert_eq!(r["targets"].as_array().unwrap().len(), 3);
    for slug in ["gram-rr", "vanilla", "oracle"] {
        assert!(out.join("rl").join(slug).join("metrics.jsonl").exists(), "{slug}");
    }
    assert!(std::fs::read_to_string(out.join("rl/report.md")).unwrap().contains("Best-of-n"));
}
