//! The pairwise-judge source, with stand-in judges: position shuffling, JudgeBench's double
//! game, PPE's running champion, and resuming a killed run from the per-item file.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use gramrr_data::{CandidateList, Conversation, Label, PreferencePair};
use gramrr_eval::{
    eval_judgebench, eval_pairwise, eval_ppe, EvalConfig, EvalError, Mode, PairBench, PairDecision, PairJudge,
    ResponseScorer, ScoreQuery, Source,
};
use serde_json::{Map, Value};

/// What a judge was asked, readable by the test after the judge moved into a `Source`.
#[derive(Default)]
struct Log {
    calls: Cell<usize>,
    pairs: Cell<usize>,
    seen: RefCell<Vec<PreferencePair>>,
}

/// Prefers the response that starts with "good": right whatever the order it is shown in.
struct ContentJudge {
    log: Rc<Log>,
    /// Fail (as a crash would) on this call.
    fail_on_call: Option<usize>,
}

impl ContentJudge {
    fn new() -> Self {
        ContentJudge { log: Rc::new(Log::default()), fail_on_call: None }
    }
}

impl PairJudge for ContentJudge {
    fn name(&self) -> String {
        "content-judge".into()
    }
    fn judge(&self, pairs: &[PreferencePair]) -> Result<Vec<PairDecision>, EvalError> {
        let log = &self.log;
        log.calls.set(log.calls.get() + 1);
        if Some(log.calls.get()) == self.fail_on_call {
            return Err(EvalError::Source { source_name: self.name(), message: "killed".into() });
        }
        log.pairs.set(log.pairs.get() + pairs.len());
        log.seen.borrow_mut().extend(pairs.iter().cloned());
        Ok(pairs
            .iter()
            .map(|p| {
                let (a, b) = (p.response_a.starts_with("good"), p.response_b.starts_with("good"));
                let decision = match (a, b) {
                    (true, false) => Some(Label::A),
                    (false, true) => Some(Label::B),
                    _ => Some(Label::Tie),
                };
                PairDecision { decision, p_a: Some(if a { 0.9 } else { 0.1 }), rationale: Some("looked at it".into()), ..Default::default() }
            })
            .collect())
    }
}

/// Always prefers the first response shown.
struct FirstJudge;
impl PairJudge for FirstJudge {
    fn name(&self) -> String {
        "first".into()
    }
    fn judge(&self, pairs: &[PreferencePair]) -> Result<Vec<PairDecision>, EvalError> {
        Ok(pairs.iter().map(|_| PairDecision { decision: Some(Label::A), ..Default::default() }).collect())
    }
}

fn pairs(n: usize) -> Vec<PreferencePair> {
    (0..n)
        .map(|i| {
            let mut metadata = Map::new();
            metadata.insert("llmbar_set".into(), Value::from(if i % 2 == 0 { "Natural" } else { "Adversarial/Manual" }));
            // The better response is output_1 for some pairs and output_2 for others.
            let (a, b, label) = if i % 3 == 0 {
                (format!("bad {i}"), format!("good {i}"), Label::B)
            } else {
                (format!("good {i}"), format!("bad {i}"), Label::A)
            };
            PreferencePair {
                id: format!("item/{i}"),
                prompt: Conversation::Text(format!("question {i}")),
                response_a: a,
                response_b: b,
                label: Some(label),
                rationale: None,
                metadata,
            }
        })
        .collect()
}

fn cfg() -> EvalConfig {
    EvalConfig { bootstrap: 100, batch: 16, ..Default::default() }
}

#[test]
fn a_judge_sees_pairs_in_seeded_random_order_without_labels_and_decisions_are_flipped_back() {
    let data = pairs(200);
    let judge = ContentJudge::new();
    let src = Source::Judge(Box::new(judge));
    let r = eval_pairwise(PairBench::LlmBar, &data, &src, &cfg()).unwrap();
    assert_eq!(r.get("accuracy"), Some(100.0));
    let swapped = r.outcomes.iter().filter(|o| o.decisions[0].d.swapped).count();
    assert!((70..130).contains(&swapped), "{swapped} of 200 shown swapped");
    // Flipped back: the decision and p_a describe the comparison (better response first).
    assert!(r.outcomes.iter().all(|o| o.decisions[0].d.decision == Some(Label::A) && o.decisions[0].d.p_a == Some(0.9)));

    // A judge that always picks the first shown is at chance, not at 100%.
    let first = eval_pairwise(PairBench::LlmBar, &data, &Source::Judge(Box::new(FirstJudge)), &cfg()).unwrap();
    let acc = first.get("accuracy").unwrap();
    assert!((35.0..65.0).contains(&acc), "{acc}");
}

