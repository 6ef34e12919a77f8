//! The GRPO objective against TRL's own `GRPOTrainer._compute_loss` on the same inputs
//! (`tools/make_grpo_fixture.py` runs TRL's code and writes `fixtures/grpo_trl.json`): the loss,
//! its gradient with respect to every token log-prob, the KL and the clip ratios TRL logs, for
//! TRL's "grpo" (our sequence normalisation) and "bnpo" (our token normalisation) losses.

use gramrr_train::policy::{clipped_policy_loss, PolicyLossConfig, PolicyTokens};
use serde_json::Value;

fn rows(v: &Value) -> Vec<Vec<f64>> {
    v.as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()).collect()
}

#[test]
fn matches_trl_grpo_and_bnpo_losses_gradients_and_metrics() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/grpo_trl.json");
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let (logp, old, refp) = (rows(&fx["logp"]), rows(&fx["old"]), rows(&fx["ref"]));
    let adv: Vec<f64> = fx["advantages"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    let lens: Vec<usize> = fx["lengths"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
    let total: usize = lens.iter().sum();
    // The response tokens, flattened in order (TRL's padded positions are masked out).
    let flat = |m: &[Vec<f64>]| -> Vec<f32> { lens.iter().enumerate().flat_map(|(i, &n)| m[i][..n].iter().map(|&x| x as f32)).collect() };
    let (lp, o, r) = (flat(&logp), flat(&old), flat(&refp));
    let a: Vec<f32> = lens.iter().enumerate().flat_map(|(i, &n)| std::iter::repeat_n(adv[i] as f32, n)).collect();
    for case in fx["cases"].as_array().unwrap() {
        let name = format!("{} ε=({}, {}) β={}", case["loss_type"], case["epsilon_low"], case["epsilon_high"], case["beta"]);
        let w: Vec<f32> = match case["loss_type"].as_str().unwrap() {
            "grpo" => lens.iter().flat_map(|&n| std::iter::repeat_n(1.0 / (n * lens.len()) as f32, n)).collect(),
            "bnpo" => vec![1.0 / total as f32; total],
            t => panic!("unexpected loss type {t}"),
        };
        let cfg = PolicyLossConfig {
            epsilon_low: case["epsilon_low"].as_f64().unwrap(),
            epsilon_high: case["epsilon_high"].as_f64().unwrap(),
            beta: case["beta"].as_f64().unwrap(),
        };
        let v = clipped_policy_loss(&lp, &PolicyTokens { old_logp: &o, ref_logp: Some(&r), advantages: &a, weights: &w }, &cfg).unwrap();
        let want = case["loss"].as_f64().unwrap();
        assert!((v.loss - want).abs() < 1e-5 * want.abs().max(1.0), "{name}: loss {} vs TRL {want}", v.loss);
        let g = rows(&case["grad"]);
        let mut k = 0;
        for (i, &n) in lens.iter().enumerate() {
            for j in 0..g[i].len() {
                if j < n {
                    assert!((v.grad[k] - g[i][j]).abs() < 1e-5, "{name}: token ({i}, {j}) gradient {} vs TRL {}", v.grad[k], g[i][j]);
                    k += 1;
                } else {
                    assert_eq!(g[i][j], 0.0, "TRL gives padding no gradient");
                }
            }
        }
        let kl = v.kl_sum.unwrap() / total as f64;
        assert!((kl - case["kl"].as_f64().unwrap()).abs() < 1e-5, "{name}: KL {kl} vs TRL {}", case["kl"]);
        assert!((v.clipped_low as f64 / total as f64 - case["clip_low"].as_f64().unwrap()).abs() < 1e-6, "{name}: low clip ratio");
        assert!((v.clipped_high as f64 / total as f64 - case["clip_high"].as_f64().unwrap()).abs() < 1e-6, "{name}: high clip ratio");
    }
    // The fixture takes every branch: some tokens clipped on each side.
    assert!(fx["cases"].as_array().unwrap().iter().any(|c| c["clip_low"].as_f64().unwrap() > 0.0 && c["clip_high"].as_f64().unwrap() > 0.0));
}
