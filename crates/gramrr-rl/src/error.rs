use std::path::PathBuf;

/// Everything that can go wrong in an RL run. Messages name the file, line, field or command
/// involved and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum RlError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A bad record in a prompts file.
    #[error("{file}:{line}: {message}")]
    Data { file: PathBuf, line: usize, message: String },
    #[error("config: {0}")]
    Config(String),
    /// The reward command failed or answered something that is not one score per response.
    #[error("reward command `{command}`: {message}")]
    RewardCommand { command: String, message: String },
    /// A reward server (gramrr serve) failed or answered unexpectedly.
    #[error("reward server {url}: {message}")]
    RewardServer { url: String, message: String },
    /// Any other reward failure (a reward function's own error).
    #[error("reward {name}: {message}")]
    Reward { name: String, message: String },
    #[error("resume from {dir}: {message}")]
    Resume { dir: PathBuf, message: String },
    #[error("plot {path}: {message}")]
    Plot { path: PathBuf, message: String },
    #[error(transparent)]
    Judge(#[from] gramrr_judge::JudgeError),
    #[error(transparent)]
    Train(#[from] gramrr_train::TrainError),
    #[error(transparent)]
    Model(#[from] gramrr_model::ModelError),
    #[error(transparent)]
    Backend(#[from] gramrr_model::backend::BackendError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, RlError>;

impl RlError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RlError::Io { path: path.into(), source }
    }
}
