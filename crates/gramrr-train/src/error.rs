use std::path::PathBuf;

/// Everything that can go wrong while preparing data or training. Messages name the file, line
/// or field involved and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A bad record in a data file.
    #[error("{file}:{line}: {message}")]
    Data { file: PathBuf, line: usize, message: String },
    #[error("{path}: invalid JSON: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("config: {0}")]
    Config(String),
    #[error("resume from {dir}: {message}")]
    Resume { dir: PathBuf, message: String },
    #[error("{path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error("plot {path}: {message}")]
    Plot { path: PathBuf, message: String },
    #[error(transparent)]
    Model(#[from] gramrr_model::ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, TrainError>;

impl TrainError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io { path: path.into(), source }
    }
}
