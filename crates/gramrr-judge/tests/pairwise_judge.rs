//! Pairwise verdicts against deterministic fake backends.

use std::sync::Arc;

use gramrr_data::prompt::JudgeTemplate;
use gramrr_data::Label;
use gramrr_judge::testing::OracleBackend;
use gramrr_judge::{JudgeConfig, JudgeMode, PairInput, PairwiseJudge, PositionBias};
use gramrr_model::backend::SamplingParams;

fn judge(backend: Arc<OracleBackend>, config: JudgeConfig) -> PairwiseJudge {
    PairwiseJudge::new(backend, JudgeTemplate::gram_rr(), config)
}

fn pair(qa: f64, qb: f64) -> PairInput {
    PairInput::new("What is best?", format!("answer q={qa}"), format!("other answer q={qb}"))
}

fn sampled(votes: usize, both_orders: bool) -> JudgeConfig {
    JudgeConfig {
        votes,
        both_orders,
        sampling: SamplingParams { temperature: 1.0, max_new_tokens: 64, seed: 7, ..Default::default() },
        ..JudgeConfig::default()
    }
}

#[test]
fn reason_mode_keeps_rationales_and_labels_the_better_response() {
    let backend = Arc::new(OracleBackend::default());
    let j = judge(backend.clone(), JudgeConfig::default());
    let v = j.judge_batch(&[pair(0.9, 0.1), pair(0.2, 0.8)]).unwrap();
    assert_eq!(v[0].label, Some(Label::A));
    assert_eq!(v[1].label, Some(Label::B));
    assert_eq!(v[0].consistent, Some(true));
    assert_eq!(v[0].p_a, 1.0);
    assert_eq!(v[0].rationales().len(), 2);
    assert!(v[0].judgments.iter().all(|j| j.failure.is_none() && j.rationale.as_deref().unwrap().contains("<answer>")));
    // One call for both pairs in both orders.
    assert_eq!(backend.calls().len(), 1);
    assert_eq!(backend.calls()[0].batch, 4);
    // Tokens are accounted per verdict.
    assert!(v[0].usage.prompt_tokens > 0 && v[0].usage.completion_tokens > 0);
    assert_eq!(v[0].usage.requests, 2);
}

#[test]
fn a_judge_that_always_picks_the_first_shown_is_inconsistent_and_undecided() {
    let backend = Arc::new(OracleBackend::default().with_first_bias(1.0));
    let v = judge(backend, JudgeConfig::default()).judge(&pair(0.9, 0.1)).unwrap();
    assert_eq!(v.consistent, Some(false));
    assert_eq!(v.label, None);
    assert_eq!(v.p_a, 0.5);
    assert!(v.failure().unwrap().starts_with("tie"));
}

#[test]
fn prob_mode_averages_p_a_over_both_orders() {
    let backend = Arc::new(OracleBackend::default().with_first_bias(0.2));
    let cfg = JudgeConfig { mode: JudgeMode::Prob, ..JudgeConfig::default() };
    let v = judge(backend.clone(), cfg).judge(&pair(0.6, 0.5)).unwrap();
    let s = |x: f64| 1.0 / (1.0 + (-x).exp());
    // Shown (A, B): P(first) = 0.8 σ(4·0.1) + 0.2; shown (B, A): P(first = B) = 0.8 σ(-0.4) + 0.2.
    let p_ab = 0.8 * s(0.4) + 0.2;
    let p_ba = 1.0 - (0.8 * s(-0.4) + 0.2);
    assert!((v.p_a - (p_ab + p_ba) / 2.0).abs() < 1e-6, "{} vs {}", v.p_a, (p_ab + p_ba) / 2.0);
    assert_eq!(v.label, Some(Label::A));
    // Order (B, A) alone reads P(A) = 0.8σ(0.4) ≈ 0.48 < 0.5: the orders disagree.
    assert!(p_ba < 0.5);
    assert_eq!(v.consistent, Some(false));
    assert!(v.judgments.iter().all(|j| j.rationale.is_none()));
    assert_eq!(backend.calls()[0].method, "label_probs");
    let strong = judge(Arc::new(OracleBackend::default()), JudgeConfig { mode: JudgeMode::Prob, ..JudgeConfig::default() })
        .judge(&pair(0.9, 0.1))
        .unwrap();
    assert_eq!(strong.consistent, Some(true));
}

