//! Reading the preference label out of a judge's output.
//!
//! A judge's text either names exactly one label in the place its format reserves for it, or it
//! fails in a way worth counting: no answer at all, an answer that was never closed (usually a
//! generation cut at `max_new_tokens`), an answer naming both labels, or an answer naming
//! neither. The parser never falls back to a default label: a silent default (the GRAM-R²
//! reference snippet read every well-formed answer as B) turns formatting failures into
//! accuracy noise that no report can see.

use serde::{Deserialize, Serialize};

use crate::record::Label;

/// Where in the output the label is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "form", rename_all = "kebab-case")]
pub enum AnswerForm {
    /// Inside the last `open` … `close` pair (GRAM-R²: `<answer>` … `</answer>`; RM-R1 the
    /// same with `[[A]]` inside).
    Tagged { open: String, close: String },
    /// A marker anywhere in the text (RewardBench / MT-Bench: `[[A]]` or `[[B]]`).
    Marker,
    /// Inside the last `\boxed{…}`, braces matched (RRM: `\boxed{Assistant 1}`).
    Boxed,
}

/// A label parser: where the answer is, and how each label is spelled there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictParser {
    #[serde(flatten)]
    pub form: AnswerForm,
    /// How label A is written in the answer (`A`, `[[A]]`, `Assistant 1`).
    pub label_a: String,
    /// How label B is written in the answer.
    pub label_b: String,
}

/// Why no label could be read. Each kind is counted separately in reports ([`Self::kind`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ParseFailure {
    #[error("no answer: the output contains no {expected}")]
    NoAnswer { expected: String },
    #[error("unterminated answer: {open:?} is never closed by {close:?}")]
    Unterminated { open: String, close: String },
    #[error("the answer {content:?} names both labels")]
    BothLabels { content: String },
    #[error("malformed answer {content:?}: expected {expected}")]
    Malformed { content: String, expected: String },
}

impl ParseFailure {
    /// A stable short name for counting failures by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            ParseFailure::NoAnswer { .. } => "no_answer",
            ParseFailure::Unterminated { .. } => "unterminated",
            ParseFailure::BothLabels { .. } => "both_labels",
            ParseFailure::Malformed { .. } => "malformed",
        }
    }
}

impl VerdictParser {
    /// GRAM-R²: `A` or `B` inside the last `<answer>…</answer>`.
    pub fn gram_rr() -> Self {
        VerdictParser {
            form: AnswerForm::Tagged { open: "<answer>".into(), close: "</answer>".into() },
            label_a: "A".into(),
            label_b: "B".into(),
        }
    }
    /// RewardBench / MT-Bench pairwise judges: `[[A]]` or `[[B]]` in the text.
    pub fn double_bracket() -> Self {
        VerdictParser { form: AnswerForm::Marker, label_a: "[[A]]".into(), label_b: "[[B]]".into() }
    }
    /// RM-R1: `<answer>[[A]]</answer>`.
    pub fn rm_r1() -> Self {
        VerdictParser {
            form: AnswerForm::Tagged { open: "<answer>".into(), close: "</answer>".into() },
            label_a: "[[A]]".into(),
            label_b: "[[B]]".into(),
        }
    }
    /// RRM: `\boxed{Assistant 1}` or `\boxed{Assistant 2}`.
    pub fn rrm() -> Self {
        VerdictParser { form: AnswerForm::Boxed, label_a: "Assistant 1".into(), label_b: "Assistant 2".into() }
    }

    /// The label this output names, or why it names none.
    pub fn parse(&self, text: &str) -> Result<Label, ParseFailure> {
        match &self.form {
            AnswerForm::Tagged { open, close } => {
                let Some(start) = text.rfind(open.as_str()) else {
                    return Err(ParseFailure::NoAnswer { expected: format!("{open}…{close}") });
                };
                let inner = &text[start + open.len()..];
                let Some(end) = inner.find(close.as_str()) else {
                    return Err(ParseFailure::Unterminated { open: open.clone(), close: close.clone() });
                };
                self.match_label(&inner[..end])
            }
            AnswerForm::Marker => {
                let has_a = contains_word(text, &self.label_a);
                let has_b = contains_word(text, &self.label_b);
                match (has_a, has_b) {
                    (true, false) => Ok(Label::A),
                    (false, true) => Ok(Label::B),
                    (true, true) => Err(ParseFailure::BothLabels { content: text.trim().to_string() }),
                    (false, false) => Err(ParseFailure::NoAnswer {
                        expected: format!("{} or {}", self.label_a, self.label_b),
                    }),
                }
            }
            AnswerForm::Boxed => {
                const OPEN: &str = "\\boxed{";
                let Some(start) = text.rfind(OPEN) else {
                    return Err(ParseFailure::NoAnswer { expected: "\\boxed{…}".into() });
                };
                let inner = &text[start + OPEN.len()..];
                let mut depth = 1usize;
                for (i, ch) in inner.char_indices() {
                    match ch {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                return self.match_label(&inner[..i]);
                            }
                        }
                        _ => {}
                    }
                }
                Err(ParseFailure::Unterminated { open: OPEN.into(), close: "}".into() })
            }
        }
    }

    /// The text of `label` as this format writes it.
    pub fn label_text(&self, label: Label) -> Option<&str> {
        match label {
            Label::A => Some(&self.label_a),
            Label::B => Some(&self.label_b),
            Label::Tie => None,
        }
    }

    /// An answer is usually exactly a label; otherwise a label named once as a whole word
    /// ("Response A") is accepted, and naming both is a failure rather than a guess.
    fn match_label(&self, content: &str) -> Result<Label, ParseFailure> {
        let t = content.trim();
        if t == self.label_a {
            return Ok(Label::A);
        }
        if t == self.label_b {
            return Ok(Label::B);
        }
        match (contains_word(t, &self.label_a), contains_word(t, &self.label_b)) {
            (true, false) => Ok(Label::A),
            (false, true) => Ok(Label::B),
            (true, true) => Err(ParseFailure::BothLabels { content: t.to_string() }),
            (false, false) => Err(ParseFailure::Malformed {
                content: t.to_string(),
                expected: format!("{} or {}", self.label_a, self.label_b),
            }),
        }
    }
}

