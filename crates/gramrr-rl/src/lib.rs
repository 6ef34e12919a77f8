//! gramrr-rl: improving a policy with a reward model's judgments — GRPO (Group Relative Policy
//! Optimization) on a decoder, with rewards from a generative reward model (GRAM-R²: each
//! response judged against a reference answer, or within its group by round robin and
//! Bradley–Terry), from any command that scores JSONL, from a `gramrr serve` URL, or a weighted
//! mix of them.
//!
//! - [`prompts`]: the prompts file.
//! - [`reward`]: the [`RewardModel`] trait and its sources.
//! - [`grpo`]: the loop ([`train_grpo`]): sampling, rewards, group-normalised advantages, the
//!   clipped objective with a KL penalty (from `gramrr_train::policy`), LoRA or full
//!   fine-tuning, checkpoints with exact resume, per-step metrics.
//! - [`report`]: `curves.png` and `summary.md`.

pub mod error;
pub mod grpo;
pub mod http;
pub mod prompts;
pub mod report;
pub mod reward;

pub use error::{Result, RlError};
pub use grpo::{train_grpo, GrpoConfig, GrpoObserver, GrpoOutput, GrpoReport, GrpoStepMetrics, LossNorm, Quiet};
pub use prompts::{read_prompts, PromptRecord};
pub use reward::{CommandReward, FnReward, GroupScore, JudgeReward, MixedReward, RewardBatch, RewardGroup, RewardModel};
