//! Rule filters for synthesized rationales (the paper's third denoising step): drop
//! over-long texts, texts whose label is not the target, and texts that break the required
//! structure. Every rejection names its reason, so a report can count them by kind.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::proof::{Form, ProofFormError, Rationale};
use crate::record::Label;
use crate::verdict::VerdictParser;

/// The rules. `None` switches a length rule off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RuleFilter {
    /// Which form the texts are in.
    pub form: Form,
    /// Longest text kept, in characters (Unicode scalar values).
    pub max_chars: Option<usize>,
    /// Longest text kept, in whitespace-separated words.
    pub max_words: Option<usize>,
    /// Require the full structure (think block, three sections, answer; or claim, sections,
    /// closing line). Without it only the label is looked for.
    pub require_structure: bool,
    /// Reject a text whose Feedback, Comparision or Conclusion body is blank.
    pub require_nonempty_sections: bool,
    /// Reject a text whose Conclusion names only the other response ("Response B" when the
    /// target is A). A heuristic, off by default: "B has errors, so A wins" names B alone too
    /// when written without "Response".
    pub check_conclusion: bool,
}

impl Default for RuleFilter {
    fn default() -> Self {
        RuleFilter {
            form: Form::Rationale,
            max_chars: Some(8192),
            max_words: None,
            require_structure: true,
            require_nonempty_sections: true,
            check_conclusion: false,
        }
    }
}

/// Why a text was dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Rejection {
    #[error("too long: {found} {unit} > {limit}")]
    TooLong { unit: String, found: usize, limit: usize },
    #[error("structure: {0}")]
    Structure(ProofFormError),
    #[error("no label could be read: {0}")]
    NoLabel(String),
    #[error("empty {section} section")]
    EmptySection { section: String },
    #[error("label {found:?} does not agree with the target {target:?}")]
    LabelMismatch { target: Label, found: Label },
    #[error("the conclusion argues for Response {mentions}, not the target {target:?}")]
    ConclusionContradicts { target: Label, mentions: String },
}

impl Rejection {
    /// A stable short name for counting.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::TooLong { .. } => "too_long",
            Rejection::Structure(_) => "structure",
            Rejection::NoLabel(_) => "no_label",
            Rejection::EmptySection { .. } => "empty_section",
            Rejection::LabelMismatch { .. } => "label_mismatch",
            Rejection::ConclusionContradicts { .. } => "conclusion_contradicts",
        }
    }
}

impl RuleFilter {
    /// Keeps `text` (returning its parts when it has the full structure) or says why not.
    /// Rules run cheapest first; the first failing rule is the reason.
    pub fn check(&self, text: &str, target: Label) -> Result<Option<Rationale>, Rejection> {
        if let Some(limit) = self.max_chars {
            let found = text.chars().count();
            if found > limit {
                return Err(Rejection::TooLong { unit: "chars".into(), found, limit });
            }
        }
        if let Some(limit) = self.max_words {
            let found = text.split_whitespace().count();
            if found > limit {
                return Err(Rejection::TooLong { unit: "words".into(), found, limit });
            }
        }
        let parsed = match self.form {
            Form::Rationale => Rationale::parse(text),
            Form::Proof => Rationale::parse_proof(text),
        };
        let parts = match parsed {
            Ok(parts) => Some(parts),
            Err(e) if self.require_structure => return Err(Rejection::Structure(e)),
            Err(_) => None,
        };
        let found = match (&parts, self.form) {
            (Some(p), _) => p.label,
            (None, Form::Rationale) => {
                VerdictParser::gram_rr().parse(text).map_err(|e| Rejection::NoLabel(e.to_string()))?
            }
            (None, Form::Proof) => claim_label(text).ok_or_else(|| Rejection::NoLabel("no \"Claim: Response A/B\" line".into()))?,
        };
        if found != target {
            return Err(Rejection::LabelMismatch { target, found });
        }
        if let Some(p) = &parts {
            if self.require_nonempty_sections {
                if let Some((section, _)) = p.sections().into_iter().find(|(_, body)| body.trim().is_empty()) {
                    return Err(Rejection::EmptySection { section: section.trim_end_matches(':').into() });
                }
            }
            if self.check_conclusion {
                let names = |l: Label| {
                    let l = l.as_str();
                    crate::verdict::contains_word(&p.conclusion, &format!("Response {l}"))
                        || crate::verdict::contains_word(&p.conclusion, &format!("Assistant {l}"))
                };
                let other = target.flipped();
                if names(other) && !names(target) {
                    return Err(Rejection::ConclusionContradicts { target, mentions: other.as_str().into() });
                }
            }
        }
        Ok(parts)
    }
}

