//! gramrr-train: supervised fine-tuning for every stage of GRAM-R² — full fine-tuning or LoRA,
//! loss on completion tokens with per-segment weights, an optional label loss, AdamW with f32
//! moments, clipping, schedules, gradient accumulation, checkpoints with exact resume.
//!
//! [`policy`] holds GRPO's per-token clipped policy-ratio objective with its KL penalty, for
//! the RL loop in gramrr-rl.
//!
//! The pipeline calls [`train_sft`] in-process with a [`gramrr_model::Decoder`] and gets the
//! trained decoder back; the CLI (`gramrr train sft`) is a thin layer over the same function.

pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod error;
pub mod lora;
pub mod loss;
pub mod optim;
pub mod plot;
pub mod policy;
pub mod trainer;

pub use data::{fit_examples, load_sft_jsonl, pack_examples, read_sft_jsonl, tokenize_record, DataStats, Segment, SftExample, SftRecord, Truncate};
pub use error::{Result, TrainError};
pub use lora::{load_adapter, merge_lora, save_adapter, LoraConfig, LoraTarget};
pub use optim::{AdamWConfig, Scheduler};
pub use policy::{clipped_policy_loss, PolicyLossConfig, PolicyLossValue, PolicyTokens};
pub use trainer::{
    detach_for_inference, train_sft, trainable_parameters, LabelLossConfig, RunInfo, Silent, SftConfig, StepMetrics, TrainObserver, TrainOutput, TrainReport,
};
