//! Guards against silently cut gradients (stack.md): on tiny random models, every trainable
//! parameter gets a non-zero gradient (full fine-tuning, and LoRA on all seven projections with
//! no gradient kept for frozen weights), and the gradients agree with finite differences.

use candle_core::{Device, Tensor, Var};
use gramrr_model::model::{Decoder, ForwardCtx};
use gramrr_model::DecoderConfig;
use gramrr_train::loss::{build_micro_batch, build_padding_free_micro_batch, micro_batch_loss, LabelLoss, MicroBatch};
use gramrr_train::{lora, LoraConfig, SftExample};

fn tiny(arch: &str) -> Decoder {
    let v = match arch {
        // Qwen3: q/k norms, tied embeddings.
        "qwen3" => serde_json::json!({"architectures": ["Qwen3ForCausalLM"], "vocab_size": 61, "hidden_size": 32,
            "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 8, "tie_word_embeddings": true, "rope_theta": 10000.0}),
        // Llama with every bias and an untied lm_head.
        _ => serde_json::json!({"architectures": ["LlamaForCausalLM"], "vocab_size": 61, "hidden_size": 32,
            "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "tie_word_embeddings": false, "attention_bias": true, "mlp_bias": true}),
    };
    let cfg = DecoderConfig::from_json(&v, std::path::Path::new("<test>")).unwrap();
    let mut w = gramrr_model::init::random_weights(&cfg, 0.2, 5).unwrap();
    // Norm weights and biases start at 1 and 0; move them so every term is generic.
    for (i, (_, t)) in w.0.iter_mut().enumerate() {
        if t.rank() == 1 {
            let noise = Tensor::randn(0f32, 0.2, t.shape(), &Device::Cpu).unwrap();
            *t = (&*t + noise).unwrap();
            let _ = i;
        }
    }
    Decoder::load(&cfg, &w).unwrap()
}

fn batch() -> MicroBatch {
    let mut a = SftExample::new(vec![1, 5, 9, 13], vec![20, 21, 22, 60]);
    a.completion_weights = vec![1.0, 2.0, 0.5, 1.0];
    a.label = Some(1);
    let mut b = SftExample::new(vec![3, 4], vec![40, 41, 42, 43, 44, 45, 46]);
    b.label = Some(0);
    build_micro_batch(&[&a, &b], 0)
}

fn labels() -> LabelLoss {
    LabelLoss { label_ids: vec![7, 8, 9], smoothing: 0.1, weight: 0.5 }
}

fn loss(decoder: &Decoder, mb: &MicroBatch, frozen: bool) -> Tensor {
    let ll = labels();
    micro_batch_loss(decoder, mb, &mut ForwardCtx::training(None), frozen, 12.0, Some((&ll, 2.0)), &Device::Cpu)
        .unwrap()
        .total
}

fn full_vars(decoder: &mut Decoder) -> Vec<(String, Var)> {
    let mut vars = vec![];
    decoder
        .map_parameters(&mut |n, t| {
            let v = Var::from_tensor(t)?;
            vars.push((n.to_string(), v.clone()));
            Ok(v.as_tensor().clone())
        })
        .unwrap();
    vars
}

fn lora_vars(decoder: &mut Decoder) -> Vec<(String, Var)> {
    let cfg = LoraConfig { rank: 3, alpha: 6.0, dropout: 0.0, targets: gramrr_train::LoraTarget::ALL.to_vec() };
    lora::attach_lora(decoder, &cfg, 1).unwrap();
    let mut vars = vec![];
    lora::map_lora(decoder, &mut |n, t| {
        // B starts at zero in PEFT, which would leave A without gradient: draw it.
        let t = if n.contains("lora_B") { Tensor::randn(0f32, 0.1, t.shape(), t.device())? } else { t.clone() };
        let v = Var::from_tensor(&t)?;
        vars.push((n.to_string(), v.clone()));
        Ok(v.as_tensor().clone())
    })
    .unwrap();
    for l in decoder.layers.iter_mut() {
        for (_, lin) in l.linears_mut() {
            lin.frozen = true;
        }
    }
    vars
}

fn assert_all_nonzero(decoder: &Decoder, vars: &[(String, Var)], frozen: bool) {
    let mb = batch();
    let gs = loss(decoder, &mb, frozen).backward().unwrap();
    for (n, v) in vars {
        let g = gs.get(v.as_tensor()).unwrap_or_else(|| panic!("{n}: no gradient"));
        let m = g.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(m > 0.0 && m.is_finite(), "{n}: gradient max |g| = {m}");
    }
    if frozen {
        // The frozen path keeps no weight gradient at all.
        for (n, t) in decoder.named_parameters() {
            assert!(gs.get(&t).is_none(), "{n}: frozen weight has a gradient");
        }
    }
}

#[test]
fn every_parameter_gets_a_gradient_in_full_finetuning() {
    for arch in ["qwen3", "llama"] {
        let mut d = tiny(arch);
        let vars = full_vars(&mut d);
        let expected = d.named_parameters().len();
        assert_eq!(vars.len(), expected);
        assert_all_nonzero(&d, &vars, false);
    }
}

#[test]
fn every_lora_matrix_gets_a_gradient_and_frozen_weights_none() {
    for arch in ["qwen3", "llama"] {
        let mut d = tiny(arch);
        let vars = lora_vars(&mut d);
        assert_eq!(vars.len(), 2 * 7 * d.layers.len());
        assert_all_nonzero(&d, &vars, true);
    }
}

/// Central differences along a random direction per parameter tensor, against ⟨g, d⟩.
fn finite_difference_check(decoder: &Decoder, vars: &[(String, Var)], frozen: bool) {
    let mb = batch();
    let gs = loss(decoder, &mb, frozen).backward().unwrap();
    let h = 1e-2f64;
    for (n, v) in vars {
        let g = gs.get(v.as_tensor()).unwrap();
        let dir = Tensor::randn(0f32, 1.0, g.shape(), &Device::Cpu).unwrap();
        let dir = (&dir / dir.sqr().unwrap().sum_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap() as f64).unwrap();
        let analytic = (g * &dir).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
        let orig = v.as_tensor().copy().unwrap();
        v.set(&(&orig + (&dir * h).unwrap()).unwrap()).unwrap();
        let lp = loss(decoder, &mb, frozen).to_scalar::<f32>().unwrap() as f64;
        v.set(&(&orig - (&dir * h).unwrap()).unwrap()).unwrap();
        let lm = loss(decoder, &mb, frozen).to_scalar::<f32>().unwrap() as f64;
        v.set(&orig).unwrap();
        let numeric = (lp - lm) / (2.0 * h);
        let err = (numeric - analytic).abs();
        assert!(err <= 2e-2 * analytic.abs().max(1e-2) + 2e-4, "{n}: finite difference {numeric:.6} vs gradient {analytic:.6}");
    }
}

#[test]
fn gradients_match_finite_differences_full() {
    for arch in ["qwen3", "llama"] {
        let mut d = tiny(arch);
        let vars = full_vars(&mut d);
        finite_difference_check(&d, &vars, false);
    }
}

#[test]
fn gradients_match_finite_differences_lora() {
    let mut d = tiny("qwen3");
    let vars = lora_vars(&mut d);
    finite_difference_check(&d, &vars, true);
}

/// A padding-free micro-batch computes the padded batch's loss and gradients (up to float
/// summation order), on the fused attention and on candle's composed path with a block mask,
/// with fewer rows.
#[test]
fn padding_free_batches_give_the_padded_loss_and_gradients() {
    let ex = |n_prompt: usize, n_completion: usize, seed: u32| {
        let mut e = SftExample::new(
            (0..n_prompt as u32).map(|i| (i * 7 + seed) % 60 + 1).collect(),
            (0..n_completion as u32).map(|i| (i * 11 + seed * 3) % 60 + 1).collect(),
        );
        e.completion_weights = (0..n_completion).map(|i| 1.0 + (i % 3) as f32).collect();
        e.label = Some((seed % 3) as usize);
        e
    };
    // Lengths 14, 5, 6, 9, 4, 12: the short ones share rows.
    let exs = [ex(4, 10, 1), ex(2, 3, 2), ex(3, 3, 3), ex(5, 4, 4), ex(1, 3, 5), ex(6, 6, 6)];
    let refs: Vec<&SftExample> = exs.iter().collect();
    let padded = build_micro_batch(&refs, 0);
    let packed = build_padding_free_micro_batch(&refs, 0);
    assert_eq!(padded.ids.len(), 6);
    // First fit into rows of 14: [14], [5, 6], [9, 4], [12].
    assert_eq!(packed.ids.len(), 4, "the short examples share rows");
    assert_eq!(packed.t, 14);
    assert_eq!((packed.tokens, packed.rows.len(), packed.label_rows.len()), (padded.tokens, padded.rows.len(), padded.label_rows.len()));
    for arch in ["qwen3", "llama"] {
        for fused in [true, false] {
            let mut d = tiny(arch);
            let vars = full_vars(&mut d);
            let run = |mb: &MicroBatch| {
                let go = || {
                    let l = loss(&d, mb, false);
                    let gs = l.backward().unwrap();
                    let grads: Vec<Tensor> = vars.iter().map(|(_, v)| gs.get(v.as_tensor()).unwrap().clone()).collect();
                    (l.to_scalar::<f32>().unwrap(), grads)
                };
                if fused { go() } else { gramrr_model::blas::without_blas(go) }
            };
            let (la, ga) = run(&padded);
            let (lb, gb) = run(&packed);
            assert!((la - lb).abs() <= 1e-5 * la.abs(), "{arch} fused={fused}: loss {la} vs {lb}");
            for ((n, _), (a, b)) in vars.iter().zip(ga.iter().zip(&gb)) {
                let scale = a.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(diff <= 1e-4 * scale.max(1e-3), "{arch} fused={fused} {n}: gradients differ by {diff} (max {scale})");
            }
        }
    }
}
