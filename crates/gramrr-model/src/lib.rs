//! gramrr-model: loads Hugging Face decoder checkpoints (Llama 3.x, Qwen2, Qwen3) from an HF
//! directory or the offline HF cache and runs them on candle: teacher-forced scoring, batched
//! generation with a KV cache, and label-token probabilities. The rest of gramrr reaches it
//! only through the [`backend::Backend`] trait.

pub mod backend;
pub mod error;

pub use error::{ModelError, Result};
