//! Reward-model benchmarks, scored with exactly the upstream rules: RM-Bench, JudgeBench,
//! RewardBench, LLMBar, HH-RLHF, RMB (pairwise and best-of-N) and PPE best-of-K.
//!
//! Decisions come from a [`Source`]: a [`ResponseScorer`] (one scalar per response: a scores
//! file, a baseline, a reward model) or a [`PairJudge`] (a generative judge). JudgeBench's
//! published judge outputs are a third source of their own. Each `eval_*` function runs the
//! source over the benchmark's comparisons, writes the per-item file as it goes (so that a
//! killed run resumes), and returns the metrics with bootstrap intervals; with
//! [`EvalConfig::out`] set it also writes metrics.json, report.md and, for curves, a PNG.
//!
//! Wiring a live model is: implement [`PairJudge`] for it, wrap it in [`Source::Judge`], and
//! call the same `eval_*` functions.

pub mod bench;
pub mod bootstrap;
mod error;
pub mod judge;
pub mod plot;
pub mod report;
pub mod run;
pub mod scorers;

pub use bench::judgebench::{default_mode, eval_judgebench, eval_judgebench_outputs, Mode};
pub use bench::pairwise::{eval_pairwise, PairBench};
pub use bench::ppe::eval_ppe;
pub use bench::rm_bench::eval_rm_bench;
pub use bench::rmb::eval_rmb;
pub use bench::Report;
pub use error::EvalError;
pub use judge::{PairDecision, PairJudge, ResponseScorer, ScoreQuery, Source};
pub use run::{write_requests, EvalConfig, ItemOutcome, Task};
pub use scorers::{LengthBaseline, RandomBaseline, ScoresFile, SCORES_FILE_HELP};
