//! The per-token clipped policy-ratio objective of GRPO (DeepSeekMath, TRL's `GRPOTrainer`),
//! with a KL penalty to a reference policy, and its backward.
//!
//! For each response token t with log-probability `logp` under the policy being trained,
//! `old` under the policy that sampled it and `ref` under the reference policy:
//!
//! ```text
//! ratio  = exp(logp − old)
//! policy = −min(ratio·A, clip(ratio, 1 − ε_low, 1 + ε_high)·A)
//! kl     = exp(ref − logp) − (ref − logp) − 1          (the k3 estimator, ≥ 0)
//! loss   = Σ_t w_t · (policy_t + β·kl_t)
//! ```
//!
//! `A` is the response's group-normalised advantage and `w_t` the token's share of the
//! optimizer step's normaliser (GRPO: `1 / (|o_i| · responses)`; token-level: `1 / tokens`).
//!
//! The gradient with respect to `logp` is computed here on the host, in f64, in closed form:
//! `∂policy/∂logp = −A·ratio` where the unclipped term is the minimum, 0 where the clipped one
//! is (ratio beyond the clip range on the side the advantage pushes it), and
//! `∂kl/∂logp = 1 − exp(ref − logp)`. The decoder's backward then starts from the logits with
//! [`weighted_nll_sum`] weighted by minus these values, the same fused op supervised training
//! uses: `Σ_t (−g_t)·nll_t` has the gradient `Σ_t g_t ∇logp_t`.

use candle_core::{Device, Tensor};
use gramrr_model::engine::log_sum_exp;
use gramrr_model::model::{Decoder, ForwardCtx, ForwardInput};
use rayon::prelude::*;

use crate::error::{Result, TrainError};
use crate::loss::{head_logits, weighted_nll_sum, MicroBatch};

/// The knobs of the objective. Defaults are DeepSeekMath's (ε = 0.2, β = 0.04).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PolicyLossConfig {
    /// Lower clip: the ratio is clipped at `1 − epsilon_low`.
    pub epsilon_low: f64,
    /// Upper clip: `1 + epsilon_high` (DAPO's clip-higher sets it above `epsilon_low`).
    pub epsilon_high: f64,
    /// Weight of the k3 KL penalty to the reference policy; 0 turns it off.
    pub beta: f64,
}

impl Default for PolicyLossConfig {
    fn default() -> Self {
        Self { epsilon_low: 0.2, epsilon_high: 0.2, beta: 0.04 }
    }
}

/// Per-token inputs of the objective, all in the order of the micro-batch's target rows.
#[derive(Debug, Clone, Copy)]
pub struct PolicyTokens<'a> {
    /// Log-probabilities under the sampling policy.
    pub old_logp: &'a [f32],
    /// Log-probabilities under the reference policy; `None` when β = 0 and nobody asked for the KL.
    pub ref_logp: Option<&'a [f32]>,
    /// The advantage of each token's response.
    pub advantages: &'a [f32],
    /// Each token's weight in the step's loss.
    pub weights: &'a [f32],
}

/// The value of the objective over some tokens, its gradient with respect to their
/// log-probabilities, and what a run logs about them.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyLossValue {
    /// Σ w·(policy + β·kl).
    pub loss: f64,
    /// Σ w·policy.
    pub policy_loss: f64,
    /// Σ over tokens of the k3 KL (unweighted); `None` without reference log-probs.
    pub kl_sum: Option<f64>,
    /// Tokens whose ratio was clipped (the clipped term was the minimum and outside the range):
    /// low (ratio < 1 − ε_low with A < 0) and high (ratio > 1 + ε_high with A > 0), as TRL counts.
    pub clipped_low: usize,
    pub clipped_high: usize,
    pub tokens: usize,
    /// ∂loss/∂logp per token.
    pub grad: Vec<f64>,
}

