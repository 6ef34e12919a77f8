//! GGUF checkpoints: the tiny test models written by llama.cpp's `gguf` Python package
//! (`tools/make_gguf_fixtures.py`, committed) load into the same model as their safetensors
//! source, and broken files are refused with the key or tensor named.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};
use gramrr_model::backend::ChatMessage;
use gramrr_model::engine::{Engine, LoadOptions};
use gramrr_model::gguf::GgufFile;
use gramrr_model::backend::SamplingParams;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn load(path: &Path, dequantize: bool) -> Engine {
    Engine::load(path.to_str().unwrap(), &LoadOptions { dequantize, ..Default::default() })
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn params(e: &Engine) -> Vec<(String, Vec<f32>, Vec<usize>)> {
    e.model
        .named_parameters()
        .into_iter()
        .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), t.dims().to_vec()))
        .collect()
}

const TEXTS: [&str; 4] = [
    "Hello world, the quick brown fox.",
    "  numbers 12345 and   spaces\nnew lines\n\n",
    "Ünïcödé café — naïve 🦀",
    "<|im_start|>user\nhi<|im_end|>",
];

fn items(e: &Engine) -> Vec<(Vec<u32>, Vec<u32>)> {
    TEXTS.iter().map(|t| (e.tokenizer.encode("Question: ", false).unwrap(), e.tokenizer.encode(t, false).unwrap())).collect()
}

