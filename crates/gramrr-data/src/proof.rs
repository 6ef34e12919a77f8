//! The reversible transformation between a rationale `z` and its proof form `ẑ`.
//!
//! A GRAM-R² rationale reasons towards a label and states it last:
//!
//! ```text
//! <think>
//! Feedback: …
//!
//! Comparision: …
//!
//! Conclusion: …
//! </think>
//! <answer>
//! A
//! </answer>
//! ```
//!
//! Its proof form states the label first, as a claim, and argues for it with the same three
//! sections, closing by restating what was proved:
//!
//! ```text
//! Claim: Response A is better than Response B.
//!
//! Proof.
//! Feedback: …
//!
//! Comparision: …
//!
//! Conclusion: …
//! Therefore, Response A is better. Q.E.D.
//! ```
//!
//! The preference-proving model writes the second form given `(s, l)`; the reward model is
//! trained on the first. Both forms carry the three section bodies byte for byte (everything
//! after each header's colon, whitespace included), so each text maps to the other and back
//! unchanged. The section headers are the same in both forms on purpose: with different
//! headers a body that happened to contain the other form's header would split differently
//! and the round trip would break.

use gramrr_backend::Prompt;
use serde::{Deserialize, Serialize};

use crate::prompt::JudgeTemplate;
use crate::record::Label;

pub const FEEDBACK: &str = "Feedback:";
/// Misspelt as in the GRAM-R² training data.
pub const COMPARISON: &str = "Comparision:";
pub const CONCLUSION: &str = "Conclusion:";

const RATIONALE_PREFIX: &str = "<think>\nFeedback:";

fn rationale_suffix(label: Label) -> String {
    format!("</think>\n<answer>\n{}\n</answer>", label.as_str())
}
fn proof_prefix(label: Label) -> String {
    format!("Claim: Response {} is better than Response {}.\n\nProof.\n{FEEDBACK}", label.as_str(), label.flipped().as_str())
}
fn proof_suffix(label: Label) -> String {
    format!("Therefore, Response {} is better. Q.E.D.", label.as_str())
}

/// Which text form an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Form {
    Rationale,
    Proof,
}

impl std::fmt::Display for Form {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Form::Rationale => "rationale",
            Form::Proof => "proof",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProofFormError {
    #[error("{form}: does not start with {expected:?}")]
    MissingStart { form: Form, expected: String },
    #[error("{form}: does not end with {expected}")]
    MissingEnd { form: Form, expected: String },
    #[error("{form}: no {section:?} section")]
    MissingSection { form: Form, section: String },
    #[error("proof: the claim is {claim:?} but the closing line concludes {ending:?}")]
    ClaimMismatch { claim: Label, ending: Label },
    #[error("a rationale or proof needs label A or B, not {0:?}")]
    NoPreference(Label),
}

/// A rationale's parts: the three section bodies exactly as written and the label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rationale {
    /// Everything after `Feedback:` up to the first `Comparision:`.
    pub feedback: String,
    /// Everything after that `Comparision:` up to the next `Conclusion:`.
    pub comparison: String,
    /// Everything after that `Conclusion:` up to the closing `</think>` (its trailing
    /// newline included).
    pub conclusion: String,
    pub label: Label,
}

/// Splits `Feedback-body Comparision: C Conclusion: K` at the first headers, which is what
/// makes both forms parse the same bodies.
fn split_sections(form: Form, middle: &str) -> Result<(String, String, String), ProofFormError> {
    let missing = |section: &str| ProofFormError::MissingSection { form, section: section.into() };
    let c = middle.find(COMPARISON).ok_or_else(|| missing(COMPARISON))?;
    let feedback = &middle[..c];
    let rest = &middle[c + COMPARISON.len()..];
    let k = rest.find(CONCLUSION).ok_or_else(|| missing(CONCLUSION))?;
    Ok((feedback.into(), rest[..k].into(), rest[k + CONCLUSION.len()..].into()))
}

fn ab() -> [Label; 2] {
    [Label::A, Label::B]
}

impl Rationale {
    /// Parses a rationale in the exact layout GRAM-R² writes (see the module docs). Tag
    /// whitespace must be canonical; use [`Self::parse_lenient`] for raw model output.
    pub fn parse(text: &str) -> Result<Self, ProofFormError> {
        let form = Form::Rationale;
        let body = text.strip_prefix(RATIONALE_PREFIX).ok_or_else(|| ProofFormError::MissingStart {
            form,
            expected: RATIONALE_PREFIX.into(),
        })?;
        for label in ab() {
            if let Some(middle) = body.strip_suffix(rationale_suffix(label).as_str()) {
                let (feedback, comparison, conclusion) = split_sections(form, middle)?;
                return Ok(Rationale { feedback, comparison, conclusion, label });
            }
        }
        Err(ProofFormError::MissingEnd { form, expected: format!("{:?} or B", rationale_suffix(Label::A)) })
    }

