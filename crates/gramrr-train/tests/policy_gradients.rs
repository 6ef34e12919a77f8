//! The GRPO objective through a tiny decoder: its closed-form gradient (pushed into the model
//! through the fused NLL op) against (1) candle's autograd of the same formula written with
//! plain tensor ops and (2) central finite differences of its value, for full fine-tuning and
//! LoRA, with tokens inside and outside the clip range.

use candle_core::{Device, Tensor, Var, D};
use gramrr_model::model::{Decoder, ForwardCtx, ForwardInput};
use gramrr_model::DecoderConfig;
use gramrr_train::loss::{build_micro_batch, MicroBatch};
use gramrr_train::policy::{policy_micro_batch_loss, target_logprobs, PolicyLossConfig};
use gramrr_train::{lora, trainable_parameters, LoraConfig, LoraTarget, SftExample};

fn tiny() -> Decoder {
    let v = serde_json::json!({"architectures": ["Qwen3ForCausalLM"], "vocab_size": 61, "hidden_size": 32,
        "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 8, "tie_word_embeddings": true, "rope_theta": 10000.0});
    let cfg = DecoderConfig::from_json(&v, std::path::Path::new("<test>")).unwrap();
    let w = gramrr_model::init::random_weights(&cfg, 0.2, 5).unwrap();
    Decoder::load(&cfg, &w).unwrap()
}

fn batch() -> MicroBatch {
    let a = SftExample::new(vec![1, 5, 9, 13], vec![20, 21, 22, 60]);
    let b = SftExample::new(vec![3, 4], vec![40, 41, 42, 43, 44, 45, 46]);
    build_micro_batch(&[&a, &b], 0)
}

struct Inputs {
    old: Vec<f32>,
    refp: Vec<f32>,
    adv: Vec<f32>,
    w: Vec<f32>,
}

const CFG: PolicyLossConfig = PolicyLossConfig { epsilon_low: 0.2, epsilon_high: 0.25, beta: 0.3 };

/// Old log-probs offset from the current ones by ±0.05 (inside the clip range) or ±0.6
/// (outside), with advantages of both signs, so every branch of the objective is taken, far
/// enough from its kinks for finite differences.
fn inputs(decoder: &Decoder, mb: &MicroBatch) -> Inputs {
    let logp = target_logprobs(decoder, mb, &Device::Cpu).unwrap();
    let n = logp.len();
    let shifts = [0.05f32, -0.6, 0.6, -0.05, 0.6, -0.6];
    let advs = [1.0f32, 1.0, -0.7, -0.7, 0.4, -1.3];
    let old = (0..n).map(|i| logp[i] - shifts[i % shifts.len()]).collect();
    let refp = (0..n).map(|i| logp[i] + 0.3 * ((i as f32) * 1.7).sin()).collect();
    let adv: Vec<f32> = (0..n).map(|i| advs[(i / 2) % advs.len()]).collect();
    // GRPO's sequence normalisation: 1 / (|o_i| · 2) for the 4- and 7-token responses.
    let w = (0..n).map(|i| if i < 4 { 1.0 / 8.0 } else { 1.0 / 14.0 }).collect();
    Inputs { old, refp, adv, w }
}

fn objective(decoder: &Decoder, mb: &MicroBatch, x: &Inputs, frozen: bool) -> (Tensor, f64, usize) {
    let mut ctx = ForwardCtx::training(None);
    let l = policy_micro_batch_loss(decoder, mb, &mut ctx, frozen, Some(&x.old), Some(&x.refp), &x.adv, &x.w, &CFG, &Device::Cpu).unwrap();
    let clipped = l.value.clipped_low + l.value.clipped_high;
    (l.total, l.value.loss, clipped)
}

/// The same objective written with candle ops, differentiated by candle.
fn composed(decoder: &Decoder, mb: &MicroBatch, x: &Inputs) -> Tensor {
    let dev = Device::Cpu;
    let input = ForwardInput { ids: &mb.ids, positions: &mb.positions, mask: None, doc_starts: None, left_padding: None };
    let hidden = decoder.forward_hidden(&input, None, &mut ForwardCtx::training(None)).unwrap();
    let rows = Tensor::from_slice(&mb.rows, mb.rows.len(), &dev).unwrap();
    let logits = decoder.logits(&hidden.index_select(&rows, 0).unwrap()).unwrap();
    let max = logits.max_keepdim(D::Minus1).unwrap().detach();
    let shifted = logits.broadcast_sub(&max).unwrap();
    let lse = shifted.exp().unwrap().sum_keepdim(D::Minus1).unwrap().log().unwrap();
    let targets = Tensor::from_slice(&mb.targets, mb.targets.len(), &dev).unwrap().unsqueeze(1).unwrap();
    let logp = (shifted.gather(&targets, 1).unwrap() - lse).unwrap().squeeze(1).unwrap();
    let t = |v: &[f32]| Tensor::from_slice(v, v.len(), &dev).unwrap();
    let (old, refp, adv, w) = (t(&x.old), t(&x.refp), t(&x.adv), t(&x.w));
    let ratio = (&logp - old).unwrap().exp().unwrap();
    let unclipped = (&ratio * &adv).unwrap();
    let clipped = (ratio.clamp(1.0 - CFG.epsilon_low as f32, 1.0 + CFG.epsilon_high as f32).unwrap() * &adv).unwrap();
    let policy = unclipped.minimum(&clipped).unwrap().neg().unwrap();
    let d = (refp - &logp).unwrap();
    let kl = ((d.exp().unwrap() - &d).unwrap() - 1.0).unwrap();
    ((policy + (kl * CFG.beta).unwrap()).unwrap() * w).unwrap().sum_all().unwrap()
}

fn check(decoder: &Decoder, vars: &[(String, Var)], frozen: bool) {
    let mb = batch();
    let x = inputs(decoder, &mb);
    let (total, value, clipped) = objective(decoder, &mb, &x, frozen);
    assert!(clipped >= 2, "only {clipped} tokens clipped: the test should take the clipped branches");
    let reference = composed(decoder, &mb, &x);
    let rv = reference.to_scalar::<f32>().unwrap() as f64;
    assert!((value - rv).abs() < 1e-5 * rv.abs().max(1.0), "objective {value} vs composed {rv}");
    assert!((total.to_scalar::<f32>().unwrap() as f64 - value).abs() < 1e-5 * value.abs().max(1.0));
    let gs = total.backward().unwrap();
    let gr = reference.backward().unwrap();
    let h = 1e-2f64;
    for (n, v) in vars {
        let g = gs.get(v.as_tensor()).unwrap_or_else(|| panic!("{n}: no gradient"));
        let g_ref = gr.get(v.as_tensor()).unwrap();
        let diff = (g - g_ref).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        let scale = g_ref.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(scale > 0.0 && diff <= 1e-4 * scale + 1e-7, "{n}: |closed form − autograd| = {diff}, max |g| = {scale}");
        // Central difference of the value along a random unit direction.
        let dir = Tensor::randn(0f32, 1.0, g.shape(), &Device::Cpu).unwrap();
        let dir = (&dir / dir.sqr().unwrap().sum_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap() as f64).unwrap();
        let analytic = (g * &dir).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
        let orig = v.as_tensor().copy().unwrap();
        v.set(&(&orig + (&dir * h).unwrap()).unwrap()).unwrap();
        let up = objective(decoder, &mb, &x, frozen).1;
        v.set(&(&orig - (&dir * h).unwrap()).unwrap()).unwrap();
        let down = objective(decoder, &mb, &x, frozen).1;
        v.set(&orig).unwrap();
        let numeric = (up - down) / (2.0 * h);
        assert!((numeric - analytic).abs() <= 2e-2 * analytic.abs().max(1e-2) + 2e-4, "{n}: finite difference {numeric:.6} vs gradient {analytic:.6}");
    }
}

#[test]
fn policy_gradient_matches_autograd_and_finite_differences_full() {
    let mut d = tiny();
    let vars = trainable_parameters(&mut d, None, 0).unwrap();
    check(&d, &vars, false);
}

#[test]
fn policy_gradient_matches_autograd_and_finite_differences_lora() {
    let mut d = tiny();
    let cfg = LoraConfig { rank: 3, alpha: 6.0, dropout: 0.0, targets: LoraTarget::ALL.to_vec() };
    let vars = trainable_parameters(&mut d, Some(&cfg), 1).unwrap();
    // PEFT starts B at zero, which leaves A without gradient: draw B.
    for (n, v) in &vars {
        if n.contains("lora_B") {
            v.set(&Tensor::randn(0f32, 0.1, v.shape(), &Device::Cpu).unwrap()).unwrap();
        }
    }
    assert!(lora::has_lora(&d));
    check(&d, &vars, true);
}
