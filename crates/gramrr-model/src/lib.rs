//! gramrr-model: loads Hugging Face decoder checkpoints (Llama 3.x, Qwen2, Qwen3) from an HF
//! directory or the offline HF cache and runs them on candle: teacher-forced scoring, batched
//! generation with a KV cache, and label-token probabilities. The rest of gramrr reaches it
//! only through the [`backend::Backend`] trait.

pub mod backend;
pub mod config;
pub mod engine;
pub mod error;
pub mod fsutil;
pub mod hub;
pub mod init;
pub mod model;
pub mod sampling;
pub mod tokenizer;
pub mod weights;

pub use backend::{Backend, ChatMessage, Prompt};
pub use config::{Architecture, DecoderConfig};
pub use engine::{DeviceChoice, Engine, LoadOptions};
pub use error::{ModelError, Result};
pub use model::Decoder;
pub use weights::WeightDType;