fn token_logprobs(e: &Engine) -> Vec<f32> {
    e.score_ids(&items(e)).unwrap().into_iter().flat_map(|s| s.token_logprobs).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn tokenizer_config_and_template_come_from_the_metadata() {
    for (model, file) in [
        ("llama-gqa-rope3-tied", "llama-gqa-rope3-tied.q8_0.gguf"),
        ("qwen2-bias", "qwen2-bias.q8_0.gguf"),
        ("qwen3-qknorm", "qwen3-qknorm.q8_0.gguf"),
    ] {
        let st = load(&fixture("models").join(model), false);
        let g = load(&fixture("gguf").join(file), false);
        for t in TEXTS {
            for special in [false, true] {
                assert_eq!(
                    g.tokenizer.encode(t, special).unwrap(),
                    st.tokenizer.encode(t, special).unwrap(),
                    "{file}: {t:?} (special tokens: {special})"
                );
            }
        }
        let ids = st.tokenizer.encode(TEXTS[2], false).unwrap();
        assert_eq!(g.tokenizer.decode(&ids, true).unwrap(), st.tokenizer.decode(&ids, true).unwrap());
        let (a, b) = (&g.model.cfg, &st.model.cfg);
        assert_eq!(
            (a.architecture, a.vocab_size, a.hidden_size, a.intermediate_size, a.num_hidden_layers),
            (b.architecture, b.vocab_size, b.hidden_size, b.intermediate_size, b.num_hidden_layers),
            "{file}"
        );
        assert_eq!(
            (a.num_attention_heads, a.num_key_value_heads, a.head_dim, a.tie_word_embeddings, a.qkv_bias, a.qk_norm),
            (b.num_attention_heads, b.num_key_value_heads, b.head_dim, b.tie_word_embeddings, b.qkv_bias, b.qk_norm),
            "{file}"
        );
        assert_eq!((a.rope_theta, a.rms_norm_eps as f32, a.bos_token_id), (b.rope_theta, b.rms_norm_eps as f32, b.bos_token_id));
        assert!(g.generation.eos_token_ids.iter().any(|e| st.generation.eos_token_ids.contains(e)), "{file}");
        if st.tokenizer.chat_template.is_some() {
            let chat = [ChatMessage::user("Which is better?")];
            assert_eq!(
                g.tokenizer.apply_chat_template(&chat, true, &Default::default()).unwrap(),
                st.tokenizer.apply_chat_template(&chat, true, &Default::default()).unwrap(),
                "{file}"
            );
        }
    }
}

#[test]
fn f16_gguf_holds_exactly_the_f16_rounded_safetensors_weights() {
    // Exact equality after undoing llama.cpp's q/k row permutation: a wrong permutation, name
    // mapping or transposition cannot pass. 1-D tensors are f32 in the file, like the converter writes.
    let st = load(&fixture("models/llama-gqa-rope3-tied"), false);
    let g = load(&fixture("gguf/llama-gqa-rope3-tied.f16.gguf"), false);
    let (ps, pg) = (params(&st), params(&g));
    assert_eq!(ps.len(), pg.len());
    for ((n1, v1, d1), (n2, v2, d2)) in ps.iter().zip(&pg) {
        assert_eq!((n1, d1), (n2, d2));
        let want: Vec<f32> =
            if d1.len() == 2 { v1.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect() } else { v1.clone() };
        assert!(want == *v2, "{n1}: differs from the f16-rounded safetensors weight");
    }
    // Same model: against the safetensors model with its matrices rounded to f16, log-probs
    // agree to float noise (the only other difference: Llama 3.1 RoPE scaling as f32 factors).
    let mut rounded = load(&fixture("models/llama-gqa-rope3-tied"), false);
    rounded
        .model
        .map_parameters(&mut |_, t| Ok(if t.rank() == 2 { t.to_dtype(DType::F16)?.to_dtype(DType::F32)? } else { t.clone() }))
        .unwrap();
    let d = max_abs_diff(&token_logprobs(&rounded), &token_logprobs(&g));
    eprintln!("f16 GGUF vs f16-rounded safetensors: |Δ log-prob| {d:.2e}");
    assert!(d < 1e-4, "f16 GGUF vs f16-rounded safetensors log-probs: {d}");
    // Greedy decoding follows the same path.
    let p = SamplingParams { max_new_tokens: 12, temperature: 0.0, ignore_eos: true, ..Default::default() };
    let prompt = vec![st.tokenizer.encode("Hello world", true).unwrap()];
    assert_eq!(st.generate_ids(&prompt, &[0], &p).unwrap()[0].token_ids, g.generate_ids(&prompt, &[0], &p).unwrap()[0].token_ids);
}

#[test]
fn q8_0_gguf_matches_safetensors_within_the_format_tolerance() {
    for (model, file) in [
        ("llama-gqa-rope3-tied", "llama-gqa-rope3-tied.q8_0.gguf"),
        ("qwen2-bias", "qwen2-bias.q8_0.gguf"),
        ("qwen3-qknorm", "qwen3-qknorm.q8_0.gguf"),
    ] {
        let st = load(&fixture("models").join(model), false);
        let deq = load(&fixture("gguf").join(file), true);
        let quant = load(&fixture("gguf").join(file), false);
        assert!(quant.model.is_quantized() && !deq.model.is_quantized(), "{file}");
        // Q8_0: blocks of 32 with one scale d = max|w|/127, q = round(w/d), stored as f16(d)·q:
        // each weight within d/2, plus |q| ≤ 127 times the scale's f16 rounding (2⁻¹¹·d).
        for ((n, v1, d1), (_, v2, _)) in params(&st).iter().zip(&params(&deq)) {
            if d1.len() != 2 {
                assert!(v1 == v2, "{file}: {n} (f32 in the file) differs");
                continue;
            }
            for (b1, b2) in v1.chunks(32).zip(v2.chunks(32)) {
                let d = b1.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
                let err = max_abs_diff(b1, b2);
                let bound = d * (0.5 + 127.0 / 2048.0) + 1e-7;
                assert!(err <= bound, "{file}: {n}: block error {err} > {bound}");
            }
        }
        // Scoring runs many rows at once: the quantized model dequantizes slice by slice into
        // the f32 GEMM, so it computes what the dequantized model does, to summation order; or,
        // where the CPU has AVX512-BF16, into the bf16 GEMM, which rounds both operands to 8
        // significant bits (2⁻⁹ relative, half of Q8_0's step): judged like the Q8 errors below,
        // at half their bounds (measured on these fixtures: max 2.1% of the spread, mean 0.35%).
        let (a, b, c) = (token_logprobs(&st), token_logprobs(&deq), token_logprobs(&quant));
        let d_dense = max_abs_diff(&b, &c);
        let spread = a.iter().map(|x| x.abs()).sum::<f32>() / a.len() as f32;
        if gramrr_model::qlinear::prefill_in_bf16() {
            let mean_dense = b.iter().zip(&c).map(|(p, q)| (p - q).abs()).sum::<f32>() / b.len() as f32;
            eprintln!("{file}: bf16 scoring vs dequantized f32: |Δ log-prob| max {d_dense:.2e}, mean {mean_dense:.2e}");
            assert!(d_dense > 0.0, "{file}: bf16 scoring computed exactly the f32 numbers; is it used?");
            assert!(mean_dense < 0.01 * spread && d_dense < 0.04 * spread, "{file}: bf16 scoring vs dequantized: max {d_dense}, mean {mean_dense}");
        } else {
            assert!(d_dense < 1e-3, "{file}: quantized scoring vs dequantized: {d_dense}");
        }
        // A few rows (decoding, short prompts: fewer than DENSE_MIN_ROWS) take the integer
        // kernels with 8-bit activations.
        let short: Vec<Vec<u32>> = TEXTS.iter().map(|t| st.tokenizer.encode(t, false).unwrap()[..4].to_vec()).collect();
        let cand: Vec<u32> = (0..st.model.cfg.vocab_size as u32).step_by(7).collect();
        let lp = |e: &Engine| -> Vec<f32> { e.next_token_logprobs(&short, &cand).unwrap().concat() };
        let (bi, ci) = (lp(&deq), lp(&quant));
        let mean = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| (p - q).abs()).sum::<f32>() / x.len() as f32;
        let (d_w, d_a) = (max_abs_diff(&a, &b), max_abs_diff(&bi, &ci));
        eprintln!(
            "{file}: |Δ log-prob| max/mean: weights {d_w:.2e}/{:.2e}, Q8 activations {d_a:.2e}/{:.2e}; mean |log-prob| {spread:.2}",
            mean(&a, &b),
            mean(&bi, &ci)
        );
        // These random fixtures have sharp logits (mean log-prob ≈ -13), so errors are judged
        // relative to that scale. Q8_0 moves each weight by ≤ 0.56/127 ≈ 0.44% of its block's
        // largest; measured, log-probs move by ~1% on average and ≤ 5% at worst, on either side
        // (weights, or 8-bit activations). A wrong layout or scale moves them by 100%.
        for (what, x, y) in [("dequantized Q8_0 vs f32", &a, &b), ("integer kernels vs dequantized", &bi, &ci)] {
            assert!(mean(x, y) < 0.02 * spread, "{file}: {what}: mean |Δ log-prob| {} ≥ 2% of {spread}", mean(x, y));
            assert!(max_abs_diff(x, y) < 0.08 * spread, "{file}: {what}: max |Δ log-prob| ≥ 8% of {spread}");
        }
        assert!(d_a > 0.0, "{file}: the integer path computed exactly the dequantized numbers; is it used?");
    }
}