#[test]
fn judges_never_see_the_label() {
    let data = pairs(20);
    let judge = ContentJudge::new();
    let log = judge.log.clone();
    eval_pairwise(PairBench::HhRlhf, &data, &Source::Judge(Box::new(judge)), &cfg()).unwrap();
    let seen = log.seen.borrow();
    assert_eq!(seen.len(), 20);
    assert!(seen.iter().all(|p| p.label.is_none() && p.metadata.contains_key("item_id")));
}

#[test]
fn judgebench_double_game_shows_both_orders_and_cancels_a_position_bias() {
    let mut data = pairs(30);
    for p in &mut data {
        p.metadata.insert("source".into(), "livebench-math".into());
    }
    let first = eval_judgebench(&data, &Source::Judge(Box::new(FirstJudge)), Mode::Double, &cfg()).unwrap();
    // "A" then "A" again on the swapped order, flipped back to "B": +1 − 1 = 0, never correct.
    assert_eq!(first.get("overall"), Some(0.0));
    assert_eq!(first.metrics["ties"], 30);
    let single = eval_judgebench(&data, &Source::Judge(Box::new(FirstJudge)), Mode::Single, &cfg()).unwrap();
    // Single game, no shuffling in JudgeBench: right exactly when the label is A (i % 3 != 0).
    assert_eq!(single.get("overall"), Some(66.67));
    let content = eval_judgebench(&data, &Source::Judge(Box::new(ContentJudge::new())), Mode::Double, &cfg()).unwrap();
    assert_eq!(content.get("overall"), Some(100.0));
    assert_eq!(content.get("categories.math"), Some(100.0));
    let d = &content.outcomes[0].decisions;
    assert_eq!((d[0].a.as_str(), d[0].b.as_str(), d[1].a.as_str(), d[1].b.as_str()), ("A", "B", "B", "A"));
}

#[test]
fn resume_after_kill_matches_uninterrupted_run() {
    let data = pairs(100);
    let dir = tempfile::tempdir().unwrap();
    let out = EvalConfig { out: Some(dir.path().to_path_buf()), batch: 10, ..cfg() };

    let whole = eval_pairwise(PairBench::LlmBar, &data, &Source::Judge(Box::new(ContentJudge::new())), &cfg()).unwrap();

    let mut dying = ContentJudge::new();
    dying.fail_on_call = Some(4);
    let err = eval_pairwise(PairBench::LlmBar, &data, &Source::Judge(Box::new(dying)), &out).unwrap_err();
    assert!(err.to_string().contains("killed"));
    let items = dir.path().join("items.jsonl");
    assert_eq!(std::fs::read_to_string(&items).unwrap().lines().count(), 30, "three chunks were on disk");
    // A kill in the middle of writing leaves half a line.
    let mut f = std::fs::OpenOptions::new().append(true).open(&items).unwrap();
    std::io::Write::write_all(&mut f, b"{\"id\": \"item/30\", \"deci").unwrap();
    drop(f);

    let judge = ContentJudge::new();
    let log = judge.log.clone();
    let resumed =
        eval_pairwise(PairBench::LlmBar, &data, &Source::Judge(Box::new(judge)), &EvalConfig { resume: true, ..out.clone() })
            .unwrap();
    // Only the 70 items not on disk were asked, the half-written one among them.
    assert_eq!(log.pairs.get(), 70);
    assert_eq!(resumed.metrics["subsets"], whole.metrics["subsets"]);
    assert_eq!(resumed.metrics["ci95"], whole.metrics["ci95"]);
    assert_eq!(resumed.outcomes, whole.outcomes);
    let text = std::fs::read_to_string(&items).unwrap();
    assert_eq!(text.lines().count(), 100);
    assert!(text.lines().all(|l| serde_json::from_str::<Value>(l).is_ok()));
    assert!(dir.path().join("metrics.json").exists() && dir.path().join("report.md").exists());

    // Another source may not continue this run.
    let err = eval_pairwise(
        PairBench::LlmBar,
        &data,
        &Source::Judge(Box::new(FirstJudge)),
        &EvalConfig { resume: true, ..out },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("the earlier run had source = \"content-judge\""), "{err}");
}

