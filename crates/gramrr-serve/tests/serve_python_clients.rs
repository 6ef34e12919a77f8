//! Ordinary Python HTTP clients read the server's 413 for a body over the limit. Python's
//! `urllib` and `requests` (what OpenRLHF's remote reward client uses) write the whole body before
//! they read anything, so a server that answers and closes early makes them see a reset or a broken
//! pipe instead of the status. Runs where `python3` is installed, and says so where not.

use std::io::Write;
use std::process::Command;
use std::sync::Arc;

use gramrr_data::prompt::JudgeTemplate;
use gramrr_judge::testing::OracleBackend;
use gramrr_judge::{JudgeConfig, PairwiseJudge};
use gramrr_serve::{start, ServeConfig};

const CLIENT: &str = r#"
import json, sys, urllib.error, urllib.request
url, size = sys.argv[1], int(sys.argv[2])
body = b'{"query": ["' + b"x" * size + b'"]}'
headers = {"Content-Type": "application/json"}
out = {}
try:
    urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=120)
    out["urllib"] = {"status": 200}
except urllib.error.HTTPError as e:
    out["urllib"] = {"status": e.code, "body": json.loads(e.read())}
except Exception as e:
    out["urllib"] = {"error": repr(e)}
try:
    import requests
except ImportError:
    out["requests"] = {"missing": True}
else:
    try:
        r = requests.post(url, data=body, headers=headers, timeout=120)
        out["requests"] = {"status": r.status_code, "body": r.json()}
    except Exception as e:
        out["requests"] = {"error": repr(e)}
print(json.dumps(out))
"#;

fn python3() -> bool {
    Command::new("python3").arg("--version").output().is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_body_gets_413_in_urllib_and_requests() {
    if !python3() {
        let _ = writeln!(std::io::stderr(), "skipped: a_64_mib_body_gets_413_in_urllib_and_requests (no python3)");
        return;
    }
    let judge = PairwiseJudge::new(Arc::new(OracleBackend::default()), JudgeTemplate::gram_rr(), JudgeConfig::default());
    let config = ServeConfig { host: "127.0.0.1".into(), port: 0, ..ServeConfig::default() };
    let limit = config.max_body_bytes;
    let handle = start(config, judge).await.unwrap();
    let url = format!("http://{}/get_reward", handle.addr());
    let size = 64usize << 20;
    assert!(size > limit);
    let out = tokio::task::spawn_blocking(move || Command::new("python3").args(["-c", CLIENT, &url, &size.to_string()]).output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "client failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["urllib"]["status"], 413, "urllib: {}", v["urllib"]);
    let message = v["urllib"]["body"]["error"].as_str().unwrap();
    assert!(message.contains(&format!("limit of {limit} bytes")), "{message}");
    if v["requests"]["missing"] == true {
        let _ = writeln!(std::io::stderr(), "skipped: the `requests` half of a_64_mib_body_gets_413_in_urllib_and_requests (requests not installed)");
    } else {
        assert_eq!(v["requests"]["status"], 413, "requests: {}", v["requests"]);
    }
    // The drained requests are counted as 413s, and the server still answers afterwards.
    let metrics = handle.metrics.render();
    assert!(metrics.contains("gramrr_requests_total{endpoint=\"/get_reward\",status=\"413\"} 2"), "{metrics}");
    handle.shutdown().await.unwrap();
}
