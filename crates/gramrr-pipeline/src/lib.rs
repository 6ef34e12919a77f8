//! gramrr-pipeline: the whole training recipe of GRAM-R² (see `docs/method.md` and
//! [`pipeline`]), generic over the text format the models read and write ([`format`]), with a
//! resumable, shardable run directory ([`run`], [`store`]) and a built-in demo world that runs
//! the entire method from scratch on a CPU ([`demo`]).

pub mod config;
pub mod data;
pub mod demo;
pub mod error;
pub mod eval;
pub mod external_train;
pub mod format;
pub mod pipeline;
pub mod progress;
pub mod pseudo;
pub mod run;
pub mod store;
pub mod synth;

pub use config::PipelineConfig;
pub use error::{PipelineError, Result};
pub use format::{CompactFormat, GramRrFormat, PairFormat};
pub use pipeline::{IterationLog, Pipeline, RunSummary};
pub use store::Shard;
