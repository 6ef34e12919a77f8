//! `[engine] launch` on the tiny world: every model-using stage runs on two `gramrr serve`
//! replicas started on the stage's checkpoint, and the stage outputs equal a local run's
//! (greedy decoding: texts and labels identical, log-probs within 1e-4). The servers are gone
//! after the run.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn gramrr(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gramrr")).args(args).env("RUST_LOG", "warn").output().unwrap()
}

fn ok(o: &std::process::Output) -> String {
    assert!(o.status.success(), "gramrr failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn pairs(path: &Path, prefix: &str, n: usize, label: bool, rationale: bool) {
    const Z: &str = "<think>\nFeedback: A answers the question.\n\nComparision: B does not.\n\nConclusion: A is better.\n</think>\n<answer>\nA\n</answer>";
    let mut s = String::new();
    for i in 0..n {
        let mut v = serde_json::json!({
            "id": format!("{prefix}-{i}"), "prompt": format!("What is {i} + {i}?"),
            "response_a": format!("{}", 2 * i), "response_b": format!("{}", 2 * i + 1),
        });
        if label {
            v["label"] = "A".into();
        }
        if rationale {
            v["rationale"] = Z.into();
        }
        s.push_str(&v.to_string());
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

/// Equal JSON, numbers within 1e-4 (relative above 1).
fn same(a: &Value, b: &Value, at: &str) {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!((x - y).abs() <= 1e-4 * x.abs().max(1.0), "{at}: {x} vs {y}");
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}: lengths");
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                same(u, v, &format!("{at}[{i}]"));
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>(), "{at}: keys");
            for (k, u) in x {
                same(u, &y[k], &format!("{at}.{k}"));
            }
        }
        _ => assert_eq!(a, b, "{at}"),
    }
}

fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn stages_on_launched_gramrr_serve_replicas_match_the_local_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(&gramrr(&["init-model", "--out", d.join("model").to_str().unwrap(), "--hidden", "32", "--layers", "1", "--heads", "2", "--kv-heads", "1", "--intermediate", "64", "--seed", "1"]));
    pairs(&d.join("seed.jsonl"), "seed", 4, true, true);
    pairs(&d.join("labeled.jsonl"), "lab", 4, true, false);
    pairs(&d.join("unlabeled.jsonl"), "unl", 6, false, false);
    pairs(&d.join("test.jsonl"), "test", 3, true, false);
    let base = r#"
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
temperature = 0.0
chunk = 3
[self_training]
iterations = 1
# One greedy vote: several votes always sample (gramrr-judge's rule), and sampled text is not
# the same on two engines, so only greedy stages can be compared token for token.
votes = 1
max_new_tokens = 8
temperature = 0.0
threshold = 0.0
chunk = 3
[train]
steps = 1
batch_size = 2
lr = 1e-4
max_len = 4096
[eval]
data = "test.jsonl"
"#;
    let bin = env!("CARGO_BIN_EXE_gramrr");
    std::fs::write(d.join("local.toml"), format!("run_dir = \"local\"\n{base}")).unwrap();
    std::fs::write(
        d.join("remote.toml"),
        format!("run_dir = \"remote\"\n{base}[engine]\nlaunch = \"{bin} serve --model {{model}} --port {{port}} --max-wait-ms 1\"\nreplicas = 2\nmax_in_flight = 4\n"),
    )
    .unwrap();
    ok(&gramrr(&["pipeline", "run", d.join("local.toml").to_str().unwrap()]));
    let err = ok(&gramrr(&["pipeline", "run", d.join("remote.toml").to_str().unwrap()]));
    assert!(err.contains("starting 2 server(s)"), "{err}");
    for f in ["synth/items.jsonl", "iter1/pseudo/items.jsonl", "iter1/prove/items.jsonl"] {
        let (a, b) = (jsonl(&d.join("local").join(f)), jsonl(&d.join("remote").join(f)));
        // A random model rarely reaches a majority, so the proving stage may have nothing.
        assert!(!a.is_empty() || f.contains("prove"), "{f} is empty");
        same(&Value::Array(a), &Value::Array(b), f);
    }
    // The servers logged their start and are stopped: nothing listens on their ports now.
    let logs: Vec<_> = walk(&d.join("remote/servers"));
    assert!(logs.len() >= 4, "server logs: {logs:?}");
    for log in &logs {
        let text = std::fs::read_to_string(log).unwrap();
        if let Some(addr) = text.lines().find_map(|l| l.split("http://").nth(1)) {
            assert!(std::net::TcpStream::connect(addr.trim()).is_err(), "{addr} still answers after the run");
        }
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
