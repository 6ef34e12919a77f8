//! What the pipeline needs to know about a text format, as one small trait.
//!
//! The method is the same whatever the models read and write: a judge prompt for `s`, a
//! prover prompt for `(s, l)`, a reversible rationale ⇄ proof transformation, a verdict
//! parser, the place where the label token is read, weighted training targets and rule checks.
//! [`GramRrFormat`] is GRAM-R²'s released format for real models; [`CompactFormat`] keeps the
//! same structure in a few dozen characters for the built-in demo, whose character-level model
//! cannot afford a 2,000-character template.

pub mod compact;
pub mod gram;

use gramrr_data::prompt::JudgeTemplate;
use gramrr_data::verdict::ParseFailure;
use gramrr_data::{Label, PreferencePair};
use gramrr_model::backend::Prompt;
use gramrr_train::Segment;
use serde::{Deserialize, Serialize};

pub use compact::CompactFormat;
pub use gram::GramRrFormat;

use crate::config::{FilterConfig, FormatConfig};

/// Why a synthesized proof was dropped: a stable short reason for counting, and the detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRejection {
    pub reason: String,
    pub detail: String,
}

impl RuleRejection {
    pub fn new(reason: &str, detail: impl Into<String>) -> Self {
        Self { reason: reason.into(), detail: detail.into() }
    }
}

impl std::fmt::Display for RuleRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

/// A text that is not in the form a conversion expects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(pub String);

/// One judge/proof text format. Implementations are pure text functions: no model, no I/O.
pub trait PairFormat: Send + Sync {
    fn name(&self) -> &'static str;

    /// The reward model's input for `s = [c, x, y_a, y_b]`.
    /// The judge template the reward model is prompted and parsed with: gramrr-judge judges
    /// the pipeline's pairs with it (pseudo-labels, evaluation).
    fn judge_template(&self) -> JudgeTemplate;
    fn judge_prompt(&self, pair: &PreferencePair) -> Prompt;

    /// The preference-proving model's input for `(s, l)`.
    fn prover_prompt(&self, pair: &PreferencePair, label: Label) -> Result<Prompt, FormatError>;

    /// What log π_ψ(ẑ) is conditioned on in Eq. 5 (a minimal prompt without `s` or `l`).
    fn context_free_prompt(&self) -> Prompt;

    /// A rationale from data in this format's canonical layout, with the label it states.
    fn canonical_rationale(&self, rationale: &str) -> Result<(String, Label), FormatError>;

    /// `z → ẑ`.
    fn rationale_to_proof(&self, rationale: &str) -> Result<String, FormatError>;

    /// `ẑ → z`, with the label the proof argues for.
    fn proof_to_rationale(&self, proof: &str) -> Result<(String, Label), FormatError>;

    /// The reward model's training target for a canonical rationale, in weighted segments:
    /// the decision tokens (the label, and any verdict words) get `decision_weight`.
    fn rm_segments(&self, rationale: &str, decision_weight: f32) -> Vec<Segment>;

    /// The prover's training target for a proof, weighted the same way.
    fn prover_segments(&self, proof: &str, decision_weight: f32) -> Vec<Segment>;

    /// The label a generated judgment names, or why it names none.
    fn parse_verdict(&self, output: &str) -> Result<Label, ParseFailure>;

    /// The text to append to the judge prompt so that the next token is the label: the
    /// generated rationale up to its answer marker, then the answer prefix. `None` when the
    /// output has no answer marker to cut at.
    fn answer_continuation(&self, output: &str) -> Option<String>;

    /// The single-token label strings for A and B at the answer position.
    fn label_strings(&self) -> [String; 2];

    /// The rule checks of the paper's third denoising step: structure, length, and whether the
    /// proof supports `target`. `pair` is there for checks that compare against the input.
    fn check_proof(&self, pair: &PreferencePair, proof: &str, target: Label) -> Result<(), RuleRejection>;
}

/// The format a config names.
pub fn from_config(cfg: &FormatConfig, filter: &FilterConfig) -> Box<dyn PairFormat> {
    match cfg {
        FormatConfig::GramRr { context_free, check_conclusion } => Box::new(GramRrFormat::new(
            context_free == "bos",
            gramrr_data::filter::RuleFilter {
                form: gramrr_data::proof::Form::Proof,
                max_chars: filter.max_chars,
                max_words: filter.max_words,
                require_structure: true,
                require_nonempty_sections: filter.require_nonempty_sections,
                check_conclusion: *check_conclusion,
            },
        )),
        FormatConfig::Compact { context_free } => Box::new(CompactFormat {
            context_free: context_free.clone(),
            max_chars: filter.max_chars,
            max_words: filter.max_words,
        }),
    }
}

/// Splits `text` at the occurrences of each `(marker, weight)` in order: text outside the
/// markers gets weight 1. Markers missing from the text are skipped, so a malformed target
/// still trains with weight 1 rather than failing.
pub(crate) fn weighted_spans(text: &str, spans: &[(usize, usize)], weight: f32) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut at = 0;
    for &(s, e) in spans {
        if s < at || e > text.len() || s >= e {
            continue;
        }
        if s > at {
            out.push(Segment { text: text[at..s].to_string(), weight: 1.0 });
        }
        out.push(Segment { text: text[s..e].to_string(), weight });
        at = e;
    }
    if at < text.len() {
        out.push(Segment { text: text[at..].to_string(), weight: 1.0 });
    }
    out
}
