use gramrr_data::read::ReadError;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: line {line}: {problem}")]
    ScoresFile { path: String, line: usize, problem: String },
    #[error("{path}: no score for item {id:?} response {key:?} (nor for its position {index})")]
    MissingScore { path: String, id: String, key: String, index: usize },
    #[error("{path}: line {line}: cannot resume from this per-item file: {problem}")]
    Resume { path: String, line: usize, problem: String },
    #[error("{0}")]
    Invalid(String),
    /// A judge or scorer failed as a whole (not one decision: those are `PairDecision::failure`).
    #[error("{source_name}: {message}")]
    Source { source_name: String, message: String },
    #[error("{path}: plotting: {message}")]
    Plot { path: String, message: String },
}

impl EvalError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> EvalError {
        EvalError::Io { path: path.display().to_string(), source }
    }
}
