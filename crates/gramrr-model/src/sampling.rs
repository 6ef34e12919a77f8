//! Next-token selection on the host: greedy, or temperature → top-k → top-p sampling in the
//! order transformers applies its logits warpers. Sampling on the host keeps CUDA away from
//! full-vocabulary sorts (stack.md) and makes a seed mean the same thing on every device.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::backend::SamplingParams;

/// The RNG of one generation item, derived from the run seed and the item's own offset so a
/// sample does not depend on which other items share its batch.
pub fn item_rng(seed: u64, seed_offset: u64) -> ChaCha8Rng {
    // splitmix64 of the pair: nearby seeds and offsets give unrelated streams.
    let mut z = seed ^ seed_offset.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ChaCha8Rng::seed_from_u64(z)
}

/// Index of the largest logit; the first one on ties, like `torch.argmax`.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

pub fn sample_token(logits: &[f32], params: &SamplingParams, rng: &mut ChaCha8Rng) -> u32 {
    if params.temperature <= 0.0 {
        return argmax(logits);
    }
    let t = params.temperature;
    let mut cand: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &x)| (i as u32, x / t)).collect();
    cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if params.top_k > 0 && params.top_k < cand.len() {
        cand.truncate(params.top_k);
    }
    let max = cand[0].1;
    let mut probs: Vec<f32> = cand.iter().map(|(_, x)| (x - max).exp()).collect();
    let total: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if params.top_p < 1.0 {
        // Keep the smallest prefix whose mass reaches top_p (always at least one token).
        let mut cum = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            cum += p;
            if cum >= params.top_p {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        cand.truncate(keep);
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
    }
    let u: f32 = rng.random();
    let mut cum = 0.0;
    for (i, p) in probs.iter().enumerate() {
        cum += p;
        if u < cum {
            return cand[i].0;
        }
    }
    cand[probs.len() - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f32, top_k: usize, top_p: f32) -> SamplingParams {
        SamplingParams { temperature: t, top_k, top_p, ..Default::default() }
    }

    #[test]
    fn greedy_takes_first_maximum() {
        assert_eq!(argmax(&[0.1, 3.0, 3.0, -1.0]), 1);
        let mut rng = item_rng(0, 0);
        assert_eq!(sample_token(&[0.1, 3.0, 3.0], &params(0.0, 0, 1.0), &mut rng), 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_top_p_excludes_the_tail() {
        let logits = [2.0, 1.0, 0.5, -3.0];
        let mut rng = item_rng(7, 3);
        for _ in 0..200 {
            assert_eq!(sample_token(&logits, &params(1.0, 1, 1.0), &mut rng), 0);
            // p(0) ≈ 0.61, p(1) ≈ 0.22: top_p 0.7 keeps exactly {0, 1}.
            let t = sample_token(&logits, &params(1.0, 0, 0.7), &mut rng);
            assert!(t == 0 || t == 1, "{t}");
        }
    }

    #[test]
    fn sampling_follows_the_distribution_and_is_seeded() {
        let logits = [0.0f32, (3.0f32).ln()]; // p = 0.25, 0.75
        let mut rng = item_rng(1, 0);
        let n = 4000;
        let ones = (0..n).filter(|_| sample_token(&logits, &params(1.0, 0, 1.0), &mut rng) == 1).count();
        let frac = ones as f64 / n as f64;
        assert!((frac - 0.75).abs() < 0.03, "{frac}");
        let a: Vec<u32> = { let mut r = item_rng(5, 9); (0..20).map(|_| sample_token(&logits, &params(1.0, 0, 1.0), &mut r)).collect() };
        let b: Vec<u32> = { let mut r = item_rng(5, 9); (0..20).map(|_| sample_token(&logits, &params(1.0, 0, 1.0), &mut r)).collect() };
        let c: Vec<u32> = { let mut r = item_rng(5, 10); (0..20).map(|_| sample_token(&logits, &params(1.0, 0, 1.0), &mut r)).collect() };
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
