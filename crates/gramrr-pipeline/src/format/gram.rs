//! GRAM-R²'s released format: the byte-exact judge template, `<think>` Feedback / Comparision /
//! Conclusion `</think>` `<answer>` label `</answer>`, gramrr-data's proof form
//! ("Claim: Response A is better than Response B. … Q.E.D.") and its rule filter.

use gramrr_data::filter::RuleFilter;
use gramrr_data::proof::{ContextFree, ProofPrompt, Rationale};
use gramrr_data::prompt::JudgeTemplate;
use gramrr_data::verdict::ParseFailure;
use gramrr_data::{Label, PreferencePair};
use gramrr_model::backend::Prompt;
use gramrr_train::Segment;

use super::{weighted_spans, FormatError, PairFormat, RuleRejection};

pub struct GramRrFormat {
    pub judge: JudgeTemplate,
    pub prover: ProofPrompt,
    pub context_free: ContextFree,
    pub filter: RuleFilter,
}

impl GramRrFormat {
    pub fn new(context_free_bos: bool, filter: RuleFilter) -> Self {
        Self {
            judge: JudgeTemplate::gram_rr(),
            prover: ProofPrompt::default(),
            context_free: if context_free_bos { ContextFree::Bos } else { ContextFree::EmptyUser },
            filter,
        }
    }
}

fn fe(e: impl std::fmt::Display) -> FormatError {
    FormatError(e.to_string())
}

/// Byte spans of the last occurrence of `needle` that ends right before `suffix` at the end
/// of `text`.
fn label_span_before_suffix(text: &str, suffix_start: usize, label: &str) -> Option<(usize, usize)> {
    let s = suffix_start.checked_sub(label.len())?;
    (text.get(s..suffix_start)? == label).then_some((s, suffix_start))
}

impl PairFormat for GramRrFormat {
    fn name(&self) -> &'static str {
        "gram-rr"
    }

    fn judge_template(&self) -> JudgeTemplate {
        self.judge.clone()
    }

    fn judge_prompt(&self, pair: &PreferencePair) -> Prompt {
        self.judge.to_prompt(&pair.prompt.as_text(), &pair.response_a, &pair.response_b)
    }

    fn prover_prompt(&self, pair: &PreferencePair, label: Label) -> Result<Prompt, FormatError> {
        self.prover.build(&pair.prompt.as_text(), &pair.response_a, &pair.response_b, label).map_err(fe)
    }

    fn context_free_prompt(&self) -> Prompt {
        self.prover.context_free(self.context_free)
    }

    fn canonical_rationale(&self, rationale: &str) -> Result<(String, Label), FormatError> {
        let r = Rationale::parse_lenient(rationale).map_err(fe)?;
        Ok((r.to_text(), r.label))
    }

    fn rationale_to_proof(&self, rationale: &str) -> Result<String, FormatError> {
        Ok(Rationale::parse(rationale).map_err(fe)?.to_proof_text())
    }

    fn proof_to_rationale(&self, proof: &str) -> Result<(String, Label), FormatError> {
        let r = Rationale::parse_proof(proof).map_err(fe)?;
        Ok((r.to_text(), r.label))
    }

    fn rm_segments(&self, rationale: &str, w: f32) -> Vec<Segment> {
        // The label is the one line between "<answer>\n" and "\n</answer>".
        let suffix = "\n</answer>";
        let spans: Vec<(usize, usize)> = rationale
            .rfind(suffix)
            .and_then(|i| {
                label_span_before_suffix(rationale, i, "A").or_else(|| label_span_before_suffix(rationale, i, "B"))
            })
            .into_iter()
            .collect();
        weighted_spans(rationale, &spans, w)
    }

    fn prover_segments(&self, proof: &str, w: f32) -> Vec<Segment> {
        // The claimed label, and the label restated in the closing line.
        let mut spans = Vec::new();
        let claim = "Claim: Response ";
        if proof.starts_with(claim) && proof.len() > claim.len() {
            spans.push((claim.len(), claim.len() + 1));
        }
        if let Some(i) = proof.rfind("Therefore, Response ") {
            let s = i + "Therefore, Response ".len();
            if s < proof.len() {
                spans.push((s, s + 1));
            }
        }
        weighted_spans(proof, &spans, w)
    }

    fn parse_verdict(&self, output: &str) -> Result<Label, ParseFailure> {
        self.judge.parser.parse(output)
    }

    fn answer_continuation(&self, output: &str) -> Option<String> {
        output.contains(self.judge.answer_marker.as_str()).then(|| self.judge.answer_continuation(output))
    }

    fn label_strings(&self) -> [String; 2] {
        self.judge.label_tokens.clone()
    }

    fn check_proof(&self, _pair: &PreferencePair, proof: &str, target: Label) -> Result<(), RuleRejection> {
        self.filter
            .check(proof, target)
            .map(|_| ())
            .map_err(|r| RuleRejection::new(r.reason(), r.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gramrr_data::proof::Form;

    const Z: &str = "<think>\nFeedback: A is right.\n\nComparision: B is wrong.\n\nConclusion: A.\n</think>\n<answer>\nA\n</answer>";

    fn fmt() -> GramRrFormat {
        GramRrFormat::new(false, RuleFilter { form: Form::Proof, ..RuleFilter::default() })
    }

    fn pair() -> PreferencePair {
        PreferencePair {
            id: "p".into(),
            prompt: gramrr_data::Conversation::Text("q".into()),
            response_a: "a".into(),
            response_b: "b".into(),
            label: Some(Label::A),
            rationale: None,
            metadata: Default::default(),
        }
    }

    #[test]
    fn proof_round_trip_and_rule_check() {
        let f = fmt();
        let proof = f.rationale_to_proof(Z).unwrap();
        assert_eq!(f.proof_to_rationale(&proof).unwrap(), (Z.to_string(), Label::A));
        assert!(f.check_proof(&pair(), &proof, Label::A).is_ok());
        assert_eq!(f.check_proof(&pair(), &proof, Label::B).unwrap_err().reason, "label_mismatch");
    }

    #[test]
    fn segments_weight_only_the_label_and_rejoin_to_the_text() {
        let f = fmt();
        let segs = f.rm_segments(Z, 10.0);
        assert_eq!(segs.iter().map(|s| s.text.as_str()).collect::<String>(), Z);
        let heavy: Vec<&str> = segs.iter().filter(|s| s.weight == 10.0).map(|s| s.text.as_str()).collect();
        assert_eq!(heavy, vec!["A"]);
        let proof = f.rationale_to_proof(Z).unwrap();
        let segs = f.prover_segments(&proof, 10.0);
        assert_eq!(segs.iter().map(|s| s.text.as_str()).collect::<String>(), proof);
        assert_eq!(segs.iter().filter(|s| s.weight == 10.0).count(), 2);
    }

    #[test]
    fn continuation_ends_at_the_answer_prefix() {
        let f = fmt();
        assert_eq!(f.answer_continuation(Z).unwrap(), Z.replace("A\n</answer>", ""));
        assert!(f.answer_continuation("<think>\nno answer").is_none());
        assert_eq!(f.parse_verdict(Z), Ok(Label::A));
    }
}
