//! The engine against transformers: logits, completion log-probs, greedy continuations of a
//! left-padded batch, label probabilities and chat templates, on the tiny checkpoints that
//! `tools/make_model_fixtures.py` wrote.

use std::path::{Path, PathBuf};

use candle_core::Device;
use gramrr_model::backend::{Backend, ChatMessage, LabelRequest, Prompt, SamplingParams};
use gramrr_model::engine::{Engine, LoadOptions};
use gramrr_model::model::{causal_mask, ForwardCtx, ForwardInput};
use gramrr_model::tokenizer::render_chat_template;
use gramrr_model::weights::load_safetensors_file;
use serde_json::Value;

const MODELS: [&str; 5] = ["llama-gqa-rope3-tied", "llama-untied", "qwen2-bias", "qwen3-qknorm", "qwen3-bf16"];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn expected(name: &str) -> Value {
    let p = fixtures().join(format!("expected/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn load(name: &str) -> Engine {
    let dir = fixtures().join("models").join(name);
    Engine::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn logits_match_transformers_within_1e_4() {
    for name in MODELS {
        let engine = load(name);
        let exp = expected(name);
        let logits = load_safetensors_file(
            &fixtures().join("expected").join(exp["logits_file"].as_str().unwrap()),
            &Device::Cpu,
        )
        .unwrap();
        for case in exp["cases"].as_array().unwrap() {
            let prompt = case["prompt"].as_str().unwrap();
            let completion = case["completion"].as_str().unwrap();
            let p_ids = engine.encode_prompt(&Prompt::Raw(prompt.into())).unwrap();
            let c_ids = engine.tokenizer.encode(completion, false).unwrap();
            assert_eq!(p_ids, ids(&case["prompt_ids"]), "{name}: prompt ids of {prompt:?}");
            assert_eq!(c_ids, ids(&case["completion_ids"]), "{name}: completion ids of {completion:?}");
            let seq: Vec<u32> = p_ids.iter().chain(&c_ids).copied().collect();
            let t = seq.len();
            let mask = causal_mask(t, &Device::Cpu).unwrap();
            let input = ForwardInput {
                ids: &[seq.clone()],
                positions: &[(0..t as u32).collect()],
                mask: Some(&mask),
                doc_starts: None,
                left_padding: None,
            };
            let hidden = engine.model.forward_hidden(&input, None, &mut ForwardCtx::inference()).unwrap();
            let got = engine.model.logits(&hidden).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let want = logits[case["logits_tensor"].as_str().unwrap()].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let d = max_abs_diff(&got, &want);
            assert!(d < 1e-4, "{name}: logits of {prompt:?} differ by {d}");
        }
    }
}

#[test]
fn completion_logprobs_match_transformers_in_one_mixed_batch() {
    for name in MODELS {
        let engine = load(name);
        let exp = expected(name);
        let cases = exp["cases"].as_array().unwrap();
        let reqs: Vec<gramrr_model::backend::ScoreRequest> = cases
            .iter()
            .map(|c| gramrr_model::backend::ScoreRequest {
                prompt: Prompt::Raw(c["prompt"].as_str().unwrap().into()),
                completion: c["completion"].as_str().unwrap().into(),
            })
            .collect();
        let out = engine.score(&reqs).unwrap();
        for (o, c) in out.iter().zip(cases) {
            let want = floats(&c["token_logprobs"]);
            assert_eq!(o.completion_tokens, want.len());
            assert_eq!(o.prompt_tokens, c["prompt_ids"].as_array().unwrap().len());
            let d = max_abs_diff(&o.token_logprobs, &want);
            assert!(d < 1e-4, "{name}: token logprobs differ by {d}");
            let total = c["logprob"].as_f64().unwrap();
            assert!((o.logprob - total).abs() < 1e-3, "{name}: {} vs {total}", o.logprob);
        }
    }
}

#[test]
fn greedy_left_padded_batch_matches_transformers_generate() {
    for name in MODELS {
        let engine = load(name);
        let exp = expected(name);
        let g = &exp["greedy"];
        let prompts: Vec<Vec<u32>> =
            g["rows"].as_array().unwrap().iter().map(|r| ids(&r["prompt_ids"])).collect();
        let params = SamplingParams { max_new_tokens: g["max_new_tokens"].as_u64().unwrap() as usize, ..Default::default() };
        // One batch with every prompt length: the left-padding path is what is under test.
        let offs: Vec<u64> = (0..prompts.len() as u64).collect();
        let out = engine.generate_ids(&prompts, &offs, &params).unwrap();
        for (o, row) in out.iter().zip(g["rows"].as_array().unwrap()) {
            assert_eq!(o.token_ids, ids(&row["new_tokens"]), "{name}: prompt {:?}", row["prompt"]);
            let fr = serde_json::to_value(o.finish_reason).unwrap();
            assert_eq!(fr, row["finish_reason"], "{name}: finish reason for {:?}", row["prompt"]);
        }
    }
}

#[test]
fn label_probabilities_match_transformers() {
    for name in MODELS {
        let engine = load(name);
        let exp = expected(name);
        let lp = &exp["label_probs"];
        let labels: Vec<String> =
            lp["labels"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_string()).collect();
        let reqs: Vec<LabelRequest> = lp["cases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| LabelRequest { prompt: Prompt::Raw(c["prompt"].as_str().unwrap().into()), continuation: String::new() })
            .collect();
        let out = engine.label_probs(&reqs, &labels).unwrap();
        for (o, c) in out.iter().zip(lp["cases"].as_array().unwrap()) {
            assert!(max_abs_diff(&o.logprobs, &floats(&c["logprobs"])) < 1e-4, "{name}");
            assert!(max_abs_diff(&o.probs, &floats(&c["probs"])) < 1e-5, "{name}");
        }
    }
}

#[test]
fn chat_templates_render_byte_identical_to_transformers() {
    let cases: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected/chat_templates.json")).unwrap()).unwrap();
    let cases = cases.as_array().unwrap();
    assert!(cases.len() >= 10);
    for (i, case) in cases.iter().enumerate() {
        let which = case["template"].as_str().unwrap();
        let template = std::fs::read_to_string(fixtures().join(format!("templates/{which}.jinja"))).unwrap();
        let tok_dir = fixtures().join(format!("tokenizers/{which}"));
        let tok = gramrr_model::tokenizer::TextTokenizer::from_dir(&tok_dir).unwrap();
        let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
        let kwargs = case["kwargs"].as_object().cloned().unwrap_or_default();
        let got = render_chat_template(
            &template,
            &messages,
            case["add_generation_prompt"].as_bool().unwrap(),
            &tok.special,
            &kwargs,
        )
        .unwrap();
        assert_eq!(got, case["rendered"].as_str().unwrap(), "case {i} ({which})");
    }
}