/// The objective on the host, in f64: the reference every other path is checked against.
pub fn clipped_policy_loss(logp: &[f32], t: &PolicyTokens, cfg: &PolicyLossConfig) -> Result<PolicyLossValue> {
    let n = logp.len();
    let lens = [t.old_logp.len(), t.advantages.len(), t.weights.len(), t.ref_logp.map_or(n, |r| r.len())];
    if lens.iter().any(|&l| l != n) {
        return Err(TrainError::Config(format!(
            "policy loss: {n} log-probs but {} old log-probs, {} advantages, {} weights and {} reference log-probs",
            lens[0], lens[1], lens[2], lens[3]
        )));
    }
    let mut v = PolicyLossValue {
        loss: 0.0,
        policy_loss: 0.0,
        kl_sum: t.ref_logp.map(|_| 0.0),
        clipped_low: 0,
        clipped_high: 0,
        tokens: n,
        grad: Vec::with_capacity(n),
    };
    let (lo, hi) = (1.0 - cfg.epsilon_low, 1.0 + cfg.epsilon_high);
    for i in 0..n {
        let (lp, a, w) = (logp[i] as f64, t.advantages[i] as f64, t.weights[i] as f64);
        let ratio = (lp - t.old_logp[i] as f64).exp();
        let unclipped = ratio * a;
        let clipped = ratio.clamp(lo, hi) * a;
        let low = ratio < lo && a < 0.0;
        let high = ratio > hi && a > 0.0;
        v.clipped_low += low as usize;
        v.clipped_high += high as usize;
        // min(unclipped, clipped) is the clipped term exactly when the ratio sits beyond the
        // range on the side the advantage rewards; there it is a constant in logp.
        let policy = -unclipped.min(clipped);
        let mut g = if low || high { 0.0 } else { -a * ratio };
        let mut term = policy;
        if let Some(r) = t.ref_logp {
            let d = r[i] as f64 - lp;
            let kl = d.exp() - d - 1.0;
            *v.kl_sum.as_mut().expect("set with ref") += kl;
            term += cfg.beta * kl;
            g += cfg.beta * (1.0 - d.exp());
        }
        v.policy_loss += w * policy;
        v.loss += w * term;
        v.grad.push(w * g);
    }
    Ok(v)
}

/// One micro-batch's part of the step's objective.
pub struct PolicyMicroLoss {
    /// Backpropagates the objective's gradient; its value is the objective.
    pub total: Tensor,
    pub value: PolicyLossValue,
    /// The current policy's log-probability of every target token (the "old" log-probs of the
    /// first pass over a batch).
    pub logp: Vec<f32>,
}

/// `log softmax(z_i)[t_i]` for each row of logits (N, V), on the host.
pub fn logits_target_logprobs(logits: &Tensor, targets: &[u32]) -> Result<Vec<f32>> {
    let (n, v) = logits.dims2()?;
    if n != targets.len() {
        return Err(TrainError::Config(format!("{n} logit rows for {} targets", targets.len())));
    }
    let flat = logits.flatten_all()?.to_vec1::<f32>()?;
    Ok(flat.par_chunks(v).zip(targets.par_iter()).map(|(row, &t)| row[t as usize] - log_sum_exp(row)).collect())
}

/// Forward pass of the micro-batch's sequences and the objective over its target tokens
/// (`mb.rows`, whose weights are ignored: `tokens.weights` decides). With `old_logp = None`
/// the current log-probs stand in for them (ratio 1: the first pass over freshly sampled
/// responses, as TRL does when `num_iterations = 1`).
pub fn policy_micro_batch_loss(
    decoder: &Decoder,
    mb: &MicroBatch,
    ctx: &mut ForwardCtx,
    frozen_head: bool,
    old_logp: Option<&[f32]>,
    ref_logp: Option<&[f32]>,
    advantages: &[f32],
    weights: &[f32],
    cfg: &PolicyLossConfig,
    dev: &Device,
) -> Result<PolicyMicroLoss> {
    let input = ForwardInput { ids: &mb.ids, positions: &mb.positions, mask: None, doc_starts: mb.doc_starts.as_deref(), left_padding: None };
    let hidden = decoder.forward_hidden(&input, None, ctx)?; // (B·T, C)
    let rows = Tensor::from_slice(&mb.rows, mb.rows.len(), dev)?;
    let logits = head_logits(decoder, &hidden.index_select(&rows, 0)?, frozen_head, ctx)?; // (N, V)
    let logp = logits_target_logprobs(&logits, &mb.targets)?;
    let old = old_logp.unwrap_or(&logp);
    let value = clipped_policy_loss(&logp, &PolicyTokens { old_logp: old, ref_logp, advantages, weights }, cfg)?;
    let targets = Tensor::from_slice(&mb.targets, mb.targets.len(), dev)?;
    let neg: Vec<f32> = value.grad.iter().map(|&g| -g as f32).collect();
    let surrogate = weighted_nll_sum(&logits, &targets, &Tensor::from_vec(neg, mb.targets.len(), dev)?)?;
    // Gradient of the surrogate, value of the objective.
    let total = ((&surrogate - surrogate.detach())? + value.loss)?;
    Ok(PolicyMicroLoss { total, value, logp })
}

