//! `gramrr merge-lora` writes a full checkpoint whose logits are PEFT's `merge_and_unload`
//! logits, and `gramrr train sft` (full) writes a checkpoint gramrr loads back.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};
use gramrr_model::model::{Decoder, ForwardCtx, ForwardInput};
use gramrr_model::weights::{load_safetensors_file, SafetensorsCheckpoint};
use gramrr_model::{DecoderConfig, WeightDType};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../gramrr-train/tests/fixtures")
}

fn load(dir: &Path) -> Decoder {
    let cfg = DecoderConfig::from_file(&dir.join("config.json")).unwrap();
    let ck = SafetensorsCheckpoint::open(dir, &Device::Cpu, WeightDType::F32).unwrap();
    Decoder::load(&cfg, &ck).unwrap()
}

fn logits(d: &Decoder, ids: Vec<u32>) -> Tensor {
    let n = ids.len();
    let input = ForwardInput { ids: &[ids], positions: &[(0..n as u32).collect()], mask: None, doc_starts: None, left_padding: None };
    let h = d.forward_hidden(&input, None, &mut ForwardCtx::inference()).unwrap();
    d.logits(&h).unwrap()
}

#[test]
fn merge_lora_reproduces_peft_merged_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    // The base comes from adapter_config.json ("../train-base", relative to the adapter).
    let o = Command::new(env!("CARGO_BIN_EXE_gramrr"))
        .args(["merge-lora", "--adapter", fixtures().join("lora_final").to_str().unwrap(), "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let fx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("lora.json")).unwrap()).unwrap();
    let ids: Vec<u32> =
        fx["merged"]["logits_input_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    let want = load_safetensors_file(&fixtures().join("lora_merged.safetensors"), &Device::Cpu).unwrap();
    let got = logits(&load(&out), ids);
    let d = (got - &want["logits"]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(d < 1e-3, "merged logits differ from PEFT's by {d}");
    // No lm_head.weight for a tied model, as transformers writes it.
    let names = load_safetensors_file(&out.join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(!names.contains_key("lm_head.weight"));
}

#[test]
fn full_finetuning_writes_a_loadable_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("full");
    let f = fixtures();
    let o = Command::new(env!("CARGO_BIN_EXE_gramrr"))
        .args(["train", "sft", "--model", f.join("train-base").to_str().unwrap()])
        .args(["--data", f.join("sft.jsonl").to_str().unwrap(), "--out", out.to_str().unwrap()])
        .args(["--max-steps", "6", "--lr", "1e-3", "--batch-size", "4", "--no-shuffle"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["steps"], 6);
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "metrics.jsonl", "loss.png", "train_report.json"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    assert_eq!(std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().count(), 6);
    let trained = load(&out);
    let base = load(&f.join("train-base"));
    let d = (logits(&trained, vec![1, 2, 3]) - logits(&base, vec![1, 2, 3])).unwrap().abs().unwrap().max_all().unwrap();
    assert!(d.to_scalar::<f32>().unwrap() > 0.0, "training changed nothing");
}
