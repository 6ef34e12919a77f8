use gramrr_model::backend::BackendError;

#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    #[error("backend {call} call with {requests} requests: {source}")]
    Backend { call: &'static str, requests: usize, source: BackendError },
    #[error("backend {call} call returned {got} outputs for {expected} requests")]
    OutputCount { call: &'static str, expected: usize, got: usize },
    #[error("backend label_probs returned {got} probabilities for request {index}, expected 2")]
    LabelCount { index: usize, got: usize },
    #[error("judge config: {field}: {message}")]
    Config { field: &'static str, message: String },
    #[error("candidate list {index} ({id:?}) has no responses")]
    EmptyList { index: usize, id: String },
}

pub type Result<T> = std::result::Result<T, JudgeError>;
