use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model. Messages name the file,
/// field or tensor involved and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("model not found: {0}")]
    NotFound(String),
    #[error("{path}: missing file (a model directory needs config.json, weights and tokenizer.json)")]
    MissingFile { path: PathBuf },
    #[error("{path}: invalid JSON: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{file}: {field}: {message}")]
    Config { file: PathBuf, field: String, message: String },
    #[error("{file}: architecture {found:?} is not supported; supported: {supported}")]
    UnsupportedArchitecture { file: PathBuf, found: String, supported: String },
    #[error("{file}: tensor {tensor:?} is missing")]
    MissingTensor { file: PathBuf, tensor: String },
    #[error("{file}: tensor {tensor:?} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch { file: PathBuf, tensor: String, found: Vec<usize>, expected: Vec<usize> },
    #[error("{file}: {message}")]
    Weights { file: PathBuf, message: String },
    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("chat template: {0}")]
    ChatTemplate(String),
    #[error("device: {0}")]
    Device(String),
    #[error("input: {0}")]
    Input(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io { path: path.into(), source }
    }
    pub fn config(file: impl Into<PathBuf>, field: impl Into<String>, message: impl Into<String>) -> Self {
        ModelError::Config { file: file.into(), field: field.into(), message: message.into() }
    }
}

impl From<ModelError> for gramrr_backend::BackendError {
    fn from(e: ModelError) -> Self {
        gramrr_backend::BackendError::Model(e.to_string())
    }
}
