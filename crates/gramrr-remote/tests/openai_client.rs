//! The official `openai` Python client against `gramrr serve`'s /v1/completions and
//! /v1/models, unchanged; skipped where python3 or the package is missing.

mod common;

use std::process::Command;

use common::{engine, serve};
use gramrr_model::backend::{Backend, Prompt, ScoreRequest};

const SCRIPT: &str = r#"
import json, sys, openai
client = openai.OpenAI(base_url=sys.argv[1], api_key="sekret")
models = [m.id for m in client.models.list().data]
greedy = client.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=12, temperature=0)
sampled = client.completions.create(model="tiny", prompt=[[5, 6, 7, 8]], max_tokens=6, temperature=0.9, seed=3, n=3)
echo = client.completions.create(model="tiny", prompt="The quick brown fox jumps", max_tokens=0, echo=True, logprobs=2)
stop = client.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=12, temperature=0, stop=["e"])
try:
    client.completions.create(model="other", prompt="x", max_tokens=1)
    wrong = "accepted"
except openai.NotFoundError as e:
    wrong = "404"
print(json.dumps({
    "models": models,
    "greedy": greedy.choices[0].text, "finish": greedy.choices[0].finish_reason, "usage": greedy.usage.completion_tokens,
    "sampled": [c.text for c in sampled.choices],
    "echo_text": echo.choices[0].text, "echo_lp": echo.choices[0].logprobs.token_logprobs,
    "echo_top": echo.choices[0].logprobs.top_logprobs,
    "stop": stop.choices[0].text, "wrong_model": wrong,
}))
"#;

#[test]
fn the_openai_python_client_works_unchanged() {
    let ok = Command::new("python3").args(["-c", "import openai"]).output().map(|o| o.status.success()).unwrap_or(false);
    if !ok {
        // Written past the test harness's capture, so the skip shows in `cargo test` output.
        let _ = std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("skipped: python3 with the `openai` package is not installed (pip install openai)\n"));
        return;
    }
    let local = engine("qwen3-qknorm");
    let server = serve(local.clone(), "tiny", Some("sekret"));
    let out = Command::new("python3").args(["-c", SCRIPT, &server.url]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["models"], serde_json::json!(["tiny"]));
    let params = gramrr_model::backend::SamplingParams { max_new_tokens: 12, ..Default::default() };
    let want = local.generate(&[gramrr_model::backend::GenerateRequest { prompt: "The quick brown fox".into(), seed_offset: 0 }], &params).unwrap();
    assert_eq!(v["greedy"], want[0].text.as_str());
    assert_eq!(v["usage"], want[0].token_ids.len());
    assert_eq!(v["sampled"].as_array().unwrap().len(), 3);
    assert_eq!(v["wrong_model"], "404");
    assert!(!v["stop"].as_str().unwrap().contains('e'));
    // echo with max_tokens 0: the prompt back, its log-probs (first null) equal to local scoring.
    assert_eq!(v["echo_text"], "The quick brown fox jumps");
    let lp = v["echo_lp"].as_array().unwrap();
    assert!(lp[0].is_null());
    let ids = local.encode_prompt(&Prompt::Raw("The quick brown fox jumps".into())).unwrap();
    let first = local.tokenizer.decode(&ids[..1], false).unwrap();
    let rest = local.tokenizer.decode(&ids[1..], false).unwrap();
    let s = local.score(&[ScoreRequest { prompt: Prompt::Raw(first), completion: rest }]).unwrap();
    assert_eq!(lp.len(), ids.len());
    if s[0].completion_tokens == ids.len() - 1 {
        for (a, b) in lp[1..].iter().zip(&s[0].token_logprobs) {
            assert!((a.as_f64().unwrap() - *b as f64).abs() < 1e-4, "{a} vs {b}");
        }
    }
    assert_eq!(v["echo_top"][1].as_object().unwrap().len(), 2);
}
