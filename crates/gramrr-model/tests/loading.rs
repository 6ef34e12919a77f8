//! Loading real HF layouts, and the errors a broken one gives.

use std::path::{Path, PathBuf};

use gramrr_model::backend::{Backend, Prompt, ScoreRequest};
use gramrr_model::engine::{Engine, LoadOptions};
use gramrr_model::WeightDType;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models").join(name)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn load_err(dir: &Path) -> String {
    match Engine::load(dir.to_str().unwrap(), &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(p, v.to_string()).unwrap();
}

#[test]
fn unknown_architecture_lists_the_supported_ones() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("qwen3-qknorm"), tmp.path());
    edit_config(tmp.path(), |v| v["architectures"] = serde_json::json!(["MistralForCausalLM"]));
    let e = load_err(tmp.path());
    assert!(e.contains("config.json") && e.contains("MistralForCausalLM"), "{e}");
    assert!(e.contains("LlamaForCausalLM") && e.contains("Qwen2ForCausalLM") && e.contains("Qwen3ForCausalLM"), "{e}");
}

#[test]
fn shape_mismatch_names_the_file_and_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("qwen3-qknorm"), tmp.path());
    edit_config(tmp.path(), |v| v["intermediate_size"] = serde_json::json!(96));
    let e = load_err(tmp.path());
    assert!(e.contains("model.safetensors") && e.contains("model.layers.0.mlp.gate_proj.weight"), "{e}");
    assert!(e.contains("[128, 64]") && e.contains("[96, 64]"), "{e}");
}

#[test]
fn missing_tensor_in_a_shard_names_the_index_and_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("llama-untied"), tmp.path());
    // An untied model without lm_head.weight: drop it from the index and from its shard.
    let idx = tmp.path().join("model.safetensors.index.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&idx).unwrap()).unwrap();
    let shard = v["weight_map"]["lm_head.weight"].as_str().unwrap().to_string();
    v["weight_map"].as_object_mut().unwrap().remove("lm_head.weight");
    std::fs::write(&idx, v.to_string()).unwrap();
    let tensors = gramrr_model::weights::load_safetensors_file(&tmp.path().join(&shard), &candle_core::Device::Cpu).unwrap();
    let kept: Vec<(String, candle_core::Tensor)> =
        tensors.into_iter().filter(|(n, _)| n != "lm_head.weight").collect();
    gramrr_model::weights::save_safetensors(&kept, &tmp.path().join(&shard), candle_core::DType::F32).unwrap();
    let e = load_err(tmp.path());
    assert!(e.contains("lm_head.weight") && e.contains("is missing"), "{e}");
}

#[test]
fn missing_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("qwen2-bias"), tmp.path());
    std::fs::remove_file(tmp.path().join("model.safetensors")).unwrap();
    let e = load_err(tmp.path());
    assert!(e.contains("model.safetensors") && e.contains("missing file"), "{e}");
    copy_dir(&fixture("qwen2-bias"), tmp.path());
    std::fs::remove_file(tmp.path().join("tokenizer.json")).unwrap();
    let e = load_err(tmp.path());
    assert!(e.contains("tokenizer.json"), "{e}");
    let e = load_err(&tmp.path().join("nope"));
    assert!(e.contains("nope"), "{e}");
}

#[test]
fn bad_gqa_config_is_explained() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("qwen3-qknorm"), tmp.path());
    edit_config(tmp.path(), |v| v["num_key_value_heads"] = serde_json::json!(3));
    let e = load_err(tmp.path());
    assert!(e.contains("\"num_key_value_heads\"") || e.contains("num_key_value_heads: 3 does not divide"), "{e}");
    assert!(e.contains("num_attention_heads"), "{e}");
}

#[test]
fn model_resolves_from_the_offline_hf_cache_by_repo_id() {
    let tmp = tempfile::tempdir().unwrap();
    let snap = tmp.path().join("models--tiny-org--qwen3/snapshots/0123abcd");
    copy_dir(&fixture("qwen3-qknorm"), &snap);
    std::fs::create_dir_all(tmp.path().join("models--tiny-org--qwen3/refs")).unwrap();
    std::fs::write(tmp.path().join("models--tiny-org--qwen3/refs/main"), "0123abcd").unwrap();
    // SAFETY: the only test in this binary that reads HF_HUB_CACHE.
    unsafe { std::env::set_var("HF_HUB_CACHE", tmp.path()) };
    let engine = Engine::load("tiny-org/qwen3", &LoadOptions::default()).unwrap();
    assert_eq!(engine.dir, snap);
    let direct = Engine::load(fixture("qwen3-qknorm").to_str().unwrap(), &LoadOptions::default()).unwrap();
    let req = [ScoreRequest { prompt: Prompt::Raw("Hello there".into()), completion: " friend".into() }];
    assert_eq!(engine.score(&req).unwrap(), direct.score(&req).unwrap());
}

#[test]
fn bf16_option_rounds_f32_weights_like_a_bf16_checkpoint() {
    // qwen3-bf16 is qwen3-qknorm rounded to bf16: loading the f32 one with --dtype bf16 must
    // give the bf16 checkpoint's numbers exactly (same weights, same bf16 kernels), and
    // neither is the f32 model's.
    let opts = LoadOptions { dtype: WeightDType::Bf16, ..Default::default() };
    let rounded = Engine::load(fixture("qwen3-qknorm").to_str().unwrap(), &opts).unwrap();
    let bf16 = Engine::load(fixture("qwen3-bf16").to_str().unwrap(), &opts).unwrap();
    let f32m = Engine::load(fixture("qwen3-qknorm").to_str().unwrap(), &LoadOptions::default()).unwrap();
    let req = [ScoreRequest { prompt: Prompt::Raw("The cat sat".into()), completion: " on the mat.".into() }];
    let a = rounded.score(&req).unwrap();
    let b = bf16.score(&req).unwrap();
    let c = f32m.score(&req).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
}
