//! gramrr-judge: a generative reward model used as a judge, on top of the
//! [`Backend`](gramrr_model::backend::Backend) trait.
//!
//! - [`PairwiseJudge`]: one verdict per pair, in `reason` mode (generate a rationale, parse the
//!   label), `prob` mode (the softmax over the label tokens at the answer position, GRAM v1
//!   style), or `prob-after-reason`; both presentation orders by default, voting@k with early
//!   stopping, token and time accounting per verdict.
//! - [`ListRanker`] with a [`StrategyKind`]: linear champion search, [`KnockoutTournament`],
//!   full rankings by repeated selection or merge sort, and round robin fitted with
//!   [`BradleyTerryFit`].
//! - [`reward`]: per-candidate scalar rewards, normalised within a prompt group.
//!
//! Everything is batched: every comparison that can run at the same time goes to the backend in
//! one call, and each generation's seed depends only on its own content, so a verdict does not
//! depend on which other items shared its batch.

pub mod bt;
pub mod error;
pub mod pairwise;
pub mod rank;
pub mod reward;
pub mod seed;
pub mod stats;
pub mod testing;

pub use bt::{BradleyTerryFit, BtOptions};
pub use error::{JudgeError, Result};
pub use pairwise::{
    judge_pairs,
    JudgeConfig, JudgeMode, Judgment, PairInput, PairVerdict, PairwiseJudge, Usage, VoteCount, DEFAULT_VOTE_TEMPERATURE,
};
pub use rank::{
    KnockoutTournament, LinearChampionSearch, ListRanker, MatchResult, MergeSortRanking, RankInput, RankOutcome,
    Ranking, RankingStrategy, RepeatedSelection, RoundRobin, StrategyKind,
};
pub use reward::GroupNorm;
pub use stats::{JudgeSummary, PositionBias};
