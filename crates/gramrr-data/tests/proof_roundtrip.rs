//! The rationale ⇄ proof transformation is lossless in both directions.

use gramrr_data::proof::{proof_to_rationale, rationale_to_proof, Rationale};
use gramrr_data::verdict::VerdictParser;
use gramrr_data::Label;
use proptest::prelude::*;

/// Section bodies: arbitrary text, biased towards the characters and words that could confuse
/// a parser (headers, tags, labels, newlines).
fn body() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "[ -~]{0,12}",
        "\\PC{0,6}",
        Just("\n".to_string()),
        Just("\n\n".to_string()),
        Just("Feedback:".to_string()),
        Just("Conclusion".to_string()),
        Just("Comparision".to_string()),
        Just("</think>".to_string()),
        Just("<answer>\nB\n</answer>".to_string()),
        Just("Therefore, Response A is better. Q.E.D.".to_string()),
        Just("Claim: Response B".to_string()),
    ];
    proptest::collection::vec(piece, 0..6).prop_map(|v| v.concat())
}

fn label() -> impl Strategy<Value = Label> {
    prop_oneof![Just(Label::A), Just(Label::B)]
}

/// A well-formed rationale: the canonical layout with bodies that do not contain the header
/// that ends them (otherwise the body would end there).
fn rationale() -> impl Strategy<Value = Rationale> {
    (body(), body(), body(), label()).prop_filter_map("bodies must not contain their closing header", |(f, c, k, l)| {
        let f = format!(" {f}\n\n");
        let c = format!(" {c}\n\n");
        let k = format!(" {k}\n");
        if f.contains("Comparision:") || c.contains("Conclusion:") {
            return None;
        }
        Some(Rationale { feedback: f, comparison: c, conclusion: k, label: l })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn rationale_to_proof_to_rationale_is_identity(r in rationale()) {
        let z = r.to_text();
        let proof = rationale_to_proof(&z).unwrap();
        prop_assert_eq!(proof_to_rationale(&proof).unwrap(), z.clone());
        prop_assert_eq!(Rationale::parse(&z).unwrap(), r.clone());
        // The proof argues for the rationale's own label.
        let claim = format!("Claim: Response {} is better", r.label.as_str());
        prop_assert!(proof.starts_with(&claim));
        // And the rationale still parses to that label as a verdict.
        prop_assert_eq!(VerdictParser::gram_rr().parse(&z).unwrap(), r.label);
    }

    #[test]
    fn proof_to_rationale_to_proof_is_identity(r in rationale()) {
        let proof = r.to_proof_text();
        let z = proof_to_rationale(&proof).unwrap();
        prop_assert_eq!(rationale_to_proof(&z).unwrap(), proof);
    }

    /// Any text that parses at all round-trips exactly, even with odd bodies (headers inside
    /// later sections, empty sections, no spaces).
    #[test]
    fn every_parseable_rationale_round_trips(f in body(), c in body(), k in body(), l in label()) {
        let z = format!("<think>\nFeedback:{f}Comparision:{c}Conclusion:{k}</think>\n<answer>\n{}\n</answer>", l.as_str());
        if let Ok(r) = Rationale::parse(&z) {
            prop_assert_eq!(r.to_text(), z.clone());
            prop_assert_eq!(proof_to_rationale(&r.to_proof_text()).unwrap(), z);
        }
    }

    #[test]
    fn every_parseable_proof_round_trips(f in body(), c in body(), k in body(), l in label()) {
        let p = format!(
            "Claim: Response {l} is better than Response {o}.\n\nProof.\nFeedback:{f}Comparision:{c}Conclusion:{k}Therefore, Response {l} is better. Q.E.D.",
            l = l.as_str(), o = l.flipped().as_str()
        );
        if let Ok(r) = Rationale::parse_proof(&p) {
            prop_assert_eq!(r.to_proof_text(), p.clone());
            prop_assert_eq!(rationale_to_proof(&r.to_text()).unwrap(), p);
        }
    }
}

#[test]
fn method_md_output_layout_round_trips() {
    // The template's own format has the headers alone on their lines.
    let z = "<think>\nFeedback:\nB misses the point.\n\nComparision:\nA answers it.\n\nConclusion:\nA.\n</think>\n<answer>\nA\n</answer>";
    let proof = rationale_to_proof(z).unwrap();
    assert_eq!(proof_to_rationale(&proof).unwrap(), z);
}