// ---------------------------------------------------------------------------------------------
// Bad files

fn load_err(path: &Path) -> String {
    match Engine::load(path.to_str().unwrap(), &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => e.to_string(),
    }
}

/// Rewrites a fixture through candle's GGUF writer with `edit` applied to its metadata.
fn rewrite(src: &Path, dst: &Path, edit: impl FnOnce(&mut Vec<(String, Value)>)) {
    let f = GgufFile::open(src).unwrap();
    let mut meta: Vec<(String, Value)> = f.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    edit(&mut meta);
    let tensors: Vec<(String, QTensor)> =
        f.tensors.keys().map(|n| (n.clone(), f.qtensor(n, &Device::Cpu).unwrap())).collect();
    let mut out = std::fs::File::create(dst).unwrap();
    let m: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut out, &m, &t).unwrap();
}

fn set(meta: &mut [(String, Value)], key: &str, v: Value) {
    meta.iter_mut().find(|(k, _)| k == key).unwrap_or_else(|| panic!("no {key}")).1 = v;
}

#[test]
fn a_rewritten_fixture_still_loads() {
    // The crafted files below differ from this one in one key or byte only.
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("same.gguf");
    rewrite(&fixture("gguf/qwen3-qknorm.q8_0.gguf"), &p, |_| {});
    let a = token_logprobs(&load(&p, false));
    let b = token_logprobs(&load(&fixture("gguf/qwen3-qknorm.q8_0.gguf"), false));
    assert_eq!(a, b);
}