fn claim_label(text: &str) -> Option<Label> {
    let rest = text.trim_start().strip_prefix("Claim: Response ")?;
    match rest.chars().next()? {
        'A' => Some(Label::A),
        'B' => Some(Label::B),
        _ => None,
    }
}

/// Kept and rejected counts by reason, for reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectionCounts {
    pub kept: usize,
    pub rejected: BTreeMap<String, usize>,
}

impl RejectionCounts {
    pub fn record<T>(&mut self, outcome: &Result<T, Rejection>) {
        match outcome {
            Ok(_) => self.kept += 1,
            Err(r) => *self.rejected.entry(r.reason().to_string()).or_default() += 1,
        }
    }
    pub fn total_rejected(&self) -> usize {
        self.rejected.values().sum()
    }
    pub fn merge(&mut self, other: &RejectionCounts) {
        self.kept += other.kept;
        for (k, v) in &other.rejected {
            *self.rejected.entry(k.clone()).or_default() += v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Z: &str = "<think>\nFeedback: A is right.\n\nComparision: B is wrong.\n\nConclusion: Response A is better.\n</think>\n<answer>\nA\n</answer>";

    #[test]
    fn each_rule_rejects_with_its_reason() {
        let f = RuleFilter::default();
        assert!(f.check(Z, Label::A).unwrap().is_some());
        assert_eq!(f.check(Z, Label::B).unwrap_err().reason(), "label_mismatch");
        let short = RuleFilter { max_chars: Some(20), ..RuleFilter::default() };
        assert_eq!(short.check(Z, Label::A).unwrap_err().reason(), "too_long");
        let words = RuleFilter { max_words: Some(3), ..RuleFilter::default() };
        assert_eq!(words.check(Z, Label::A).unwrap_err().reason(), "too_long");
        assert_eq!(f.check("<answer>\nA\n</answer>", Label::A).unwrap_err().reason(), "structure");
        let empty = Z.replace("B is wrong.", " ");
        assert_eq!(f.check(&empty, Label::A).unwrap_err().to_string(), "empty Comparision section");
        let loose = RuleFilter { require_structure: false, ..RuleFilter::default() };
        assert!(loose.check("<answer>\nA\n</answer>", Label::A).unwrap().is_none());
        assert_eq!(loose.check("nothing", Label::A).unwrap_err().reason(), "no_label");
    }

    #[test]
    fn conclusion_check_catches_a_contradiction() {
        let z = Z.replace("Response A is better", "Response B is better");
        let f = RuleFilter { check_conclusion: true, ..RuleFilter::default() };
        assert_eq!(f.check(&z, Label::A).unwrap_err().reason(), "conclusion_contradicts");
        assert!(f.check(Z, Label::A).is_ok());
    }

    #[test]
    fn proofs_are_filtered_in_their_own_form() {
        let proof = crate::proof::rationale_to_proof(Z).unwrap();
        let f = RuleFilter { form: Form::Proof, ..RuleFilter::default() };
        assert!(f.check(&proof, Label::A).is_ok());
        assert_eq!(f.check(&proof, Label::B).unwrap_err().reason(), "label_mismatch");
    }

    #[test]
    fn counts_accumulate_by_reason() {
        let f = RuleFilter::default();
        let mut c = RejectionCounts::default();
        for (t, l) in [(Z, Label::A), (Z, Label::B), ("x", Label::A), (Z, Label::B)] {
            c.record(&f.check(t, l));
        }
        assert_eq!(c.kept, 1);
        assert_eq!(c.rejected["label_mismatch"], 2);
        assert_eq!(c.rejected["structure"], 1);
        assert_eq!(c.total_rejected(), 3);
    }
}
