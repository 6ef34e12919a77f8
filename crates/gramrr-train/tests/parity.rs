//! Parity with the hand-written PyTorch loop of tools/make_train_fixtures.py (semantics in
//! tests/fixtures/README.md): tokenisation, step-0 gradients, per-step losses, gradient norms,
//! learning rates and final weights of full, weighted-segment and LoRA runs; the label loss and
//! its gradients; the saved adapter's PEFT layout; merged LoRA logits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use gramrr_model::model::{Decoder, ForwardCtx};
use gramrr_model::tokenizer::TextTokenizer;
use gramrr_model::weights::{load_safetensors_file, SafetensorsCheckpoint};
use gramrr_model::{DecoderConfig, WeightDType};
use gramrr_train::loss::{build_micro_batch, micro_batch_loss, LabelLoss};
use gramrr_train::*;
use serde_json::Value;

const LOSS_REL_TOL: f64 = 1e-4;
const WEIGHT_TOL: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn base_dir() -> PathBuf {
    fixtures().join("train-base")
}

fn load_base() -> (Decoder, TextTokenizer) {
    let dir = base_dir();
    let cfg = DecoderConfig::from_file(&dir.join("config.json")).unwrap();
    let ck = SafetensorsCheckpoint::open(&dir, &Device::Cpu, WeightDType::F32).unwrap();
    (Decoder::load(&cfg, &ck).unwrap(), TextTokenizer::from_dir(&dir).unwrap())
}

fn json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(name)).unwrap()).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

/// The fixture hyper-parameters as an SftConfig.
fn fixture_config() -> SftConfig {
    SftConfig {
        epochs: 2.0,
        lr: 1e-2,
        scheduler: Scheduler::Cosine,
        warmup_ratio: 0.25,
        batch_size: 2,
        grad_accum: 2,
        adam: AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 },
        max_grad_norm: 1.0,
        max_len: 512,
        shuffle: false,
        ..Default::default()
    }
}

#[derive(Default)]
struct Collect(Vec<StepMetrics>);
impl TrainObserver for Collect {
    fn on_step(&mut self, m: &StepMetrics) {
        self.0.push(m.clone());
    }
}