#[test]
fn prob_after_reason_keeps_the_rationale_and_the_probability() {
    let backend = Arc::new(OracleBackend::default());
    let cfg = JudgeConfig { mode: JudgeMode::ProbAfterReason, ..JudgeConfig::default() };
    let v = judge(backend.clone(), cfg).judge(&pair(0.1, 0.7)).unwrap();
    assert_eq!(v.label, Some(Label::B));
    assert!(v.p_a < 0.5);
    assert!(v.judgments.iter().all(|j| j.rationale.is_some() && j.p_a.is_some() && j.label == Some(Label::B)));
    let methods: Vec<_> = backend.calls().iter().map(|c| c.method).collect();
    assert_eq!(methods, vec!["generate", "label_probs"]);
}

#[test]
fn parse_failures_are_reported_not_defaulted() {
    let backend = Arc::new(OracleBackend::default().with_fail_rate(1.0));
    let v = judge(backend, JudgeConfig::default()).judge(&pair(0.9, 0.1)).unwrap();
    assert_eq!(v.label, None);
    assert_eq!(v.votes.failed, 2);
    assert_eq!(v.failure().unwrap(), "all 2 judgments failed to parse (no_answer)");
}

#[test]
fn unanimous_votes_stop_early() {
    // 5 votes in one order: after 3 agreeing votes the other 2 cannot change the majority.
    let backend = Arc::new(OracleBackend::default());
    let v = judge(backend.clone(), sampled(5, false)).judge(&pair(0.9, 0.1)).unwrap();
    assert_eq!(v.judgments.len(), 3);
    assert_eq!(v.votes.a, 3);
    // Both orders, 5 votes each: 6 of 10 settle it.
    let v = judge(backend.clone(), sampled(5, true)).judge(&pair(0.9, 0.1)).unwrap();
    assert_eq!(v.judgments.len(), 6);
    // Without early stopping all 10 run.
    let cfg = JudgeConfig { early_stop: false, ..sampled(5, true) };
    let v = judge(backend, cfg).judge(&pair(0.9, 0.1)).unwrap();
    assert_eq!(v.judgments.len(), 10);
}

#[test]
fn early_stopping_never_changes_the_majority() {
    let backend = Arc::new(OracleBackend::default().with_noise(0.35));
    let pairs: Vec<PairInput> = (0..60).map(|i| pair((i % 7) as f64 / 7.0, (i % 5) as f64 / 5.0 + 0.01)).collect();
    for both in [false, true] {
        let early = judge(backend.clone(), sampled(7, both)).judge_batch(&pairs).unwrap();
        let full = judge(backend.clone(), JudgeConfig { early_stop: false, ..sampled(7, both) }).judge_batch(&pairs).unwrap();
        let mut saved = 0;
        for (e, f) in early.iter().zip(&full) {
            assert_eq!(e.label, f.label);
            // The early-stopped judgments are exactly the first ones of the full run.
            let n = e.judgments.len();
            assert_eq!(e.judgments.iter().map(|j| &j.rationale).collect::<Vec<_>>(), f.judgments[..n].iter().map(|j| &j.rationale).collect::<Vec<_>>());
            saved += f.judgments.len() - n;
        }
        assert!(saved > 0, "some pair should stop early");
    }
}

#[test]
fn voting_runs_in_batched_rounds() {
    let backend = Arc::new(OracleBackend::default().with_noise(0.3));
    let pairs: Vec<PairInput> = (0..20).map(|i| pair(i as f64 / 20.0, 0.5)).collect();
    judge(backend.clone(), sampled(4, true)).judge_batch(&pairs).unwrap();
    let calls = backend.calls();
    // First round: 8 judgments per pair, 4/2+1... total 8 → 5 each, all 20 pairs in one call.
    assert_eq!(calls[0].batch, 20 * 5);
    assert!(calls.len() <= 4, "{calls:?}");
}

