//! The demo's compact format: GRAM-R²'s structure in a few dozen characters, for a tiny
//! character-level model.
//!
//! ```text
//! judge prompt   A: It is 49.\nB: **48**\nQ: 63-15?␠
//! rationale z    <think>36-51=84 so 48. A 49 vs 48 no. B 48 vs 48 yes.</think><answer>B</answer>
//! prover prompt  A: It is 49.\nB: **48**\nClaim B.\nQ: 63-15?␠
//! proof ẑ        <think>36-51=84 so 48. A 49 vs 48 no. B 48 vs 48 yes.</think>So B.
//! ```
//!
//! The question comes last in both prompts, so the worked steps follow it exactly as in the
//! backbone's pretraining text (demo-notes #2). The rationale reasons and then states the label
//! inside `<answer>…</answer>`. The proof argues for a claim stated up front — the given label,
//! which in this format is the line before the question rather than the proof's first words: a
//! tiny model reads the operands at a fixed distance before the work, and a claim between the
//! question and the work costs it its arithmetic — and closes by restating it. Both carry the
//! same body, so each maps to the other and back unchanged.
//!
//! The body is `WORK so RESULT. A QUOTE vs RESULT VERDICT. B QUOTE vs RESULT VERDICT.` with
//! VERDICT `yes` or `no`: the reasoning, the result it reaches, and each response's answer set
//! beside the result and judged. Restating the result next to each quote puts the two numbers a
//! few characters apart, so the verdict is a comparison of neighbours: with the result only at
//! the end of the work, the demo's reward models quoted both answers right but put `yes` on the
//! wrong one about as often as on the right one. Rule checks
//! use only the pair and the proof, never an answer key: the structure, the length, the label,
//! whether each quote is what its response says, whether the verdict words support the label,
//! whether the quote judged `yes` is the stated result (and the `no` one is not), and, when the
//! work ends in `=VALUE`, whether VALUE read in reverse is the result (the demo writes worked
//! steps in reversed digits, demo-notes #3/#4).

use gramrr_data::prompt::JudgeTemplate;
use gramrr_data::verdict::{ParseFailure, VerdictParser};
use gramrr_data::{Label, PreferencePair};
use gramrr_model::backend::Prompt;
use gramrr_train::Segment;

use super::{weighted_spans, FormatError, PairFormat, RuleRejection};

pub const THINK: &str = "<think>";
pub const THINK_END: &str = "</think>";
pub const ANSWER: &str = "<answer>";
pub const ANSWER_END: &str = "</answer>";
/// The tags the demo's tokenizer keeps as single tokens.
pub const TAGS: [&str; 4] = [THINK, THINK_END, ANSWER, ANSWER_END];

#[derive(Debug, Clone, PartialEq)]
pub struct CompactFormat {
    /// The raw prompt log π_ψ(ẑ) is conditioned on in Eq. 5.
    pub context_free: String,
    pub max_chars: Option<usize>,
    pub max_words: Option<usize>,
}

impl Default for CompactFormat {
    fn default() -> Self {
        Self { context_free: "\n".into(), max_chars: Some(160), max_words: None }
    }
}

/// A parsed body, with byte offsets of the verdict words relative to the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body {
    pub work: String,
    pub result: String,
    /// (quote, verdict is "yes", byte span of the verdict word) for A, then B.
    pub judged: [(String, bool, (usize, usize)); 2],
    /// The result as restated beside each quote (A, then B).
    pub restated: [String; 2],
}

/// The prover prompt's claim (`Claim B.\n`). The demo's pretraining text carries the same line,
/// so the backbone has worked sums after one before the prover is trained.
pub fn claim_line(label: Label) -> String {
    format!("Claim {}.\n", label.as_str())
}

fn label_of(s: &str) -> Option<Label> {
    match s {
        "A" => Some(Label::A),
        "B" => Some(Label::B),
        _ => None,
    }
}

/// `QUOTE vs RESULT VERDICT` → (quote, restated result, yes?, offset of the verdict in `s`).
fn judged(s: &str) -> Result<(String, String, bool, usize), String> {
    let sp = s.rfind(' ').ok_or_else(|| format!("{s:?}: expected \"QUOTE vs RESULT yes\" or \"… no\""))?;
    let (compared, verdict) = (&s[..sp], &s[sp + 1..]);
    let yes = match verdict {
        "yes" => true,
        "no" => false,
        v => return Err(format!("verdict {v:?} is neither \"yes\" nor \"no\"")),
    };
    let vs = compared.rfind(" vs ").ok_or_else(|| format!("{compared:?}: expected \"QUOTE vs RESULT\""))?;
    let (quote, restated) = (&compared[..vs], &compared[vs + 4..]);
    if quote.is_empty() {
        return Err("empty quote".into());
    }
    Ok((quote.to_string(), restated.to_string(), yes, sp + 1))
}