/// `needle` occurs in `hay` with no letter or digit glued to an alphanumeric edge of it, so
/// `A` is found in `Response A.` but not in `Answer`.
pub(crate) fn contains_word(hay: &str, needle: &str) -> bool {
    if needle.is_empty() {
        return false;
    }
    let first_alnum = needle.chars().next().is_some_and(char::is_alphanumeric);
    let last_alnum = needle.chars().next_back().is_some_and(char::is_alphanumeric);
    let mut from = 0;
    while let Some(pos) = hay[from..].find(needle) {
        let start = from + pos;
        let end = start + needle.len();
        let before_ok = !first_alnum || !hay[..start].chars().next_back().is_some_and(char::is_alphanumeric);
        let after_ok = !last_alnum || !hay[end..].chars().next().is_some_and(char::is_alphanumeric);
        if before_ok && after_ok {
            return true;
        }
        from = start + needle.chars().next().map_or(1, char::len_utf8);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gram_reads_the_last_answer_not_the_format_echo() {
        let p = VerdictParser::gram_rr();
        let text = "<think>\nFeedback: ok\n</think>\n<answer>\nA\n</answer>";
        assert_eq!(p.parse(text), Ok(Label::A));
        let text = "<answer>\nA or B\n</answer> then <think>x</think>\n<answer>\nB\n</answer>";
        assert_eq!(p.parse(text), Ok(Label::B));
        assert_eq!(p.parse("<answer> A </answer>"), Ok(Label::A));
        assert_eq!(p.parse("<answer>Response B</answer>"), Ok(Label::B));
    }

    #[test]
    fn gram_failures_are_typed() {
        let p = VerdictParser::gram_rr();
        assert_eq!(p.parse("no tags here").unwrap_err().kind(), "no_answer");
        assert_eq!(p.parse("<answer>\nA\n").unwrap_err().kind(), "unterminated");
        assert_eq!(p.parse("<answer>\nA or B\n</answer>").unwrap_err().kind(), "both_labels");
        assert_eq!(p.parse("<answer>\nC\n</answer>").unwrap_err().kind(), "malformed");
        assert_eq!(p.parse("<answer></answer>").unwrap_err().kind(), "malformed");
        // "Answer" starts with A but is not the label A.
        assert_eq!(p.parse("<answer>Answer</answer>").unwrap_err().kind(), "malformed");
    }

    #[test]
    fn presets_parse_their_own_forms() {
        assert_eq!(VerdictParser::double_bracket().parse("so the verdict is [[B]]"), Ok(Label::B));
        assert_eq!(VerdictParser::double_bracket().parse("[[A]] vs [[B]]").unwrap_err().kind(), "both_labels");
        assert_eq!(VerdictParser::double_bracket().parse("tie").unwrap_err().kind(), "no_answer");
        assert_eq!(VerdictParser::rm_r1().parse("<answer>[[A]]</answer>"), Ok(Label::A));
        assert_eq!(VerdictParser::rrm().parse("thus \\boxed{Assistant 2}."), Ok(Label::B));
        assert_eq!(VerdictParser::rrm().parse("\\boxed{\\text{Assistant 1}}"), Ok(Label::A));
        assert_eq!(VerdictParser::rrm().parse("\\boxed{Assistant 1").unwrap_err().kind(), "unterminated");
        // "Assistant 1" must not match inside "Assistant 12".
        assert_eq!(VerdictParser::rrm().parse("\\boxed{Assistant 12}").unwrap_err().kind(), "malformed");
    }

    #[test]
    fn failures_serialize_with_their_kind() {
        let f = ParseFailure::NoAnswer { expected: "x".into() };
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(v["kind"], "no_answer");
    }
}