#[test]
fn resume_asks_the_judge_only_for_the_items_left() {
    let data = pairs(50);
    let dir = tempfile::tempdir().unwrap();
    let out = EvalConfig { out: Some(dir.path().to_path_buf()), batch: 10, ..cfg() };
    let mut dying = ContentJudge::new();
    dying.fail_on_call = Some(3);
    assert!(eval_pairwise(PairBench::LlmBar, &data, &Source::Judge(Box::new(dying)), &out).is_err());

    let judge = ContentJudge::new();
    let log = judge.log.clone();
    let r = eval_pairwise(PairBench::LlmBar, &data, &Source::Judge(Box::new(judge)), &EvalConfig { resume: true, ..out })
        .unwrap();
    assert_eq!(log.pairs.get(), 30);
    assert_eq!(r.get("accuracy"), Some(100.0));
}

/// Scores a response by the number after "score " in it.
struct Embedded;
impl ResponseScorer for Embedded {
    fn name(&self) -> String {
        "embedded".into()
    }
    fn score(&self, q: &[ScoreQuery<'_>]) -> Result<Vec<f64>, EvalError> {
        Ok(q.iter().map(|q| q.response.rsplit(' ').next().unwrap().parse().unwrap()).collect())
    }
}

fn ppe_lists() -> Vec<CandidateList> {
    // 8 samples per item; sample i is correct when (i + item) % 4 == 0; scores favour correct
    // samples only in even items.
    (0..40)
        .map(|item| {
            let correct: Vec<bool> = (0..8).map(|i| (i + item) % 4 == 0).collect();
            let responses = correct
                .iter()
                .enumerate()
                .map(|(i, &c)| {
                    let good = if c { "good" } else { "bad" };
                    let score = if item % 2 == 0 { c as u8 as f64 * 10.0 + i as f64 } else { i as f64 };
                    format!("{good} sample {i} score {score}")
                })
                .collect();
            let mut metadata = Map::new();
            metadata.insert("category".into(), "math".into());
            CandidateList {
                id: format!("q{item}/model"),
                prompt: Conversation::Text(format!("problem {item}")),
                responses,
                correct: Some(correct),
                scores: None,
                best: None,
                metadata,
            }
        })
        .collect()
}

#[test]
fn ppe_curve_from_scores_is_the_top_scored_sample_among_the_first_k() {
    let lists = ppe_lists();
    let dir = tempfile::tempdir().unwrap();
    let r = eval_ppe(&lists, &Source::Scalar(Box::new(Embedded)), &EvalConfig { out: Some(dir.path().into()), ..cfg() })
        .unwrap();
    // Independent count: the argmax of the first K scores (earliest on ties).
    for k in 1..=8usize {
        let hits = lists
            .iter()
            .filter(|c| {
                let s: Vec<f64> = c.responses[..k].iter().map(|t| t.rsplit(' ').next().unwrap().parse().unwrap()).collect();
                let best = (0..k).fold(0, |b, i| if s[i] > s[b] { i } else { b });
                c.correct.as_ref().unwrap()[best]
            })
            .count();
        assert_eq!(r.get(&format!("best_of_k.{k}")), Some((10000.0 * hits as f64 / 40.0).round() / 100.0), "K={k}");
    }
    assert_eq!(r.get("best_of_k.1"), Some(25.0));
    assert_eq!(r.get("oracle.4"), Some(100.0));
    assert_eq!(r.get("random"), Some(25.0));
    assert_eq!(r.metrics["k_max"], 8);

    let png = dir.path().join("best_of_k.png");
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let (w, h) = (u32::from_be_bytes(bytes[16..20].try_into().unwrap()), u32::from_be_bytes(bytes[20..24].try_into().unwrap()));
    assert_eq!((w, h), (900, 560));
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(md.contains("| 8 | "), "{md}");
}

#[test]
fn ppe_with_a_judge_picks_a_running_champion_that_reaches_the_oracle_for_a_perfect_judge() {
    let lists = ppe_lists();
    let r = eval_ppe(&lists, &Source::Judge(Box::new(ContentJudge::new())), &cfg()).unwrap();
    for k in 1..=8 {
        assert_eq!(r.get(&format!("best_of_k.{k}")), r.get(&format!("oracle.{k}")), "K={k}");
    }
    // K−1 comparisons per item, and the picks grow one per K.
    assert!(r.outcomes.iter().all(|o| o.decisions.len() == 7 && o.picks.as_ref().unwrap().len() == 8));
}

#[test]
fn ppe_needs_per_response_correctness() {
    let mut lists = ppe_lists();
    lists[3].correct = None;
    let err = eval_ppe(&lists, &Source::Scalar(Box::new(Embedded)), &cfg()).unwrap_err().to_string();
    assert!(err.contains("ppe: item \"q3/model\" has no per-response correctness"), "{err}");
}