/// Parses `WORK so RESULT. A QUOTE vs RESULT VERDICT. B QUOTE vs RESULT VERDICT.`
pub fn parse_body(body: &str) -> Result<Body, String> {
    let b_at = body.rfind(". B ").ok_or("no \". B \" judgment")?;
    let b_part = body[b_at + 4..].strip_suffix('.').ok_or("the body does not end with \".\"")?;
    let head = &body[..b_at];
    let a_at = head.rfind(". A ").ok_or("no \". A \" judgment")?;
    let a_part = &head[a_at + 4..];
    let reasoning = &head[..a_at];
    let so = reasoning.rfind(" so ").ok_or("no \" so RESULT\" before the judgments")?;
    let (work, result) = (&reasoning[..so], &reasoning[so + 4..]);
    if result.is_empty() {
        return Err("empty result".into());
    }
    let (qa, ra, ya, oa) = judged(a_part)?;
    let (qb, rb, yb, ob) = judged(b_part)?;
    let (sa, sb) = (a_at + 4 + oa, b_at + 4 + ob);
    let word = |yes: bool| if yes { 3 } else { 2 };
    Ok(Body {
        work: work.to_string(),
        result: result.to_string(),
        judged: [(qa, ya, (sa, sa + word(ya))), (qb, yb, (sb, sb + word(yb)))],
        restated: [ra, rb],
    })
}

/// `<think>BODY</think><answer>L</answer>` → (body, label).
fn split_rationale(text: &str) -> Result<(&str, Label), FormatError> {
    let rest = text.strip_prefix(THINK).ok_or_else(|| FormatError(format!("rationale does not start with {THINK}")))?;
    let end = rest.rfind(THINK_END).ok_or_else(|| FormatError(format!("rationale has no {THINK_END}")))?;
    let tail = &rest[end + THINK_END.len()..];
    let label = tail
        .strip_prefix(ANSWER)
        .and_then(|t| t.strip_suffix(ANSWER_END))
        .and_then(label_of)
        .ok_or_else(|| FormatError(format!("rationale does not end with {ANSWER}A{ANSWER_END} or B")))?;
    Ok((&rest[..end], label))
}

/// `<think>BODY</think>So L.` → (body, the label it concludes).
fn split_proof(text: &str) -> Result<(&str, Label), String> {
    let rest = text.strip_prefix(THINK).ok_or("does not start with <think>")?;
    let end = rest.rfind(THINK_END).ok_or("no </think>")?;
    let closing = rest[end + THINK_END.len()..]
        .strip_prefix("So ")
        .and_then(|t| t.strip_suffix('.'))
        .and_then(label_of)
        .ok_or("does not end with \"So A.\" or \"So B.\"")?;
    Ok((&rest[..end], closing))
}

/// `needle` occurs in `hay` with no letter or digit glued to either end.
fn contains_token(hay: &str, needle: &str) -> bool {
    let glued = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    hay.match_indices(needle).any(|(i, _)| !glued(hay[..i].chars().next_back()) && !glued(hay[i + needle.len()..].chars().next()))
}

