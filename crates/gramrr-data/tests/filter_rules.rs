//! Rule filters applied to prover output converted to rationales, as the pipeline does.

use gramrr_data::filter::{RejectionCounts, RuleFilter};
use gramrr_data::proof::{proof_to_rationale, Form};
use gramrr_data::Label;

#[test]
fn prover_output_for_the_wrong_label_is_counted_as_label_mismatch() {
    let proofs = [
        ("Claim: Response A is better than Response B.\n\nProof.\nFeedback: a\n\nComparision: b\n\nConclusion: c\nTherefore, Response A is better. Q.E.D.", Label::A),
        ("Claim: Response B is better than Response A.\n\nProof.\nFeedback: a\n\nComparision: b\n\nConclusion: c\nTherefore, Response B is better. Q.E.D.", Label::A),
        ("Claim: Response A is better than Response B.\n\nProof.\nFeedback: a", Label::A),
    ];
    let filter = RuleFilter { form: Form::Proof, ..RuleFilter::default() };
    let mut counts = RejectionCounts::default();
    for (proof, target) in proofs {
        let outcome = filter.check(proof, target);
        if outcome.is_ok() {
            // What survives converts to a reward-model target.
            assert!(proof_to_rationale(proof).unwrap().ends_with("<answer>\nA\n</answer>"));
        }
        counts.record(&outcome);
    }
    assert_eq!(counts.kept, 1);
    assert_eq!(counts.rejected.get("label_mismatch"), Some(&1));
    assert_eq!(counts.rejected.get("structure"), Some(&1));
}
