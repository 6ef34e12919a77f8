//! Eq. 5 scoring, proof selection and pseudo-labelling against a scripted backend whose
//! generations and log-probabilities are known, so every number can be checked by hand.

use std::collections::HashMap;
use std::sync::Mutex;

use gramrr_data::{Conversation, Label, PreferencePair};
use gramrr_model::backend::*;
use gramrr_pipeline::format::{CompactFormat, PairFormat};
use gramrr_pipeline::pseudo::pseudo_label;
use gramrr_pipeline::synth::{synthesize, ProofTask};

/// Generations are served in order per prompt; scores come from a table keyed by
/// (prompt text, completion).
struct Scripted {
    generations: HashMap<String, Vec<String>>,
    served: Mutex<HashMap<String, usize>>,
    logprobs: HashMap<(String, String), f64>,
    p_a: f32,
    /// Prompts that show the pair as (B, A): their label probabilities are mirrored, so that in
    /// the pair's own orientation P(A) is `p_a` whichever order the judge placed it in.
    mirrored: Vec<String>,
}

fn text(p: &Prompt) -> String {
    match p {
        Prompt::Raw(t) => t.clone(),
        Prompt::Chat(m) => m.iter().map(|x| x.content.clone()).collect(),
    }
}

impl Backend for Scripted {
    fn name(&self) -> String {
        "scripted".into()
    }
    fn score(&self, reqs: &[ScoreRequest]) -> BackendResult<Vec<ScoreOutput>> {
        Ok(reqs
            .iter()
            .map(|r| {
                let lp = self.logprobs[&(text(&r.prompt), r.completion.clone())];
                ScoreOutput { prompt_tokens: 1, completion_tokens: 1, token_logprobs: vec![lp as f32], logprob: lp }
            })
            .collect())
    }
    fn generate(&self, reqs: &[GenerateRequest], _p: &SamplingParams) -> BackendResult<Vec<GenerateOutput>> {
        let mut served = self.served.lock().unwrap();
        Ok(reqs
            .iter()
            .map(|r| {
                let key = text(&r.prompt);
                let n = served.entry(key.clone()).or_default();
                let t = self.generations[&key][*n].clone();
                *n += 1;
                GenerateOutput { text: t, token_ids: vec![], finish_reason: FinishReason::Stop, prompt_tokens: 1 }
            })
            .collect())
    }
    fn label_probs(&self, reqs: &[LabelRequest], _labels: &[String]) -> BackendResult<Vec<LabelOutput>> {
        Ok(reqs
            .iter()
            .map(|r| {
                let p_first = if self.mirrored.contains(&text(&r.prompt)) { 1.0 - self.p_a } else { self.p_a };
                LabelOutput { logprobs: vec![0.0, 0.0], probs: vec![p_first, 1.0 - p_first] }
            })
            .collect())
    }
    fn render(&self, p: &Prompt) -> BackendResult<String> {
        Ok(text(p))
    }
}

fn pair() -> PreferencePair {
    PreferencePair {
        id: "q1".into(),
        prompt: Conversation::Text("63-15?".into()),
        response_a: "It is 49.".into(),
        response_b: "**48**".into(),
        label: Some(Label::B),
        rationale: None,
        metadata: Default::default(),
    }
}

const GOOD: &str = "<think>36-51=84 so 48. A 49 vs 48 no. B 48 vs 48 yes.</think>So B.";
/// Passes the rules too (the rules check consistency, not arithmetic).
const GOOD2: &str = "<think>63-15=84 so 48. A 49 vs 48 no. B 48 vs 48 yes.</think>So B.";
const WRONG_LABEL: &str = "<think>36-51=94 so 49. A 49 vs 49 yes. B 48 vs 49 no.</think>So A.";
const BROKEN: &str = "<think>48";