#[test]
fn truncated_file_names_the_tensor_that_runs_past_the_end() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("cut.gguf");
    let bytes = std::fs::read(fixture("gguf/qwen3-qknorm.q8_0.gguf")).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 4000]).unwrap();
    let e = load_err(&p);
    assert!(e.contains("cut.gguf") && e.contains("tensor \"") && e.contains("truncated"), "{e}");
    // Cut inside the header: the metadata key being read is named.
    std::fs::write(&p, &bytes[..200]).unwrap();
    let e = load_err(&p);
    assert!(e.contains("metadata key") && e.contains("truncated"), "{e}");
}

#[test]
fn unknown_tensor_type_names_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("type.gguf");
    let mut bytes = std::fs::read(fixture("gguf/qwen3-qknorm.q8_0.gguf")).unwrap();
    // The tensor entry: name (u64 length + bytes), n_dims u32, dims u64 each, type u32.
    let name = b"blk.1.ffn_up.weight";
    let mut needle = (name.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(name);
    let at = bytes.windows(needle.len()).position(|w| w == needle.as_slice()).unwrap() + needle.len();
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let ty = at + 4 + 8 * n_dims;
    assert_eq!(u32::from_le_bytes(bytes[ty..ty + 4].try_into().unwrap()), 8, "expected Q8_0 there");
    bytes[ty..ty + 4].copy_from_slice(&99u32.to_le_bytes());
    std::fs::write(&p, &bytes).unwrap();
    let e = load_err(&p);
    assert!(e.contains("blk.1.ffn_up.weight") && e.contains("tensor type 99"), "{e}");
}

#[test]
fn unsupported_architecture_names_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("arch.gguf");
    rewrite(&fixture("gguf/qwen3-qknorm.q8_0.gguf"), &p, |m| set(m, "general.architecture", Value::String("gemma2".into())));
    let e = load_err(&p);
    assert!(e.contains("general.architecture") && e.contains("gemma2") && e.contains("qwen3"), "{e}");
}

#[test]
fn unsupported_tokenizer_model_names_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("tok.gguf");
    rewrite(&fixture("gguf/llama-gqa-rope3-tied.q8_0.gguf"), &p, |m| {
        set(m, "tokenizer.ggml.model", Value::String("llama".into()))
    });
    let e = load_err(&p);
    assert!(e.contains("tokenizer.ggml.model") && e.contains("\"llama\""), "{e}");
    rewrite(&fixture("gguf/llama-gqa-rope3-tied.q8_0.gguf"), &p, |m| {
        set(m, "tokenizer.ggml.pre", Value::String("falcon".into()))
    });
    let e = load_err(&p);
    assert!(e.contains("tokenizer.ggml.pre") && e.contains("falcon"), "{e}");
}

