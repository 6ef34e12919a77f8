//! Verdict parsing never invents a label.

use gramrr_data::verdict::{ParseFailure, VerdictParser};
use gramrr_data::Label;
use proptest::prelude::*;

#[test]
fn the_reference_snippet_bug_is_not_reproduced() {
    // Splitting on "</answer>" and reading what follows made every well-formed answer B.
    let p = VerdictParser::gram_rr();
    for (text, want) in [
        ("<think>\nFeedback: x\n\nComparision: y\n\nConclusion: z\n</think>\n<answer>\nA\n</answer>", Label::A),
        ("<think>\nFeedback: x\n\nComparision: y\n\nConclusion: z\n</think>\n<answer>\nB\n</answer>", Label::B),
    ] {
        assert_eq!(p.parse(text), Ok(want));
    }
}

proptest! {
    /// Whatever the surrounding text, an output that ends with a well-formed answer parses to
    /// that answer, and a text with no answer tag is a NoAnswer failure, never a label.
    #[test]
    fn last_answer_wins(prefix in "[ -~\n]{0,80}", a in prop_oneof![Just(Label::A), Just(Label::B)]) {
        let p = VerdictParser::gram_rr();
        let text = format!("{prefix}<answer>\n{}\n</answer>", a.as_str());
        prop_assert_eq!(p.parse(&text), Ok(a));
        if !prefix.contains("<answer>") {
            let is_no_answer = matches!(p.parse(&prefix), Err(ParseFailure::NoAnswer { .. }));
            prop_assert!(is_no_answer);
        }
    }
}
