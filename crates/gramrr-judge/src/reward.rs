//! Scalar rewards from a pairwise judge, for RL trainers.
//!
//! Two ways to turn comparisons into one number per response:
//! - against a reference response (GRAM v1's suggestion: a greedy sample of the policy):
//!   the reward is P(response better than reference), averaged over both orders;
//! - within a prompt group (the n samples GRPO / RLOO draw per prompt): a round robin among
//!   them, each response's reward its soft win rate, or its Bradley–Terry score.
//!
//! Group-relative trainers normalise within the group anyway; [`normalize_group`] does it here
//! for trainers that do not.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::pairwise::{PairInput, PairVerdict, PairwiseJudge};

/// How rewards are normalised within one prompt's group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GroupNorm {
    /// As they are.
    #[default]
    None,
    /// Minus the group mean (RLOO-style baseline; uses the mean of all, not leave-one-out).
    Center,
    /// Minus the mean, over the standard deviation (GRPO); a constant group gives zeros.
    Zscore,
    /// Rank in the group mapped to [0, 1], best 1; ties share their mean rank.
    Rank,
}

impl FromStr for GroupNorm {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(GroupNorm::None),
            "center" => Ok(GroupNorm::Center),
            "zscore" => Ok(GroupNorm::Zscore),
            "rank" => Ok(GroupNorm::Rank),
            _ => Err(format!("unknown group normalisation {s:?}: expected none, center, zscore or rank")),
        }
    }
}

pub fn normalize_group(values: &[f64], norm: GroupNorm) -> Vec<f64> {
    let n = values.len();
    if n == 0 {
        return vec![];
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    match norm {
        GroupNorm::None => values.to_vec(),
        GroupNorm::Center => values.iter().map(|v| v - mean).collect(),
        GroupNorm::Zscore => {
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
            let sd = var.sqrt();
            if sd < 1e-12 {
                vec![0.0; n]
            } else {
                values.iter().map(|v| (v - mean) / sd).collect()
            }
        }
        GroupNorm::Rank => {
            if n == 1 {
                return vec![0.5];
            }
            values
                .iter()
                .map(|v| {
                    let below = values.iter().filter(|w| *w < v).count() as f64;
                    let equal = values.iter().filter(|w| *w == v).count() as f64;
                    (below + (equal - 1.0) / 2.0) / (n - 1) as f64
                })
                .collect()
        }
    }
}

/// One response to score against a reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceItem {
    pub user_input: String,
    pub response: String,
    pub reference: String,
}

/// P(response better than reference) per item, with its verdict, in one batch.
pub fn reference_rewards(judge: &PairwiseJudge, items: &[ReferenceItem]) -> Result<Vec<(f64, PairVerdict)>> {
    let inputs: Vec<PairInput> =
        items.iter().map(|it| PairInput::new(it.user_input.clone(), it.response.clone(), it.reference.clone())).collect();
    Ok(judge.judge_batch(&inputs)?.into_iter().map(|v| (v.p_a, v)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisations() {
        let v = [1.0, 2.0, 3.0, 3.0];
        assert_eq!(normalize_group(&v, GroupNorm::Center), vec![-1.25, -0.25, 0.75, 0.75]);
        let z = normalize_group(&v, GroupNorm::Zscore);
        assert!(z.iter().sum::<f64>().abs() < 1e-12);
        assert!((z.iter().map(|x| x * x).sum::<f64>() / 4.0 - 1.0).abs() < 1e-12);
        assert_eq!(normalize_group(&v, GroupNorm::Rank), vec![0.0, 1.0 / 3.0, 2.5 / 3.0, 2.5 / 3.0]);
        assert_eq!(normalize_group(&[5.0, 5.0], GroupNorm::Zscore), vec![0.0, 0.0]);
        assert!(normalize_group(&[], GroupNorm::Zscore).is_empty());
    }
}
