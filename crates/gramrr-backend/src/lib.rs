//! gramrr-backend: the one small trait through which the judge, the pipeline and the evaluators
//! reach a language model, and the types of its requests and answers. The candle engine
//! (`gramrr_model::Engine`) is one implementation; a remote OpenAI-compatible server is another.
//! This crate compiles no engine, so crates that only read and write data (gramrr-data,
//! gramrr-eval) can name prompts and chat messages without building candle.
//!
//! Everything is batched: callers hand over every request that can run together, and the
//! implementation decides how to split it.

use serde::{Deserialize, Serialize};

/// One chat turn, as in transformers' `messages` lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// What the model is conditioned on.
///
/// `Raw` text is encoded as transformers does with `add_special_tokens=True` (a BOS for Llama 3).
/// `Chat` messages go through the model's chat template with the generation prompt and are
/// encoded *without* special tokens, because the template already writes them; encoding them
/// again would double the BOS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Raw(String),
    Chat(Vec<ChatMessage>),
}

impl From<&str> for Prompt {
    fn from(s: &str) -> Self {
        Prompt::Raw(s.to_string())
    }
}
impl From<String> for Prompt {
    fn from(s: String) -> Self {
        Prompt::Raw(s)
    }
}

/// Teacher-forced scoring of `completion` after `prompt`. The completion is encoded without
/// special tokens and appended to the prompt's ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreRequest {
    pub prompt: Prompt,
    pub completion: String,
}

/// Log-probabilities (natural log) of every completion token given everything before it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreOutput {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub token_logprobs: Vec<f32>,
    /// Sum of `token_logprobs`.
    pub logprob: f64,
}

/// Decoding settings. `temperature == 0` is greedy decoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    pub max_new_tokens: usize,
    pub temperature: f32,
    /// Nucleus sampling mass; 1.0 keeps everything.
    pub top_p: f32,
    /// Keep only the k most likely tokens; 0 keeps everything.
    pub top_k: usize,
    /// Generation stops when the decoded continuation contains one of these strings; the
    /// string itself is cut from the returned text.
    pub stop: Vec<String>,
    pub seed: u64,
    /// Keep decoding through end-of-sequence tokens (fixed-length benchmarks).
    #[serde(default)]
    pub ignore_eos: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self { max_new_tokens: 256, temperature: 0.0, top_p: 1.0, top_k: 0, stop: vec![], seed: 0, ignore_eos: false }
    }
}

/// One generation request. `seed_offset` makes sampling reproducible per item, independent of
/// which other items share its batch: the item's RNG is seeded from `(params.seed, seed_offset)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    pub seed_offset: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// An EOS token or a stop string ended the text.
    Stop,
    /// `max_new_tokens` was reached.
    Length,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateOutput {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
}

/// Next-token probabilities, at the end of a prompt, restricted to a candidate set of strings
/// (e.g. the label tokens `" A"` and `" B"`). Each candidate must encode to exactly one token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelRequest {
    pub prompt: Prompt,
    /// Text appended after the prompt before reading the next-token distribution (for example a
    /// generated rationale followed by `"<answer>\n"`). Encoded without special tokens.
    pub continuation: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelOutput {
    /// Full-vocabulary log-probability of each candidate token, in the order given.
    pub logprobs: Vec<f32>,
    /// Softmax over the candidates only (sums to 1): GRAM v1's label probability.
    pub probs: Vec<f32>,
}

impl LabelOutput {
    /// The candidates' full-vocabulary log-probabilities with their softmax among themselves.
    pub fn from_logprobs(logprobs: Vec<f32>) -> Self {
        let max = logprobs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = logprobs.iter().map(|&x| (x - max).exp()).collect();
        let s: f32 = e.iter().sum();
        LabelOutput { probs: e.iter().map(|x| x / s).collect(), logprobs }
    }
}

pub type BackendResult<T> = std::result::Result<T, BackendError>;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The engine failed (loading, a tensor op, the tokenizer); the engine's own error, as text.
    #[error("{0}")]
    Model(String),
    #[error("label {label:?} encodes to {n} tokens; label candidates must be single tokens")]
    LabelNotOneToken { label: String, n: usize },
    #[error("{0}")]
    Other(String),
}

/// What the method needs from a language model, batched.
pub trait Backend: Send + Sync {
    /// A short name for reports (the model directory, or a server URL).
    fn name(&self) -> String;

    /// Teacher-forced log-probabilities; output `i` answers request `i`.
    fn score(&self, requests: &[ScoreRequest]) -> BackendResult<Vec<ScoreOutput>>;

    /// Generation; output `i` answers request `i`.
    fn generate(
        &self,
        requests: &[GenerateRequest],
        params: &SamplingParams,
    ) -> BackendResult<Vec<GenerateOutput>>;

    /// Next-token distribution over `labels` after each request's prompt + continuation.
    fn label_probs(
        &self,
        requests: &[LabelRequest],
        labels: &[String],
    ) -> BackendResult<Vec<LabelOutput>>;

    /// The prompt text a `Prompt` turns into (chat template applied with the generation
    /// prompt), for logs and for composing continuations.
    fn render(&self, prompt: &Prompt) -> BackendResult<String>;
}