#[test]
fn missing_tensor_names_both_names() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("missing.gguf");
    let f = GgufFile::open(&fixture("gguf/qwen2-bias.q8_0.gguf")).unwrap();
    let meta: Vec<(&str, &Value)> = f.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(String, QTensor)> = f
        .tensors
        .keys()
        .filter(|n| *n != "blk.1.attn_v.weight")
        .map(|n| (n.clone(), f.qtensor(n, &Device::Cpu).unwrap()))
        .collect();
    let t: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut std::fs::File::create(&p).unwrap(), &meta, &t).unwrap();
    let e = load_err(&p);
    assert!(e.contains("blk.1.attn_v.weight") && e.contains("model.layers.1.self_attn.v_proj.weight"), "{e}");
}

#[test]
fn q_k_row_permutation_round_trips() {
    let rows = 4 * 8;
    let t: Vec<u8> = (0..rows as u8 * 3).collect();
    let there = gramrr_model::gguf::permute_rows(&t, rows, 4, false);
    assert_ne!(there, t);
    assert_eq!(gramrr_model::gguf::permute_rows(&there, rows, 4, true), t);
    // Matches the converter's reshape(heads, 2, D/2, ·).swapaxes(1, 2) on row indices.
    let idx: Vec<u8> = (0..rows as u8).collect();
    let p = gramrr_model::gguf::permute_rows(&idx, rows, 4, false);
    assert_eq!(&p[..8], &[0, 4, 1, 5, 2, 6, 3, 7]);
    let _ = Tensor::zeros(1, DType::F32, &Device::Cpu);
}

// ---------------------------------------------------------------------------------------------
// Writing

#[test]
fn exported_gguf_reloads_as_the_same_model() {
    use gramrr_model::gguf::{export, ExportType};
    let tmp = tempfile::tempdir().unwrap();
    for model in ["llama-gqa-rope3-tied", "qwen2-bias", "qwen3-qknorm", "llama-untied"] {
        let st = load(&fixture("models").join(model), false);
        let reference = token_logprobs(&st);
        let spread = reference.iter().map(|x| x.abs()).sum::<f32>() / reference.len() as f32;
        for (ty, tol) in [(ExportType::F16, 1e-4f32), (ExportType::Q8_0, 0.08), (ExportType::Q4K, 0.08)] {
            let out = tmp.path().join(format!("{model}.{ty:?}.gguf"));
            let report = export(&st.model, &st.tokenizer, model, &out, ty).unwrap();
            let g = load(&out, false);
            for t in TEXTS {
                assert_eq!(g.tokenizer.encode(t, true).unwrap(), st.tokenizer.encode(t, true).unwrap(), "{model} {ty:?}: {t:?}");
            }
            let got = token_logprobs(&g);
            let d = max_abs_diff(&reference, &got);
            eprintln!("{model} {ty:?}: {:?}, max |Δ log-prob| {d:.2e}", report.types);
            if ty == ExportType::F16 {
                // Exact f16 weights: compare with the f16-rounded model, to float noise.
                let mut rounded = load(&fixture("models").join(model), false);
                rounded
                    .model
                    .map_parameters(&mut |_, t| Ok(if t.rank() == 2 { t.to_dtype(DType::F16)?.to_dtype(DType::F32)? } else { t.clone() }))
                    .unwrap();
                let d = max_abs_diff(&token_logprobs(&rounded), &got);
                assert!(d < tol, "{model} f16 export: {d}");
            } else {
                // Rows of 64/128 values are too short for Q4_K's 256 blocks: those fall back to
                // Q8_0 as llama.cpp's quantizer does, so both land in Q8_0's tolerance (above).
                assert!(d < tol * spread, "{model} {ty:?} export: max |Δ log-prob| {d} ≥ {tol}·{spread}");
            }
            let p = SamplingParams { max_new_tokens: 8, temperature: 0.0, ignore_eos: true, ..Default::default() };
            let prompt = vec![st.tokenizer.encode("Hello world", true).unwrap()];
            if ty == ExportType::F16 {
                assert_eq!(g.generate_ids(&prompt, &[0], &p).unwrap()[0].token_ids.len(), 8);
            }
        }
    }
}
