//! `/get_reward`: from a list of queries to one scalar each.
//!
//! A pairwise judge has no absolute score, so each query is compared with something:
//! - **with a label** (a non-empty `labels[i]`): the label is taken as a reference response
//!   (GRAM v1's suggestion: a greedy sample from the policy) and the reward is
//!   P(response better than reference), averaged over both presentation orders.
//! - **without one**: the queries of the request that share a prompt form a group (the n samples
//!   GRPO or RLOO draw per prompt), every pair in the group is judged (round robin, or each
//!   against `opponents` others), and the reward is the response's soft win rate: its mean
//!   P(better) over its comparisons. A response alone in its group, with no label, gets 0.5.
//!
//! Rewards lie in [0, 1] and are optionally normalised within each prompt group
//! ([`GroupNorm`]); `scores` always carries the raw [0, 1] values (OpenRLHF filters on it).

use std::collections::BTreeMap;

use gramrr_judge::reward::{normalize_group, GroupNorm};
use gramrr_judge::{PairInput, PairVerdict, RoundRobin};
use serde::Serialize;

use crate::query::split_query;

/// One query, split.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardItem {
    pub user_input: String,
    pub response: String,
    pub reference: Option<String>,
}

impl RewardItem {
    pub fn from_query(query: &str, prompt: Option<&str>, label: Option<&str>) -> Self {
        let (user_input, response) = split_query(query, prompt);
        let reference = label.filter(|l| !l.trim().is_empty()).map(|l| l.to_string());
        RewardItem { user_input, response, reference }
    }
}

/// Which comparisons one request needs, and how their verdicts become rewards.
#[derive(Debug, Clone)]
pub struct RewardPlan {
    n: usize,
    groups: Vec<Vec<usize>>,
    /// `(item, Some(opponent))` for a within-group comparison, `(item, None)` against its reference.
    pairs: Vec<(usize, Option<usize>)>,
    norm: GroupNorm,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RewardResponse {
    pub rewards: Vec<f64>,
    pub scores: Vec<f64>,
    pub extra_logs: BTreeMap<String, Vec<f64>>,
}

impl RewardPlan {
    /// The plan and the pairs to judge, in order.
    pub fn new(items: &[RewardItem], opponents: Option<usize>, norm: GroupNorm) -> (RewardPlan, Vec<PairInput>) {
        let mut by_prompt: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, it) in items.iter().enumerate() {
            by_prompt.entry(it.user_input.as_str()).or_default().push(i);
        }
        let groups: Vec<Vec<usize>> = by_prompt.into_values().collect();
        let mut pairs = vec![];
        let mut inputs = vec![];
        for (i, it) in items.iter().enumerate() {
            if let Some(r) = &it.reference {
                pairs.push((i, None));
                inputs.push(PairInput::new(it.user_input.clone(), it.response.clone(), r.clone()));
            }
        }
        for g in &groups {
            let open: Vec<usize> = g.iter().copied().filter(|&i| items[i].reference.is_none()).collect();
            for (a, b) in RoundRobin::schedule(open.len(), opponents) {
                let (i, j) = (open[a], open[b]);
                pairs.push((i, Some(j)));
                inputs.push(PairInput::new(items[i].user_input.clone(), items[i].response.clone(), items[j].response.clone()));
            }
        }
        (RewardPlan { n: items.len(), groups, pairs, norm }, inputs)
    }

    pub fn comparisons(&self) -> usize {
        self.pairs.len()
    }

    pub fn finish(&self, verdicts: &[PairVerdict]) -> RewardResponse {
        let mut soft = vec![0.0; self.n];
        let mut games = vec![0usize; self.n];
        let mut failures = vec![0usize; self.n];
        for (&(i, opp), v) in self.pairs.iter().zip(verdicts) {
            soft[i] += v.p_a;
            games[i] += 1;
            failures[i] += v.votes.failed;
            if let Some(j) = opp {
                soft[j] += 1.0 - v.p_a;
                games[j] += 1;
                failures[j] += v.votes.failed;
            }
        }
        let scores: Vec<f64> = soft.iter().zip(&games).map(|(&s, &g)| if g > 0 { s / g as f64 } else { 0.5 }).collect();
        let mut rewards = scores.clone();
        for g in &self.groups {
            let normed = normalize_group(&g.iter().map(|&i| scores[i]).collect::<Vec<_>>(), self.norm);
            for (&i, r) in g.iter().zip(normed) {
                rewards[i] = r;
            }
        }
        let reference: Vec<f64> = (0..self.n).map(|i| self.pairs.iter().any(|&(k, o)| k == i && o.is_none()) as u8 as f64).collect();
        let mut extra_logs = BTreeMap::new();
        extra_logs.insert("comparisons".into(), games.iter().map(|&g| g as f64).collect());
        extra_logs.insert("parse_failures".into(), failures.iter().map(|&f| f as f64).collect());
        extra_logs.insert("against_reference".into(), reference);
        RewardResponse { rewards, scores, extra_logs }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gramrr_judge::{Usage, VoteCount};

    fn verdict(p_a: f64) -> PairVerdict {
        PairVerdict { label: None, p_a, consistent: None, votes: VoteCount::default(), judgments: vec![], usage: Usage::default() }
    }

    #[test]
    fn references_and_groups() {
        let items = vec![
            RewardItem { user_input: "p1".into(), response: "a".into(), reference: Some("ref".into()) },
            RewardItem { user_input: "p2".into(), response: "x".into(), reference: None },
            RewardItem { user_input: "p2".into(), response: "y".into(), reference: None },
            RewardItem { user_input: "p2".into(), response: "z".into(), reference: None },
            RewardItem { user_input: "p3".into(), response: "alone".into(), reference: None },
        ];
        let (plan, inputs) = RewardPlan::new(&items, None, GroupNorm::None);
        assert_eq!(inputs.len(), 1 + 3);
        assert_eq!(inputs[0].response_b, "ref");
        // x beats y (0.8), x beats z (0.6), y loses to z (0.3).
        let out = plan.finish(&[verdict(0.9), verdict(0.8), verdict(0.6), verdict(0.3)]);
        assert_eq!(out.scores[0], 0.9);
        assert!((out.scores[1] - 0.7).abs() < 1e-12);
        assert!((out.scores[2] - 0.25).abs() < 1e-12);
        assert!((out.scores[3] - 0.55).abs() < 1e-12);
        assert_eq!(out.scores[4], 0.5);
        assert_eq!(out.extra_logs["comparisons"], vec![1.0, 2.0, 2.0, 2.0, 0.0]);
        let (plan, _) = RewardPlan::new(&items, None, GroupNorm::Center);
        let out = plan.finish(&[verdict(0.9), verdict(0.8), verdict(0.6), verdict(0.3)]);
        assert!((out.rewards[1] + out.rewards[2] + out.rewards[3]).abs() < 1e-12);
        assert_eq!(out.rewards[4], 0.0);
    }
}