impl PairFormat for CompactFormat {
    fn name(&self) -> &'static str {
        "compact"
    }

    /// The `compact` judge preset, so `gramrr judge/eval/serve --template compact` ask a demo
    /// model exactly what it was trained on.
    fn judge_template(&self) -> JudgeTemplate {
        JudgeTemplate::compact()
    }

    fn judge_prompt(&self, pair: &PreferencePair) -> Prompt {
        JudgeTemplate::compact().to_prompt(&pair.prompt.as_text(), &pair.response_a, &pair.response_b)
    }

    fn prover_prompt(&self, pair: &PreferencePair, label: Label) -> Result<Prompt, FormatError> {
        if label == Label::Tie {
            return Err(FormatError("a proof needs label A or B, not a tie".into()));
        }
        Ok(Prompt::Raw(format!("A: {}\nB: {}\n{}Q: {} ", pair.response_a, pair.response_b, claim_line(label), pair.prompt.as_text())))
    }

    fn context_free_prompt(&self) -> Prompt {
        Prompt::Raw(self.context_free.clone())
    }

    fn canonical_rationale(&self, rationale: &str) -> Result<(String, Label), FormatError> {
        let t = rationale.trim();
        let (_, label) = split_rationale(t)?;
        Ok((t.to_string(), label))
    }

    fn rationale_to_proof(&self, rationale: &str) -> Result<String, FormatError> {
        let (body, l) = split_rationale(rationale)?;
        Ok(format!("{THINK}{body}{THINK_END}So {}.", l.as_str()))
    }

    fn proof_to_rationale(&self, proof: &str) -> Result<(String, Label), FormatError> {
        let (body, closing) = split_proof(proof).map_err(|e| FormatError(format!("proof {e}")))?;
        Ok((format!("{THINK}{body}{THINK_END}{ANSWER}{}{ANSWER_END}", closing.as_str()), closing))
    }

    fn rm_segments(&self, rationale: &str, w: f32) -> Vec<Segment> {
        let mut spans = Vec::new();
        if let Ok((body, _)) = split_rationale(rationale) {
            if let Ok(b) = parse_body(body) {
                spans.extend(b.judged.iter().map(|(_, _, (s, e))| (s + THINK.len(), e + THINK.len())));
            }
            let l = rationale.len() - ANSWER_END.len() - 1;
            spans.push((l, l + 1));
        }
        weighted_spans(rationale, &spans, w)
    }

    fn prover_segments(&self, proof: &str, w: f32) -> Vec<Segment> {
        let mut spans = Vec::new();
        if let Ok((body, _)) = split_proof(proof) {
            let off = THINK.len();
            if let Ok(b) = parse_body(body) {
                spans.extend(b.judged.iter().map(|(_, _, (s, e))| (s + off, e + off)));
            }
        }
        weighted_spans(proof, &spans, w)
    }

    fn parse_verdict(&self, output: &str) -> Result<Label, ParseFailure> {
        VerdictParser::gram_rr().parse(output)
    }

    fn answer_continuation(&self, output: &str) -> Option<String> {
        output.rfind(ANSWER).map(|i| format!("{}{ANSWER}", &output[..i]))
    }

    fn label_strings(&self) -> [String; 2] {
        ["A".into(), "B".into()]
    }

    fn check_proof(&self, pair: &PreferencePair, proof: &str, target: Label) -> Result<(), RuleRejection> {
        if let Some(limit) = self.max_chars {
            let n = proof.chars().count();
            if n > limit {
                return Err(RuleRejection::new("too_long", format!("{n} chars > {limit}")));
            }
        }
        if let Some(limit) = self.max_words {
            let n = proof.split_whitespace().count();
            if n > limit {
                return Err(RuleRejection::new("too_long", format!("{n} words > {limit}")));
            }
        }
        let (body, closing) = split_proof(proof).map_err(|e| RuleRejection::new("structure", e))?;
        let b = parse_body(body).map_err(|e| RuleRejection::new("structure", e))?;
        if closing != target {
            return Err(RuleRejection::new("label_mismatch", format!("concludes {closing:?}, the claim is {target:?}")));
        }
        // A judgment must be about what the response says: each quote appears in its response
        // (as a whole token, so "4" is not found in "48").
        for ((quote, _, _), (name, response)) in b.judged.iter().zip([("A", &pair.response_a), ("B", &pair.response_b)]) {
            if !contains_token(response, quote) {
                return Err(RuleRejection::new("misquote", format!("quotes {name} as {quote:?}, but {name} says {response:?}")));
            }
        }
        let (win, lose) = match target {
            Label::A => (&b.judged[0], &b.judged[1]),
            _ => (&b.judged[1], &b.judged[0]),
        };
        if !win.1 || lose.1 {
            return Err(RuleRejection::new(
                "unsupported",
                format!("the verdicts do not say {} yes and {} no", target.as_str(), target.flipped().as_str()),
            ));
        }
        if let Some(r) = b.restated.iter().find(|r| **r != b.result) {
            return Err(RuleRejection::new(
                "inconsistent",
                format!("result {:?}, but a judgment compares with {r:?}", b.result),
            ));
        }
        if win.0 != b.result || lose.0 == b.result {
            return Err(RuleRejection::new(
                "inconsistent",
                format!("result {:?}, but the winner quotes {:?} and the loser {:?}", b.result, win.0, lose.0),
            ));
        }
        // Worked steps are written in reversed digits: their last value, read backwards, must be
        // the stated result.
        if let Some(eq) = b.work.rfind('=') {
            let worked: String = b.work[eq + 1..].chars().rev().collect();
            if worked != b.result {
                return Err(RuleRejection::new(
                    "inconsistent",
                    format!("the work ends in {:?}, which reversed is not the result {:?}", &b.work[eq + 1..], b.result),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Z: &str = "<think>36-51=84 so 48. A 49 vs 48 no. B 48 vs 48 yes.</think><answer>B</answer>";
    const P: &str = "<think>36-51=84 so 48. A 49 vs 48 no. B 48 vs 48 yes.</think>So B.";

    fn pair() -> PreferencePair {
        PreferencePair {
            id: "p".into(),
            prompt: gramrr_data::Conversation::Text("63-15?".into()),
            response_a: "It is 49.".into(),
            response_b: "**48**".into(),
            label: Some(Label::B),
            rationale: Some(Z.into()),
            metadata: Default::default(),
        }
    }

    #[test]
    fn prompts_put_the_question_last() {
        let f = CompactFormat::default();
        assert_eq!(f.judge_prompt(&pair()), Prompt::Raw("A: It is 49.\nB: **48**\nQ: 63-15? ".into()));
        assert_eq!(f.prover_prompt(&pair(), Label::B).unwrap(), Prompt::Raw("A: It is 49.\nB: **48**\nClaim B.\nQ: 63-15? ".into()));
    }

    #[test]
    fn rationale_and_proof_convert_both_ways() {
        let f = CompactFormat::default();
        assert_eq!(f.rationale_to_proof(Z).unwrap(), P);
        assert_eq!(f.proof_to_rationale(P).unwrap(), (Z.to_string(), Label::B));
        assert!(f.proof_to_rationale("<think>x</think>So C.").is_err());
    }

    #[test]
    fn decision_tokens_are_weighted() {
        let f = CompactFormat::default();
        let segs = f.rm_segments(Z, 10.0);
        assert_eq!(segs.iter().map(|s| s.text.as_str()).collect::<String>(), Z);
        let heavy: Vec<&str> = segs.iter().filter(|s| s.weight == 10.0).map(|s| s.text.as_str()).collect();
        assert_eq!(heavy, vec!["no", "yes", "B"]);
        let segs = f.prover_segments(P, 10.0);
        assert_eq!(segs.iter().map(|s| s.text.as_str()).collect::<String>(), P);
        let heavy: Vec<&str> = segs.iter().filter(|s| s.weight == 10.0).map(|s| s.text.as_str()).collect();
        assert_eq!(heavy, vec!["no", "yes"]);
    }

    #[test]
    fn each_rule_rejects_with_its_reason() {
        let f = CompactFormat::default();
        let p = pair();
        assert!(f.check_proof(&p, P, Label::B).is_ok());
        let reason = |t: &str, l: Label| f.check_proof(&p, t, l).unwrap_err().reason;
        assert_eq!(reason(P, Label::A), "label_mismatch");
        assert_eq!(reason("<think>so</think>So B.", Label::B), "structure");
        assert_eq!(reason(&P.replace("So B.", "So A."), Label::B), "label_mismatch");
        assert_eq!(reason(&P.replace("B 48 vs 48 yes", "B 48 vs 48 no"), Label::B), "unsupported");
        assert_eq!(reason(&P.replace("so 48", "so 49"), Label::B), "inconsistent");
        // The result restated beside a quote must be the result.
        assert_eq!(reason(&P.replace("A 49 vs 48", "A 49 vs 47"), Label::B), "inconsistent");
        assert_eq!(reason(&P.replace("A 49 vs 48", "A 49 48"), Label::B), "structure");
        assert_eq!(reason(&P.replace("=84", "=94"), Label::B), "inconsistent");
        assert_eq!(reason(&P.replace("A 49", "A 4"), Label::B), "misquote");
        assert_eq!(
            reason(&P.replace("B 48 vs 48 yes", "B 47 vs 47 yes").replace("so 48", "so 47").replace("vs 48", "vs 47").replace("=84", "=74"), Label::B),
            "misquote"
        );
        let long = CompactFormat { max_chars: Some(20), ..CompactFormat::default() };
        assert_eq!(long.check_proof(&p, P, Label::B).unwrap_err().reason, "too_long");
    }

    #[test]
    fn continuation_and_verdict() {
        let f = CompactFormat::default();
        assert_eq!(f.answer_continuation(Z).unwrap(), "<think>36-51=84 so 48. A 49 vs 48 no. B 48 vs 48 yes.</think><answer>");
        assert_eq!(f.parse_verdict(Z), Ok(Label::B));
        assert_eq!(f.parse_verdict("<think>x").unwrap_err().kind(), "no_answer");
    }
}
