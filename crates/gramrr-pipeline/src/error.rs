//! Errors of the pipeline library. Each names what was being done and to which file, line,
//! field or stage, so the CLI can print the chain without guessing.

use std::path::{Path, PathBuf};

pub type Result<T> = std::result::Result<T, PipelineError>;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: {message}")]
    Data { path: PathBuf, line: usize, message: String },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{0}")]
    Model(#[from] gramrr_model::ModelError),
    #[error("{0}")]
    Backend(#[from] gramrr_model::backend::BackendError),
    #[error("{0}")]
    Train(#[from] gramrr_train::TrainError),
    #[error("{0}")]
    Judge(#[from] gramrr_judge::JudgeError),
    #[error("format {format}: {message}")]
    Format { format: String, message: String },
    #[error("stage {stage}: {message}")]
    Stage { stage: String, message: String },
    #[error("{path}: {message}")]
    Plot { path: PathBuf, message: String },
    /// Not a failure: `gramrr export-sft` stops its stage here, before training, with what it
    /// wrote. The stage stays unfinished.
    #[error("stage {}: training data and settings written to {} (not trained)", .0.stage, .0.dir.display())]
    Exported(Box<crate::external_train::ExportSummary>),
}

impl PipelineError {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        PipelineError::Io { path: path.as_ref().to_path_buf(), source }
    }
    pub fn stage(stage: impl Into<String>, message: impl Into<String>) -> Self {
        PipelineError::Stage { stage: stage.into(), message: message.into() }
    }
    pub fn config(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        PipelineError::Config { path: path.as_ref().to_path_buf(), message: message.into() }
    }
}

impl From<candle_core::Error> for PipelineError {
    fn from(e: candle_core::Error) -> Self {
        PipelineError::Model(gramrr_model::ModelError::from(e))
    }
}