/// Log-probabilities of the micro-batch's target tokens without a graph (the reference policy).
pub fn target_logprobs(decoder: &Decoder, mb: &MicroBatch, dev: &Device) -> Result<Vec<f32>> {
    let input = ForwardInput { ids: &mb.ids, positions: &mb.positions, mask: None, doc_starts: mb.doc_starts.as_deref(), left_padding: None };
    let mut ctx = ForwardCtx::inference();
    let hidden = decoder.forward_hidden(&input, None, &mut ctx)?;
    let rows = Tensor::from_slice(&mb.rows, mb.rows.len(), dev)?;
    let logits = decoder.logits(&hidden.index_select(&rows, 0)?)?;
    logits_target_logprobs(&logits, &mb.targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_by_hand() {
        // One token per case; w = 1, β = 0.1, ε = 0.2.
        let cfg = PolicyLossConfig { epsilon_low: 0.2, epsilon_high: 0.2, beta: 0.1 };
        let ln = |x: f64| x.ln() as f32;
        // ratio 1.5, A = +1: clipped high, policy = −1.2, gradient only from the KL.
        // ratio 0.5, A = −1: clipped low, policy = +0.8.
        // ratio 1.1, A = +2: inside, policy = −2.2, gradient −2.2.
        // ratio 0.5, A = +1: below the range but A > 0, so the unclipped 0.5 is the minimum.
        let logp = [ln(1.5), ln(0.5), ln(1.1), ln(0.5)];
        let old = [0f32; 4];
        let refp = [0f32; 4];
        let t = PolicyTokens { old_logp: &old, ref_logp: Some(&refp), advantages: &[1.0, -1.0, 2.0, 1.0], weights: &[1.0; 4] };
        let v = clipped_policy_loss(&logp, &t, &cfg).unwrap();
        let kl = |r: f64| (1.0 / r) - (-r.ln()) - 1.0; // d = ref − logp = −ln r
        let dkl = |r: f64| 1.0 - 1.0 / r;
        let want_policy = [-1.2, 0.8, -2.2, -0.5];
        let want_grad = [0.1 * dkl(1.5), 0.1 * dkl(0.5), -2.2 + 0.1 * dkl(1.1), -0.5 + 0.1 * dkl(0.5)];
        let ratios = [1.5, 0.5, 1.1, 0.5];
        let want_loss: f64 = (0..4).map(|i| want_policy[i] + 0.1 * kl(ratios[i])).sum();
        assert!((v.loss - want_loss).abs() < 1e-6, "{} vs {want_loss}", v.loss);
        for i in 0..4 {
            assert!((v.grad[i] - want_grad[i]).abs() < 1e-6, "token {i}: {} vs {}", v.grad[i], want_grad[i]);
        }
        assert_eq!((v.clipped_low, v.clipped_high), (1, 1));
        assert!((v.kl_sum.unwrap() - ratios.iter().map(|&r| kl(r)).sum::<f64>()).abs() < 1e-6);
    }

    #[test]
    fn gradient_matches_finite_differences_of_the_value() {
        let cfg = PolicyLossConfig { epsilon_low: 0.2, epsilon_high: 0.28, beta: 0.04 };
        let logp: Vec<f32> = vec![-1.0, -2.5, -0.3, -4.0, -0.9, -1.7];
        let old: Vec<f32> = vec![-1.1, -2.0, -0.31, -4.5, -0.5, -1.7];
        let refp: Vec<f32> = vec![-1.3, -2.2, -0.2, -3.0, -1.0, -1.0];
        let adv = [0.7f32, -1.2, 0.3, 1.5, -0.4, 0.0];
        let w = [0.25f32, 0.25, 0.125, 0.125, 0.5, 1.0];
        let t = PolicyTokens { old_logp: &old, ref_logp: Some(&refp), advantages: &adv, weights: &w };
        let v = clipped_policy_loss(&logp, &t, &cfg).unwrap();
        for i in 0..logp.len() {
            let h = 1e-3f32;
            let mut p = logp.clone();
            p[i] += h;
            let up = clipped_policy_loss(&p, &t, &cfg).unwrap().loss;
            p[i] -= 2.0 * h;
            let down = clipped_policy_loss(&p, &t, &cfg).unwrap().loss;
            let fd = (up - down) / (2.0 * h as f64);
            assert!((fd - v.grad[i]).abs() < 2e-3, "token {i}: finite difference {fd}, analytic {}", v.grad[i]);
        }
    }

    #[test]
    fn mismatched_lengths_are_named() {
        let t = PolicyTokens { old_logp: &[0.0], ref_logp: None, advantages: &[1.0, 2.0], weights: &[1.0] };
        let e = clipped_policy_loss(&[0.0], &t, &PolicyLossConfig::default()).unwrap_err().to_string();
        assert!(e.contains("2 advantages"), "{e}");
    }
}
