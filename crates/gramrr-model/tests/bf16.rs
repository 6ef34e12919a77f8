//! `--dtype bf16`: matrices held as bf16 and multiplied with bf16 products and f32 sums,
//! against f32 compute on the same bf16-rounded weights, and against transformers in bf16.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use gramrr_model::engine::{Engine, LoadOptions};
use gramrr_model::model::{causal_mask, ForwardCtx, ForwardInput};
use gramrr_model::WeightDType;
use serde_json::Value;

const MODELS: [&str; 5] = ["llama-gqa-rope3-tied", "llama-untied", "qwen2-bias", "qwen3-qknorm", "qwen3-bf16"];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn expected(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(format!("expected/{name}.json"))).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// The fixture computed in bf16 (`dtype`), and in f32 on the same weights rounded to bf16.
fn engines(name: &str) -> (Engine, Engine) {
    let dir = fixtures().join("models").join(name);
    let bf16 = Engine::load(dir.to_str().unwrap(), &LoadOptions { dtype: WeightDType::Bf16, ..Default::default() }).unwrap();
    let mut f32e = Engine::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
    f32e.model.map_parameters(&mut |_, t| Ok(t.to_dtype(DType::BF16)?.to_dtype(DType::F32)?)).unwrap();
    (bf16, f32e)
}

fn logits(engine: &Engine, seq: &[u32]) -> Vec<f32> {
    let t = seq.len();
    let mask = causal_mask(t, &Device::Cpu).unwrap();
    let input = ForwardInput { ids: &[seq.to_vec()], positions: &[(0..t as u32).collect()], mask: Some(&mask), doc_starts: None, left_padding: None };
    let hidden = engine.model.forward_hidden(&input, None, &mut ForwardCtx::inference()).unwrap();
    engine.model.logits(&hidden).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// [`logits`] without a mask: the path scoring takes, where attention is the fused op (its
/// products in bf16 for a bf16 model, where the CPU has AVX512-BF16).
fn logits_fused(engine: &Engine, seq: &[u32]) -> Vec<f32> {
    let t = seq.len();
    let input = ForwardInput { ids: &[seq.to_vec()], positions: &[(0..t as u32).collect()], mask: None, doc_starts: None, left_padding: None };
    let hidden = engine.model.forward_hidden(&input, None, &mut ForwardCtx::inference()).unwrap();
    engine.model.logits(&hidden).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn case_seq(case: &Value) -> Vec<u32> {
    ids(&case["prompt_ids"]).into_iter().chain(ids(&case["completion_ids"])).collect()
}

#[test]
fn bf16_holds_every_matrix_as_bf16() {
    let (bf16, f32e) = engines("llama-untied");
    assert!(bf16.model.is_quantized() && !f32e.model.is_quantized());
    for layer in &bf16.model.layers {
        for (name, lin) in layer.linears() {
            let q = lin.quant.as_ref().unwrap_or_else(|| panic!("{name} is dense"));
            let (n, k) = q.dims();
            assert_eq!(q.dtype(), candle_core::quantized::GgmlDType::BF16, "{name}");
            assert_eq!(q.size_in_bytes(), 2 * n * k, "{name}: two bytes a weight");
        }
    }
    assert!(bf16.model.embed_quant.is_some() && bf16.model.lm_head_quant.is_some());
}

fn fixture_logits() -> std::collections::BTreeMap<String, candle_core::Tensor> {
    gramrr_model::weights::load_safetensors_file(&fixtures().join("expected/bf16.safetensors"), &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// `emulated` in expected/bf16.safetensors is transformers in f32 with every nn.Linear's input
/// rounded to bf16 (tools/make_bf16_fixture.py): the arithmetic the bf16 kernels claim, done
/// by torch. Rounding the activations moves these logits by 0.08 to 0.19 from f32 (the file's
/// `f32`), and gramrr reproduces torch's emulation to f32 summation noise (1e-6) at most
/// positions. Where some activation sits on a bf16 rounding boundary, the two f32 computations
/// (an f32 ulp apart) round it to neighbouring bf16 values, 2^-8 apart relative, which moves
/// that position's logits by up to a few 1e-2 and carries through attention to later ones. So:
/// at least half the positions of each model agree to 1e-5, and all of them to 0.1. A
/// truncating conversion, a missing or extra rounding, or bf16 sums would agree nowhere.
#[test]
fn bf16_logits_match_transformers_with_bf16_rounded_linear_inputs() {
    let want = fixture_logits();
    for name in MODELS {
        let (bf16, f32e) = engines(name);
        let vocab = bf16.model.cfg.vocab_size;
        let (mut exact, mut positions) = (0, 0);
        for (k, case) in expected(name)["cases"].as_array().unwrap().iter().enumerate() {
            let seq = case_seq(case);
            let get = |flavour: &str| want[&format!("{name}/case{k}/{flavour}")].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let (ours, ours_f32, emu) = (logits(&bf16, &seq), logits(&f32e, &seq), get("emulated"));
            // Our f32 path on the rounded weights is transformers' f32 (as in parity.rs).
            assert!(max_abs_diff(&ours_f32, &get("f32")) < 1e-4, "{name} case{k}: f32 reference");
            let d_f32 = max_abs_diff(&ours, &ours_f32);
            assert!(d_f32 > 0.02, "{name} case{k}: bf16 compute is not rounding its activations ({d_f32})");
            for (p, (a, b)) in ours.chunks(vocab).zip(emu.chunks(vocab)).enumerate() {
                let d = max_abs_diff(a, b);
                assert!(d < 0.1, "{name} case{k} position {p}: bf16 logits differ from transformers' emulation by {d}");
                exact += usize::from(d < 1e-5);
                positions += 1;
            }
        }
        assert!(2 * exact >= positions, "{name}: only {exact} of {positions} positions match the emulation to 1e-5");
    }
}

/// Against transformers run in bf16 (`torch_bf16`: bf16 activations, norms and residual
/// stream): gramrr's bf16 keeps f32 between the matmuls, so it stays closer to the f32 result,
/// case by case.
#[test]
fn bf16_is_no_further_from_f32_than_transformers_in_bf16() {
    let want = fixture_logits();
    for name in MODELS {
        let (bf16, _) = engines(name);
        for (k, case) in expected(name)["cases"].as_array().unwrap().iter().enumerate() {
            let get = |flavour: &str| want[&format!("{name}/case{k}/{flavour}")].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let f32l = get("f32");
            let torch = max_abs_diff(&get("torch_bf16"), &f32l);
            for (path, ours) in [("composed", logits(&bf16, &case_seq(case))), ("fused", logits_fused(&bf16, &case_seq(case)))] {
                let ours = max_abs_diff(&ours, &f32l);
                assert!(ours <= torch, "{name} case{k}, {path} attention: gramrr bf16 is {ours} from f32, transformers bf16 {torch}");
            }
        }
    }
}