fn check_examples(examples: &[SftExample], fixture: &Value) {
    let want = fixture["examples"].as_array().unwrap();
    assert_eq!(examples.len(), want.len());
    for (e, w) in examples.iter().zip(want) {
        let ids: Vec<u32> = w["input_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let weights: Vec<f32> = w["weights"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        assert_eq!(e.ids().collect::<Vec<_>>(), ids);
        assert_eq!(e.prompt_ids.len() as u64, w["prompt_len"].as_u64().unwrap());
        let mine: Vec<f32> = (0..e.len()).map(|t| e.weight_at(t)).collect();
        assert_eq!(mine, weights);
    }
}

/// Compares per-step loss, grad norm and lr; returns the largest relative loss difference.
fn check_steps(metrics: &[StepMetrics], fixture: &Value) -> f64 {
    let steps = fixture["steps"].as_array().unwrap();
    assert_eq!(metrics.len(), steps.len());
    let mut worst = 0f64;
    for (m, s) in metrics.iter().zip(steps) {
        let loss = s["loss"].as_f64().unwrap();
        let rel = (m.loss - loss).abs() / loss.abs();
        worst = worst.max(rel);
        assert!(rel < LOSS_REL_TOL, "step {}: loss {} vs torch {loss}", m.step, m.loss);
        let gn = s["grad_norm"].as_f64().unwrap();
        assert!((m.grad_norm - gn).abs() / gn < LOSS_REL_TOL, "step {}: grad norm {} vs {gn}", m.step, m.grad_norm);
        let lr = s["lr"].as_f64().unwrap();
        assert!((m.lr - lr).abs() < 1e-12, "step {}: lr {} vs {lr}", m.step, m.lr);
    }
    worst
}

fn run_full(data: &str, fixture: &str, final_file: &str, workers: usize) {
    let (decoder, tok) = load_base();
    let (examples, stats) = load_sft_jsonl(&fixtures().join(data), &tok, &[], 512, Truncate::Left).unwrap();
    assert_eq!(stats.kept, 8);
    let fx = json(fixture);
    check_examples(&examples, &fx);
    let mut obs = Collect::default();
    let (trained, report) = train_sft(decoder, &tok, &examples, &SftConfig { workers, ..fixture_config() }, None, &mut obs).unwrap();
    assert_eq!(report.steps, 4);
    let worst_loss = check_steps(&obs.0, &fx);
    let want = load_safetensors_file(&fixtures().join(final_file), &Device::Cpu).unwrap();
    let mine: BTreeMap<String, Tensor> = trained.named_parameters().into_iter().collect();
    assert_eq!(mine.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    let mut worst = 0f32;
    for (k, w) in &want {
        let d = max_abs_diff(&mine[k], w);
        worst = worst.max(d);
        assert!(d < WEIGHT_TOL, "{k}: max |Δ| = {d}");
    }
    eprintln!("{fixture}: max relative loss difference {worst_loss:.2e}, max weight difference {worst:.2e}");
}

#[test]
fn full_finetuning_matches_torch() {
    run_full("sft.jsonl", "full_ft.json", "full_ft_final.safetensors", 1);
}

/// Two data-parallel workers split each micro-batch in two: the same loss, summed in another
/// order, so torch's trajectory is still matched.
#[test]
fn data_parallel_workers_match_torch() {
    run_full("sft.jsonl", "full_ft.json", "full_ft_final.safetensors", 2);
}

#[test]
fn weighted_segments_match_torch() {
    run_full("sft_weighted.jsonl", "weighted.json", "weighted_final.safetensors", 1);
}

#[test]
fn step0_gradients_match_torch() {
    let (mut decoder, tok) = load_base();
    let (examples, _) = load_sft_jsonl(&fixtures().join("sft.jsonl"), &tok, &[], 512, Truncate::Left).unwrap();
    let mut vars: Vec<(String, Var)> = vec![];
    decoder
        .map_parameters(&mut |n, t| {
            let v = Var::from_tensor(t)?;
            vars.push((n.to_string(), v.clone()));
            Ok(v.as_tensor().clone())
        })
        .unwrap();
    let step0: Vec<&SftExample> = examples[..4].iter().collect();
    let norm: f64 = step0.iter().map(|e| e.target_weight()).sum();
    assert_eq!(norm, 45.0);
    let mut grads: BTreeMap<String, Tensor> = BTreeMap::new();
    for mb in step0.chunks(2) {
        let mb = build_micro_batch(mb, tok.pad_token_id.unwrap());
        let l = micro_batch_loss(&decoder, &mb, &mut ForwardCtx::training(None), false, norm, None, &Device::Cpu).unwrap();
        let gs = l.total.backward().unwrap();
        for (n, v) in &vars {
            let g = gs.get(v.as_tensor()).unwrap_or_else(|| panic!("no gradient for {n}")).clone();
            let acc = match grads.remove(n) {
                None => g,
                Some(a) => (a + g).unwrap(),
            };
            grads.insert(n.clone(), acc);
        }
    }
    let want = load_safetensors_file(&fixtures().join("full_ft_grads0.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(grads.len(), want.len());
    for (k, w) in &want {
        let scale = w.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-6);
        let d = max_abs_diff(&grads[k], w);
        assert!(d / scale < 1e-4, "{k}: max |Δ| = {d} (scale {scale})");
    }
}

#[test]
fn lora_matches_torch_and_peft() {
    let (mut decoder, tok) = load_base();
    let lcfg = load_adapter(&mut decoder, &fixtures().join("lora_init")).unwrap();
    assert_eq!((lcfg.rank, lcfg.alpha, lcfg.targets.len()), (4, 8.0, 7));
    let (examples, _) = load_sft_jsonl(&fixtures().join("sft.jsonl"), &tok, &[], 512, Truncate::Left).unwrap();
    let fx = json("lora.json");
    check_examples(&examples, &fx);
    let cfg = SftConfig { lora: Some(lcfg.clone()), merge_lora_on_return: false, ..fixture_config() };
    let out = tempfile::tempdir().unwrap();
    let spec = TrainOutput { dir: out.path().to_path_buf(), base_model_dir: Some(base_dir()), plot: false };
    let mut obs = Collect::default();
    let (mut trained, _) = train_sft(decoder, &tok, &examples, &cfg, Some(&spec), &mut obs).unwrap();
    let worst_loss = check_steps(&obs.0, &fx);

    // The adapter written in PEFT layout matches PEFT's, name for name.
    let want = load_safetensors_file(&fixtures().join("lora_final/adapter_model.safetensors"), &Device::Cpu).unwrap();
    let mine = load_safetensors_file(&out.path().join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(mine.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    let mut worst = 0f32;
    for (k, w) in &want {
        let d = max_abs_diff(&mine[k], w);
        worst = worst.max(d);
        assert!(d < WEIGHT_TOL, "{k}: max |Δ| = {d}");
    }
    let cfg_mine: Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("adapter_config.json")).unwrap()).unwrap();
    let cfg_want = json("lora_final/adapter_config.json");
    for k in ["r", "lora_alpha", "lora_dropout", "target_modules", "peft_type", "task_type", "bias", "fan_in_fan_out", "use_rslora", "use_dora"] {
        assert_eq!(cfg_mine[k], cfg_want[k], "adapter_config.json field {k}");
    }

    // Merged weights and logits as PEFT's merge_and_unload gives them.
    merge_lora(&mut trained).unwrap();
    let merged = load_safetensors_file(&fixtures().join("lora_merged.safetensors"), &Device::Cpu).unwrap();
    let params: BTreeMap<String, Tensor> = trained.named_parameters().into_iter().collect();
    for k in fx["merged"]["tensors"].as_array().unwrap() {
        let k = k.as_str().unwrap();
        let d = max_abs_diff(&params[k], &merged[k]);
        worst = worst.max(d);
        assert!(d < WEIGHT_TOL, "merged {k}: max |Δ| = {d}");
    }
    for (k, sums) in fx["merged"]["checksums"].as_object().unwrap() {
        let t = params[k].to_dtype(candle_core::DType::F64).unwrap();
        let s = t.sum_all().unwrap().to_scalar::<f64>().unwrap();
        let abs = t.abs().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        let want_abs = sums["abs_sum"].as_f64().unwrap();
        assert!((abs - want_abs).abs() / want_abs < 1e-4, "{k}: abs sum {abs} vs {want_abs}");
        assert!((s - sums["sum"].as_f64().unwrap()).abs() < 1e-4 * want_abs, "{k}: sum {s}");
    }
    let ids: Vec<u32> = fx["merged"]["logits_input_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    let n = ids.len();
    let mask = gramrr_model::model::causal_mask(n, &Device::Cpu).unwrap();
    let input = gramrr_model::model::ForwardInput { ids: &[ids], positions: &[(0..n as u32).collect()], mask: Some(&mask), doc_starts: None, left_padding: None };
    let h = trained.forward_hidden(&input, None, &mut ForwardCtx::inference()).unwrap();
    let logits = trained.logits(&h).unwrap();
    let d = max_abs_diff(&logits, &merged["logits"]);
    assert!(d < 1e-3, "merged logits: max |Δ| = {d}");
    eprintln!("lora: max relative loss difference {worst_loss:.2e}, max weight difference {worst:.2e}, merged logits {d:.2e}");
}

#[test]
fn label_loss_matches_torch() {
    let (mut decoder, tok) = load_base();
    let fx = json("label_loss.json");
    let labels: Vec<String> = fx["labels"].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect();
    let mut vars: BTreeMap<String, Var> = BTreeMap::new();
    decoder
        .map_parameters(&mut |n, t| {
            let v = Var::from_tensor(t)?;
            vars.insert(n.to_string(), v.clone());
            Ok(v.as_tensor().clone())
        })
        .unwrap();
    let mut examples = vec![];
    for case in fx["cases"].as_array().unwrap() {
        let rec = SftRecord::Completion {
            prompt: case["prompt"].as_str().unwrap().into(),
            segments: vec![],
            label: Some(data::LabelRef::Text(case["label"].as_str().unwrap().into())),
        };
        let ex = tokenize_record(&rec, &tok, &labels).unwrap();
        let want: Vec<u32> = case["prompt_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        assert_eq!(ex.prompt_ids, want);
        assert!(ex.completion_ids.is_empty());
        examples.push(ex);
    }
    let label_ids = trainer::resolve_label_ids(&tok, &LabelLossConfig { tokens: labels.clone(), smoothing: 0.1, weight: 1.0 }).unwrap();
    assert_eq!(label_ids, vec![270, 273]);
    let ll = LabelLoss { label_ids, smoothing: fx["label_smoothing"].as_f64().unwrap(), weight: 1.0 };
    let refs: Vec<&SftExample> = examples.iter().collect();
    let mb = build_micro_batch(&refs, tok.pad_token_id.unwrap());
    let l = micro_batch_loss(&decoder, &mb, &mut ForwardCtx::training(None), false, 0.0, Some((&ll, 2.0)), &Device::Cpu).unwrap();
    let loss = l.total.to_scalar::<f32>().unwrap() as f64;
    let want = fx["loss"].as_f64().unwrap();
    assert!((loss - want).abs() / want < LOSS_REL_TOL, "label loss {loss} vs {want}");
    let gs = l.total.backward().unwrap();
    let want_g = load_safetensors_file(&fixtures().join("label_loss_grads.safetensors"), &Device::Cpu).unwrap();
    for (k, w) in &want_g {
        let g = gs.get(vars[k].as_tensor()).unwrap();
        let scale = w.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let d = max_abs_diff(g, w);
        assert!(d / scale < 1e-4, "{k}: max |Δ| = {d} (scale {scale})");
    }
}