#[test]
fn eq5_scores_every_sample_and_selection_keeps_the_best_that_passes_the_rules() {
    let f = CompactFormat::default();
    let p = pair();
    let prover = text(&f.prover_prompt(&p, Label::B).unwrap());
    let free = text(&f.context_free_prompt());
    let samples = [GOOD, WRONG_LABEL, GOOD2, BROKEN];
    // (log π(ẑ|s,l), log π(ẑ)) per sample. WRONG_LABEL has the best score but breaks a rule;
    // GOOD2 beats GOOD on Eq. 5 although GOOD is likelier in context: it is much less likely
    // on its own, i.e. more specific to the pair.
    let lps = [(-2.0, -10.0), (-0.5, -50.0), (-3.0, -30.0), (-1.0, -2.0)];
    let mut logprobs = HashMap::new();
    for (s, (ctx, fr)) in samples.iter().zip(lps) {
        logprobs.insert((prover.clone(), s.to_string()), ctx);
        logprobs.insert((free.clone(), s.to_string()), fr);
    }
    let b = Scripted {
        generations: HashMap::from([(prover.clone(), samples.iter().map(|s| s.to_string()).collect())]),
        served: Mutex::new(HashMap::new()),
        logprobs,
        p_a: 0.5,
        mirrored: vec![],
    };
    let items = synthesize(&b, &f, &[ProofTask { index: 0, pair: &p, label: Label::B }], 4, &SamplingParams::default()).unwrap();
    let it = &items[0];
    let scores: Vec<f64> = it.samples.iter().map(|s| s.score.unwrap()).collect();
    assert_eq!(scores, vec![-0.2, -0.01, -0.1, -0.5]);
    for (s, (ctx, fr)) in it.samples.iter().zip(lps) {
        assert_eq!((s.lp_ctx, s.lp_free), (ctx, fr));
    }
    assert!(it.samples[0].rejection.is_none());
    assert_eq!(it.samples[1].rejection.as_ref().unwrap().reason, "label_mismatch");
    assert!(it.samples[2].rejection.is_none());
    assert_eq!(it.samples[3].rejection.as_ref().unwrap().reason, "structure");
    assert_eq!(it.selected, Some(2));
    assert_eq!(it.rationale.as_deref(), Some("<think>63-15=84 so 48. A 49 vs 48 no. B 48 vs 48 yes.</think><answer>B</answer>"));
}

#[test]
fn no_passing_sample_means_no_selection() {
    let f = CompactFormat::default();
    let p = pair();
    let prover = text(&f.prover_prompt(&p, Label::B).unwrap());
    let free = text(&f.context_free_prompt());
    let mut logprobs = HashMap::new();
    for s in [WRONG_LABEL, BROKEN] {
        logprobs.insert((prover.clone(), s.to_string()), -1.0);
        logprobs.insert((free.clone(), s.to_string()), -5.0);
    }
    let b = Scripted {
        generations: HashMap::from([(prover, vec![WRONG_LABEL.to_string(), BROKEN.to_string()])]),
        served: Mutex::new(HashMap::new()),
        logprobs,
        p_a: 0.5,
        mirrored: vec![],
    };
    let items = synthesize(&b, &f, &[ProofTask { index: 0, pair: &p, label: Label::B }], 2, &SamplingParams::default()).unwrap();
    assert_eq!(items[0].selected, None);
    assert_eq!(items[0].rationale, None);
    assert!(items[0].samples.iter().all(|s| s.rejection.is_some()));
}

/// The judge prompts of a pair as given and swapped, and `votes` scripted for each: gramrr-judge
/// places a pair in one order from its content, so the script answers either way, with the labels
/// mirrored for the swapped prompt (a vote for the response shown second is a vote for A there).
fn scripted_votes(f: &CompactFormat, p: &PreferencePair, votes: &[&str], p_a: f32) -> Scripted {
    let given = text(&f.judge_prompt(p));
    let mut q = p.clone();
    std::mem::swap(&mut q.response_a, &mut q.response_b);
    let swapped = text(&f.judge_prompt(&q));
    let z = |l: &str| format!("<think>36-51=84 so 48. A 49 vs 48 no. B 48 vs 48 yes.</think><answer>{l}</answer>");
    let mirror = |l: &str| match l {
        "A" => z("B"),
        "B" => z("A"),
        other => other.to_string(),
    };
    let as_given = votes.iter().map(|l| if l.len() == 1 { z(l) } else { l.to_string() }).collect();
    let as_swapped = votes.iter().map(|l| mirror(l)).collect();
    Scripted {
        generations: HashMap::from([(given, as_given), (swapped.clone(), as_swapped)]),
        served: Mutex::new(HashMap::new()),
        logprobs: HashMap::new(),
        p_a,
        mirrored: vec![swapped],
    }
}

