//! Deterministic fake backends for tests (here, in the server and the pipeline): they answer
//! from the prompt text, so no model is needed and every answer is reproducible.
//!
//! [`OracleBackend`] reads the two responses out of a GRAM-R²-formatted judge prompt, scores
//! each with a hidden quality function and answers in the GRAM-R² format. Every random choice
//! (noise, position bias, parse failures) is a hash of the prompt text, `params.seed` and the
//! request's `seed_offset`, as a real engine's sampling is, so answers do not depend on the
//! batch they come in.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use gramrr_model::backend::{
    Backend, BackendResult, FinishReason, GenerateOutput, GenerateRequest, LabelOutput, LabelRequest, Prompt, SamplingParams,
    ScoreOutput, ScoreRequest,
};

use crate::seed::{fnv1a, mix, unit};

/// One backend call, as recorded by [`OracleBackend`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub method: &'static str,
    pub batch: usize,
}

type QualityFn = Box<dyn Fn(&str) -> f64 + Send + Sync>;

/// A judge that knows each response's quality.
pub struct OracleBackend {
    quality: QualityFn,
    /// Chance a judgment picks whichever response is shown first, whatever their quality.
    pub first_bias: f64,
    /// Chance a sampled (temperature > 0) judgment flips its label.
    pub noise: f64,
    /// Chance a generation has no `<answer>` block.
    pub fail_rate: f64,
    /// Slope of P(first better) in the quality difference, for `label_probs`.
    pub prob_scale: f64,
    /// Sleep per backend call, to make batching observable in server tests.
    pub delay: Duration,
    calls: Mutex<Vec<Call>>,
    requests: AtomicUsize,
}

impl Default for OracleBackend {
    fn default() -> Self {
        OracleBackend::new(default_quality)
    }
}

/// The number after `q=` in the text, if any; otherwise a hash of the text in [0, 1).
pub fn default_quality(text: &str) -> f64 {
    if let Some(pos) = text.find("q=") {
        let digits: String = text[pos + 2..].chars().take_while(|c| c.is_ascii_digit() || *c == '.' || *c == '-').collect();
        if let Ok(q) = digits.parse() {
            return q;
        }
    }
    unit(fnv1a(&[text]))
}

impl OracleBackend {
    pub fn new(quality: impl Fn(&str) -> f64 + Send + Sync + 'static) -> Self {
        OracleBackend {
            quality: Box::new(quality),
            first_bias: 0.0,
            noise: 0.0,
            fail_rate: 0.0,
            prob_scale: 4.0,
            delay: Duration::ZERO,
            calls: Mutex::new(vec![]),
            requests: AtomicUsize::new(0),
        }
    }
    pub fn with_first_bias(mut self, p: f64) -> Self {
        self.first_bias = p;
        self
    }
    pub fn with_noise(mut self, p: f64) -> Self {
        self.noise = p;
        self
    }
    pub fn with_fail_rate(mut self, p: f64) -> Self {
        self.fail_rate = p;
        self
    }
    pub fn with_delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
    /// Requests over all calls.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn record(&self, method: &'static str, batch: usize) {
        self.calls.lock().unwrap().push(Call { method, batch });
        self.requests.fetch_add(batch, Ordering::SeqCst);
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
    }

    /// The qualities of the responses shown first and second.
    fn qualities(&self, prompt: &Prompt) -> (f64, f64, String) {
        let text = prompt_text(prompt);
        let first = between(&text, "[The Start of Assistant A's Response]\n", "\n[The End of Assistant A's Response]");
        let second = between(&text, "[The Start of Assistant B's Response]\n", "\n[The End of Assistant B's Response]");
        ((self.quality)(first), (self.quality)(second), text)
    }

    /// The label shown-first/second this judgment picks, and whether it fails to answer.
    fn decide(&self, prompt: &Prompt, params: &SamplingParams, seed_offset: u64) -> (bool, bool, f64, f64) {
        let (q1, q2, text) = self.qualities(prompt);
        let sampled = params.temperature > 0.0;
        let h = mix(&[fnv1a(&[&text]), if sampled { params.seed } else { 0 }, if sampled { seed_offset } else { 0 }]);
        let mut first = q1 >= q2;
        if sampled && unit(mix(&[h, 1])) < self.noise {
            first = !first;
        }
        if unit(mix(&[h, 2])) < self.first_bias {
            first = true;
        }
        let fails = unit(mix(&[h, 3])) < self.fail_rate;
        (first, fails, q1, q2)
    }
}

fn prompt_text(prompt: &Prompt) -> String {
    match prompt {
        Prompt::Raw(t) => t.clone(),
        Prompt::Chat(m) => m.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n"),
    }
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let Some(s) = text.find(start) else { return "" };
    let rest = &text[s + start.len()..];
    match rest.rfind(end) {
        Some(e) => &rest[..e],
        None => rest,
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

impl Backend for OracleBackend {
    fn name(&self) -> String {
        "oracle".into()
    }

    fn score(&self, requests: &[ScoreRequest]) -> BackendResult<Vec<ScoreOutput>> {
        self.record("score", requests.len());
        Ok(requests
            .iter()
            .map(|r| {
                let n = r.completion.split_whitespace().count().max(1);
                let lp: Vec<f32> = (0..n).map(|i| -(1.0 + unit(mix(&[fnv1a(&[&r.completion]), i as u64])) as f32)).collect();
                ScoreOutput {
                    prompt_tokens: prompt_text(&r.prompt).split_whitespace().count(),
                    completion_tokens: n,
                    logprob: lp.iter().map(|&x| x as f64).sum(),
                    token_logprobs: lp,
                }
            })
            .collect())
    }

    fn generate(&self, requests: &[GenerateRequest], params: &SamplingParams) -> BackendResult<Vec<GenerateOutput>> {
        self.record("generate", requests.len());
        Ok(requests
            .iter()
            .map(|r| {
                let (first, fails, q1, q2) = self.decide(&r.prompt, params, r.seed_offset);
                let label = if first { "A" } else { "B" };
                let body = format!(
                    "<think>\nFeedback: Response A has quality {q1:.3}; Response B has quality {q2:.3}.\n\nComparision: Response {label} is stronger.\n\nConclusion: Response {label} is better.\n</think>\n"
                );
                let text = if fails { body } else { format!("{body}<answer>\n{label}\n</answer>") };
                GenerateOutput {
                    token_ids: vec![0; text.split_whitespace().count()],
                    finish_reason: FinishReason::Stop,
                    prompt_tokens: prompt_text(&r.prompt).split_whitespace().count(),
                    text,
                }
            })
            .collect())
    }

    fn label_probs(&self, requests: &[LabelRequest], labels: &[String]) -> BackendResult<Vec<LabelOutput>> {
        self.record("label_probs", requests.len());
        Ok(requests
            .iter()
            .map(|r| {
                let (q1, q2, _) = self.qualities(&r.prompt);
                let p = (1.0 - self.first_bias) * sigmoid(self.prob_scale * (q1 - q2)) + self.first_bias;
                let mut probs = vec![p as f32, (1.0 - p) as f32];
                probs.resize(labels.len(), 0.0);
                LabelOutput { logprobs: probs.iter().map(|p| p.max(1e-30).ln()).collect(), probs }
            })
            .collect())
    }

    fn render(&self, prompt: &Prompt) -> BackendResult<String> {
        Ok(prompt_text(prompt))
    }
}