    /// Like [`Self::parse`], but accepts any whitespace around the tags and the label (as in
    /// `<think> Feedback: … </think> <answer> A </answer>`). Section bodies are kept as
    /// written; only the tag layout is lost, so [`Self::to_text`] gives the canonical text.
    pub fn parse_lenient(text: &str) -> Result<Self, ProofFormError> {
        let form = Form::Rationale;
        let t = text.trim();
        let start_err = || ProofFormError::MissingStart { form, expected: RATIONALE_PREFIX.into() };
        let after_think = t.strip_prefix("<think>").ok_or_else(start_err)?;
        let middle_start = after_think.trim_start().strip_prefix(FEEDBACK).ok_or_else(start_err)?;
        let end_err = || ProofFormError::MissingEnd { form, expected: "</think> <answer> A or B </answer>".into() };
        let close = middle_start.rfind("</think>").ok_or_else(end_err)?;
        let middle = &middle_start[..close];
        let tail = middle_start[close + "</think>".len()..].trim_start();
        let inner = tail.strip_prefix("<answer>").and_then(|r| r.strip_suffix("</answer>")).ok_or_else(end_err)?;
        let label = match inner.trim() {
            "A" => Label::A,
            "B" => Label::B,
            _ => return Err(end_err()),
        };
        let (feedback, comparison, conclusion) = split_sections(form, middle)?;
        Ok(Rationale { feedback, comparison, conclusion, label })
    }

    /// Parses a proof (see the module docs); the claim and the closing line must agree.
    pub fn parse_proof(text: &str) -> Result<Self, ProofFormError> {
        let form = Form::Proof;
        let (claim, body) = ab()
            .into_iter()
            .find_map(|l| text.strip_prefix(proof_prefix(l).as_str()).map(|b| (l, b)))
            .ok_or_else(|| ProofFormError::MissingStart { form, expected: proof_prefix(Label::A) })?;
        for ending in ab() {
            if let Some(middle) = body.strip_suffix(proof_suffix(ending).as_str()) {
                if ending != claim {
                    return Err(ProofFormError::ClaimMismatch { claim, ending });
                }
                let (feedback, comparison, conclusion) = split_sections(form, middle)?;
                return Ok(Rationale { feedback, comparison, conclusion, label: claim });
            }
        }
        Err(ProofFormError::MissingEnd { form, expected: format!("{:?}", proof_suffix(claim)) })
    }

    /// The rationale text, in GRAM-R²'s output layout.
    pub fn to_text(&self) -> String {
        format!(
            "{RATIONALE_PREFIX}{}{COMPARISON}{}{CONCLUSION}{}{}",
            self.feedback,
            self.comparison,
            self.conclusion,
            rationale_suffix(self.label)
        )
    }

    /// The proof text, arguing for `self.label`.
    pub fn to_proof_text(&self) -> String {
        format!(
            "{}{}{COMPARISON}{}{CONCLUSION}{}{}",
            proof_prefix(self.label),
            self.feedback,
            self.comparison,
            self.conclusion,
            proof_suffix(self.label)
        )
    }

    /// The section bodies, named, for checks that look at each one.
    pub fn sections(&self) -> [(&'static str, &str); 3] {
        [(FEEDBACK, &self.feedback), (COMPARISON, &self.comparison), (CONCLUSION, &self.conclusion)]
    }
}

/// `z → ẑ`: a canonical rationale to its proof form.
pub fn rationale_to_proof(rationale: &str) -> Result<String, ProofFormError> {
    Ok(Rationale::parse(rationale)?.to_proof_text())
}

/// `ẑ → z`: a proof to the rationale the reward model learns to write.
pub fn proof_to_rationale(proof: &str) -> Result<String, ProofFormError> {
    Ok(Rationale::parse_proof(proof)?.to_text())
}

/// What the proof's likelihood "without context" is conditioned on in Eq. 5's denominator.
/// The paper leaves it open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContextFree {
    /// Only the tokenizer's BOS: the proof as unconditioned text.
    Bos,
    /// An empty user turn through the chat template: the proof as an assistant reply to
    /// nothing, which keeps the chat framing the prover writes in.
    #[default]
    EmptyUser,
}