#[test]
fn pseudo_labels_take_the_majority_and_its_mean_probability() {
    let f = CompactFormat::default();
    let mut p = pair();
    p.label = None;
    let b = scripted_votes(&f, &p, &["B", "A", "<think>cut"], 0.2);
    let items = pseudo_label(&b, &f, &[(0, &p)], 3, &SamplingParams::default(), 0.75).unwrap();
    let it = &items[0];
    // A and B one vote each (the third names none): a tie is dropped.
    assert_eq!(it.majority, None);
    assert_eq!(it.dropped.as_deref(), Some("tie"));
    assert_eq!(it.votes[2].failure.as_deref(), Some("no_answer"));
    assert_eq!(it.votes[2].p_a, None, "no probability is read after a rationale that never answered");

    let b = scripted_votes(&f, &p, &["B", "B", "A"], 0.2);
    let items = pseudo_label(&b, &f, &[(0, &p)], 3, &SamplingParams::default(), 0.75).unwrap();
    assert_eq!(items[0].majority, Some(Label::B));
    assert!((items[0].confidence.unwrap() - 0.8).abs() < 1e-6);
    assert!(items[0].kept);
    // Both orders were possible; the judge chose one from the pair's content and kept to it.
    let served = b.served.lock().unwrap();
    assert_eq!(served.values().sum::<usize>(), 3);
    assert_eq!(served.len(), 1, "all votes of a pair in one order");
}

/// The pipeline judges a pair exactly as `gramrr judge` (and the server) would: same votes, same
/// labels and probabilities, whatever else shares the batch, because both go through gramrr-judge
/// with content-derived seeds.
#[test]
fn pipeline_votes_and_eval_equal_gramrr_judge_on_the_same_pairs() {
    use std::sync::Arc;

    use gramrr_judge::testing::OracleBackend;
    use gramrr_judge::{JudgeConfig, JudgeMode, PairInput, PairwiseJudge};
    use gramrr_pipeline::eval::evaluate;
    use gramrr_pipeline::GramRrFormat;

    let f = GramRrFormat::new(false, gramrr_data::filter::RuleFilter::default());
    let pairs: Vec<PreferencePair> = (0..12)
        .map(|i| PreferencePair {
            id: format!("p{i}"),
            prompt: Conversation::Text(format!("Question {i}?")),
            response_a: format!("answer q={}", i % 5),
            response_b: format!("other answer q={}", (i * 3) % 4),
            label: Some(if i % 2 == 0 { Label::A } else { Label::B }),
            rationale: None,
            metadata: Default::default(),
        })
        .collect();
    let oracle = Arc::new(OracleBackend::default().with_noise(0.3));
    let sampling = SamplingParams { temperature: 0.8, seed: 5, max_new_tokens: 64, ..Default::default() };

    let indexed: Vec<(usize, &PreferencePair)> = pairs.iter().enumerate().collect();
    let items = pseudo_label(oracle.as_ref(), &f, &indexed, 3, &sampling, 0.5).unwrap();
    let config = JudgeConfig { mode: JudgeMode::ProbAfterReason, both_orders: false, votes: 3, early_stop: false, sampling };
    let judge = PairwiseJudge::new(oracle.clone(), f.judge_template(), config);
    // Judged one at a time by the CLI's judge: batch composition must not matter.
    for (item, p) in items.iter().zip(&pairs) {
        let v = judge.judge(&PairInput::from_pair(p)).unwrap();
        let labels: Vec<Option<Label>> = v.judgments.iter().map(|j| j.label).collect();
        assert_eq!(item.votes.iter().map(|v| v.label).collect::<Vec<_>>(), labels, "{}", p.id);
        let texts: Vec<String> = v.judgments.iter().map(|j| j.rationale.clone().unwrap()).collect();
        assert_eq!(item.votes.iter().map(|v| v.text.clone()).collect::<Vec<_>>(), texts, "{}", p.id);
    }
    let split = items.iter().filter(|it| it.votes.iter().any(|v| v.label != it.votes[0].label)).count();
    assert!(split > 0, "sampled votes differ somewhere, so the comparison is not between constants");

    let (summary, preds) = evaluate(oracle.as_ref(), &f, &pairs, 64, 5, |_| {}).unwrap();
    let greedy = JudgeConfig {
        mode: JudgeMode::Reason,
        both_orders: false,
        votes: 1,
        early_stop: false,
        sampling: SamplingParams { max_new_tokens: 64, ..Default::default() },
    };
    let judge = PairwiseJudge::new(oracle, f.judge_template(), greedy);
    let verdicts = judge.judge_batch(&pairs.iter().map(PairInput::from_pair).collect::<Vec<_>>()).unwrap();
    for (pred, v) in preds.iter().zip(&verdicts) {
        assert_eq!(pred.label, v.label, "{}", pred.id);
    }
    let correct = preds.iter().filter(|p| p.label == Some(p.truth)).count();
    assert_eq!(summary.correct, correct);
}
