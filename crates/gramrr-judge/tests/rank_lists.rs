//! Rankings with a judge that follows a hidden total order.

use std::sync::Arc;

use gramrr_data::prompt::JudgeTemplate;
use gramrr_judge::reward::{normalize_group, GroupNorm};
use gramrr_judge::testing::OracleBackend;
use gramrr_judge::{JudgeConfig, JudgeMode, ListRanker, PairwiseJudge, RankInput, StrategyKind};

fn list(id: usize, n: usize) -> (RankInput, Vec<usize>) {
    // Quality is a permutation of 0..n, so the true order is known.
    let q: Vec<usize> = (0..n).map(|i| (i * 11 + id) % n).collect(); // 11 is coprime to every n used here
    let responses = q.iter().map(|q| format!("candidate with q={q}")).collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(q[i]));
    (RankInput { id: format!("list-{id}"), user_input: "Pick one".into(), responses }, order)
}

fn ranker(backend: Arc<OracleBackend>, strategy: StrategyKind, mode: JudgeMode) -> ListRanker {
    let judge = PairwiseJudge::new(backend, JudgeTemplate::gram_rr(), JudgeConfig { mode, ..JudgeConfig::default() });
    ListRanker::new(judge, strategy)
}

#[test]
fn every_strategy_finds_the_true_best_through_the_judge() {
    let lists: Vec<(RankInput, Vec<usize>)> = [1, 2, 3, 6, 7, 9].iter().enumerate().map(|(i, &n)| list(i, n)).collect();
    let inputs: Vec<RankInput> = lists.iter().map(|l| l.0.clone()).collect();
    for strategy in [StrategyKind::Linear, StrategyKind::Knockout, StrategyKind::Sort, StrategyKind::Selection, StrategyKind::RoundRobin { opponents: None }] {
        for mode in [JudgeMode::Reason, JudgeMode::Prob] {
            let out = ranker(Arc::new(OracleBackend::default()), strategy, mode).rank_batch(&inputs).unwrap();
            for ((input, order), o) in lists.iter().zip(&out) {
                assert_eq!(o.ranking.best, order[0], "{strategy:?} {mode:?} {}", input.id);
                if matches!(strategy, StrategyKind::Sort | StrategyKind::Selection | StrategyKind::RoundRobin { .. }) {
                    assert_eq!(&o.ranking.ranking, order, "{strategy:?} {mode:?}");
                }
            }
        }
    }
}

#[test]
fn knockout_rounds_are_batched_across_lists() {
    let backend = Arc::new(OracleBackend::default());
    let inputs: Vec<RankInput> = (0..4).map(|i| list(i, 7).0).collect();
    let out = ranker(backend.clone(), StrategyKind::Knockout, JudgeMode::Reason).rank_batch(&inputs).unwrap();
    // 7 candidates: rounds of 3, 2, 1 matches; 4 lists, 2 orders each.
    let sizes: Vec<usize> = backend.calls().iter().map(|c| c.batch).collect();
    assert_eq!(sizes, vec![4 * 3 * 2, 4 * 2 * 2, 4 * 2]);
    for o in &out {
        assert_eq!(o.ranking.comparisons, 6);
        assert_eq!(o.ranking.rounds, 3);
        assert_eq!(o.usage.requests, 12);
    }
}

#[test]
fn round_robin_rewards_normalise_within_the_group() {
    let (input, order) = list(0, 5);
    let out = ranker(Arc::new(OracleBackend::default()), StrategyKind::RoundRobin { opponents: None }, JudgeMode::Prob).rank(&input).unwrap();
    assert_eq!(out.ranking.comparisons, 10);
    let z = normalize_group(&out.ranking.win_rate, GroupNorm::Zscore);
    assert!(z.iter().sum::<f64>().abs() < 1e-9);
    assert!(z[order[0]] > z[order[4]]);
    // Win rates follow the hidden order.
    for w in order.windows(2) {
        assert!(out.ranking.win_rate[w[0]] > out.ranking.win_rate[w[1]]);
    }
}

#[test]
fn empty_lists_are_an_error_naming_the_list() {
    let empty = RankInput { id: "e".into(), user_input: "q".into(), responses: vec![] };
    let e = ranker(Arc::new(OracleBackend::default()), StrategyKind::Linear, JudgeMode::Reason).rank_batch(&[list(0, 3).0, empty]).unwrap_err();
    assert_eq!(e.to_string(), "candidate list 1 (\"e\") has no responses");
}