/// The preference-proving model's input: the judge prompt for `s = [c, x, y_a, y_b]` with the
/// given label `l` appended to the user message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofPrompt {
    pub judge: JudgeTemplate,
    /// Appended to the judge's user message; `{label}` and `{other}` become `A`/`B`.
    pub given_label: String,
}

pub const GIVEN_LABEL_TEMPLATE: &str = "\n\n[Given Preference]\nResponse {label} is better than Response {other}. Write a proof of this preference: state the claim, support it with the Feedback, Comparision and Conclusion sections, and end with \"Therefore, Response {label} is better. Q.E.D.\"";

impl Default for ProofPrompt {
    fn default() -> Self {
        ProofPrompt { judge: JudgeTemplate::gram_rr(), given_label: GIVEN_LABEL_TEMPLATE.into() }
    }
}

impl ProofPrompt {
    /// The prover's input for `(s, l)`.
    pub fn build(&self, user_input: &str, response_1: &str, response_2: &str, label: Label) -> Result<Prompt, ProofFormError> {
        if label == Label::Tie {
            return Err(ProofFormError::NoPreference(label));
        }
        let given = self
            .given_label
            .replace("{label}", label.as_str())
            .replace("{other}", label.flipped().as_str());
        let mut prompt = self.judge.to_prompt(user_input, response_1, response_2);
        if let Prompt::Chat(messages) = &mut prompt {
            let last = messages.last_mut().expect("a judge prompt has a user message");
            last.content.push_str(&given);
        }
        Ok(prompt)
    }

    /// The conditioning for `log π_ψ(ẑ)` in Eq. 5.
    pub fn context_free(&self, kind: ContextFree) -> Prompt {
        match kind {
            ContextFree::Bos => Prompt::Raw(String::new()),
            ContextFree::EmptyUser => Prompt::Chat(vec![gramrr_backend::ChatMessage::user("")]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Z: &str = "<think>\nFeedback: A answers the question; B drifts.\n\nComparision: A is precise.\n\nConclusion: A is better.\n</think>\n<answer>\nA\n</answer>";

    #[test]
    fn rationale_becomes_a_proof_of_its_label_and_back() {
        let proof = rationale_to_proof(Z).unwrap();
        assert!(proof.starts_with("Claim: Response A is better than Response B.\n\nProof.\nFeedback: A answers"));
        assert!(proof.ends_with("Conclusion: A is better.\nTherefore, Response A is better. Q.E.D."));
        assert_eq!(proof_to_rationale(&proof).unwrap(), Z);
    }

    #[test]
    fn proof_claim_and_ending_must_agree() {
        let proof = rationale_to_proof(Z).unwrap().replace("Therefore, Response A", "Therefore, Response B");
        assert!(matches!(Rationale::parse_proof(&proof), Err(ProofFormError::ClaimMismatch { .. })));
    }

    #[test]
    fn lenient_parse_normalizes_tag_whitespace_only() {
        let raw = "  <think> Feedback: f\nComparision: c Conclusion: k </think>\n\n<answer> B </answer>\n";
        let r = Rationale::parse_lenient(raw).unwrap();
        assert_eq!(r.label, Label::B);
        assert_eq!(r.feedback, " f\n");
        assert_eq!(r.conclusion, " k ");
        assert_eq!(r.to_text(), "<think>\nFeedback: f\nComparision: c Conclusion: k </think>\n<answer>\nB\n</answer>");
        assert!(Rationale::parse(raw).is_err());
    }

    #[test]
    fn structural_errors_name_the_missing_part() {
        let e = Rationale::parse("<think>\nFeedback: x\n</think>\n<answer>\nA\n</answer>").unwrap_err();
        assert_eq!(e.to_string(), "rationale: no \"Comparision:\" section");
        let e = Rationale::parse("<think>\nFeedback: x").unwrap_err();
        assert!(matches!(e, ProofFormError::MissingEnd { .. }));
    }

    #[test]
    fn proof_prompt_appends_the_given_label() {
        let p = ProofPrompt::default().build("q", "a", "b", Label::B).unwrap();
        let Prompt::Chat(m) = p else { panic!() };
        assert_eq!(m.len(), 1);
        assert!(m[0].content.starts_with("You are a helpful assistant"));
        assert!(m[0].content.contains("Response B is better than Response A."));
        assert!(ProofPrompt::default().build("q", "a", "b", Label::Tie).is_err());
    }
}