#[test]
fn verdicts_do_not_depend_on_batch_composition() {
    let backend = Arc::new(OracleBackend::default().with_noise(0.3).with_fail_rate(0.1));
    let pairs: Vec<PairInput> = (0..12).map(|i| pair((i * 3 % 7) as f64, (i * 5 % 7) as f64)).collect();
    for cfg in [sampled(3, true), sampled(3, false), JudgeConfig { mode: JudgeMode::Prob, ..sampled(1, true) }] {
        let j = judge(backend.clone(), cfg);
        let together = j.judge_batch(&pairs).unwrap();
        let mut reversed: Vec<PairInput> = pairs.clone();
        reversed.reverse();
        let mut apart = j.judge_batch(&reversed).unwrap();
        apart.reverse();
        for ((t, a), p) in together.iter().zip(&apart).zip(&pairs) {
            let one = j.judge(p).unwrap();
            for other in [a, &one] {
                assert_eq!(t.label, other.label);
                assert_eq!(t.p_a, other.p_a);
                assert_eq!(t.rationales(), other.rationales());
                assert_eq!(t.consistent, other.consistent);
            }
        }
    }
}

#[test]
fn one_order_placement_is_seeded_and_balanced() {
    let backend = Arc::new(OracleBackend::default());
    let j = judge(backend, sampled(1, false));
    let pairs: Vec<PairInput> = (0..400).map(|i| pair(i as f64, 0.5)).collect();
    let swapped = pairs.iter().filter(|p| j.placement_swapped(p.key())).count();
    assert!((150..250).contains(&swapped), "{swapped} of 400 swapped");
    let v = j.judge_batch(&pairs[..50]).unwrap();
    for (p, v) in pairs.iter().zip(&v) {
        assert_eq!(v.judgments[0].swapped, j.placement_swapped(p.key()));
        assert_eq!(v.consistent, None);
    }
    let other_seed = judge(Arc::new(OracleBackend::default()), JudgeConfig { sampling: SamplingParams { seed: 8, ..Default::default() }, ..sampled(1, false) });
    assert!(pairs.iter().any(|p| other_seed.placement_swapped(p.key()) != j.placement_swapped(p.key())));
}

#[test]
fn position_bias_is_measured_over_a_set() {
    // Picks the first shown 30% of the time regardless, else the better one: first_rate ≈ 0.3 + 0.7·0.5.
    let backend = Arc::new(OracleBackend::default().with_first_bias(0.3));
    let pairs: Vec<PairInput> = (0..300).map(|i| pair((i * 37 % 101) as f64, (i * 53 % 103) as f64 + 0.5)).collect();
    let v = judge(backend, JudgeConfig::default()).judge_batch(&pairs).unwrap();
    let bias = PositionBias::from_verdicts(&v);
    assert_eq!(bias.judgments, 600);
    assert!((bias.first_rate - 0.65).abs() < 0.06, "{bias:?}");
    assert!((bias.bias - 0.15).abs() < 0.06);
    // In each pair the better response is shown second in exactly one order, where the bias flips it.
    assert!((bias.inconsistent_rate - 0.3).abs() < 0.08, "{bias:?}");
    let unbiased = judge(Arc::new(OracleBackend::default()), JudgeConfig::default()).judge_batch(&pairs).unwrap();
    assert_eq!(PositionBias::from_verdicts(&unbiased).bias, 0.0);
}

#[test]
fn several_votes_sample_even_when_the_config_says_greedy() {
    use gramrr_judge::{JudgeMode, DEFAULT_VOTE_TEMPERATURE};
    let mut c = JudgeConfig::default();
    assert_eq!(c.effective_sampling().temperature, 0.0, "one vote stays greedy");
    c.votes = 5;
    assert_eq!(c.effective_sampling().temperature, DEFAULT_VOTE_TEMPERATURE);
    c.sampling.temperature = 1.2;
    assert_eq!(c.effective_sampling().temperature, 1.2, "an explicit temperature is kept");
    c.sampling.temperature = 0.0;
    c.mode = JudgeMode::Prob;
    assert_eq!(c.effective_sampling().temperature, 0.0, "prob mode does not generate");
}
