//! JudgeBench's published judge outputs, re-scored: the reward-model files must give the
//! leaderboard numbers, and the LLM-judge files exercise ties (A=B) and missing verdicts.

mod common;

use std::path::{Path, PathBuf};

use gramrr_data::formats::{self, ReadOptions};
use gramrr_eval::{eval_judgebench, eval_judgebench_outputs, EvalConfig, Mode, ScoresFile, Source};
use serde_json::Value;

use common::Root;

fn roots() -> Vec<Root> {
    common::roots("judgebench_regression")
}

fn full() -> Option<Root> {
    roots().into_iter().find(|r| r.full)
}

fn output_file(root: &Root, judge: &str) -> PathBuf {
    let dir = root.dir.join("judgebench/outputs");
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_str().unwrap().contains(judge))
        .unwrap_or_else(|| panic!("no output file for {judge}"))
}

fn quiet() -> EvalConfig {
    EvalConfig { bootstrap: 200, ..Default::default() }
}

#[test]
fn skywork_llama_8b_single_game_gives_the_leaderboard_numbers() {
    let Some(root) = full() else { return };
    let outputs =
        formats::load_judgebench_outputs(&[output_file(&root, "Skywork-Reward-Llama-3.1-8B")], &ReadOptions::default())
            .unwrap()
            .records;
    let r = eval_judgebench_outputs(&outputs, Some(Mode::Single), &quiet()).unwrap();
    assert_eq!(r.metrics["benchmark"], "judgebench");
    assert_eq!(r.metrics["mode"], "single");
    assert_eq!(r.metrics["n"], 350);
    // 218 of 350; the leaderboard prints 62.3.
    assert_eq!(r.get("overall"), Some(62.29));
    // Knowledge 91/154, Reasoning 63/98, Math 43/56, Coding 21/42: leaderboard 59.1/64.3/76.8/50.0.
    let cats: Vec<f64> = ["knowledge", "reasoning", "math", "coding"]
        .iter()
        .map(|c| r.get(&format!("categories.{c}")).unwrap())
        .collect();
    assert_eq!(cats, vec![59.09, 64.29, 76.79, 50.0]);
    let one_decimal: Vec<f64> = cats.iter().map(|x| (x * 10.0).round() / 10.0).collect();
    assert_eq!(one_decimal, vec![59.1, 64.3, 76.8, 50.0]);
    // The interval brackets the point estimate.
    let ci = r.metrics["ci95"]["overall"].as_array().unwrap();
    assert!(ci[0].as_f64().unwrap() < 62.29 && 62.29 < ci[1].as_f64().unwrap());
}

#[test]
fn reward_model_files_default_to_double_game_which_agrees_with_single_for_consistent_scores() {
    for root in roots() {
        let outputs = formats::load_judgebench_outputs(
            &[output_file(&root, "Skywork-Reward-Gemma-2-27B")],
            &ReadOptions::default(),
        )
        .unwrap()
        .records;
        assert_eq!(gramrr_eval::default_mode(&outputs), Mode::Double);
        let double = eval_judgebench_outputs(&outputs, None, &quiet()).unwrap();
        assert_eq!(double.metrics["mode"], "double");
        let single = eval_judgebench_outputs(&outputs, Some(Mode::Single), &quiet()).unwrap();
        assert_eq!(single.get("overall"), double.get("overall"));
        if root.full {
            // Leaderboard: 64.3.
            assert_eq!(single.get("overall"), Some(64.29));
        }
    }
}

/// The recorded reward-model decisions follow upstream's rule from the recorded scores, in both
/// orders: A>B only when the first-shown score is higher. So a scores file holding those raw
/// scores, fed through the scalar path, reproduces the file's numbers.
#[test]
fn raw_reward_scores_through_a_scores_file_reproduce_the_recorded_decisions() {
    for root in roots() {
        let file = output_file(&root, "Skywork-Reward-Llama-3.1-8B");
        let outputs = formats::load_judgebench_outputs(&[file], &ReadOptions::default()).unwrap().records;
        let dir = tempfile::tempdir().unwrap();
        let scores_path = dir.path().join("skywork_scores.jsonl");
        let mut lines = String::new();
        for o in &outputs {
            let j0 = o.judgments[0].as_ref().unwrap();
            let j1 = o.judgments[1].as_ref().unwrap();
            let s0 = j0.scores.clone().unwrap();
            let s1 = j1.scores.clone().unwrap();
            // Second order is (B, A): same responses, same scores swapped.
            assert_eq!((s0[0], s0[1]), (s1[1], s1[0]), "{}", o.pair.id);
            let rule = |a: f64, b: f64| if a > b { gramrr_data::Label::A } else { gramrr_data::Label::B };
            assert_eq!(j0.decision, Some(rule(s0[0], s0[1])));
            assert_eq!(j1.decision, Some(rule(s1[0], s1[1])));
            lines.push_str(&serde_json::json!({"id": o.pair.id, "scores": {"A": s0[0], "B": s0[1]}}).to_string());
            lines.push('\n');
        }
        std::fs::write(&scores_path, lines).unwrap();
        let pairs: Vec<_> = outputs.iter().map(|o| o.pair.clone()).collect();
        let source = Source::Scalar(Box::new(ScoresFile::open(&scores_path).unwrap()));
        let recorded = eval_judgebench_outputs(&outputs, Some(Mode::Single), &quiet()).unwrap();
        for mode in [Mode::Single, Mode::Double] {
            let r = eval_judgebench(&pairs, &source, mode, &quiet()).unwrap();
            assert_eq!(r.get("overall"), recorded.get("overall"), "{mode:?}");
            assert_eq!(r.get("categories.math"), recorded.get("categories.math"));
            if root.full {
                assert_eq!(r.get("overall"), Some(62.29), "{mode:?}");
                assert_eq!(r.get("categories.math"), Some(76.79));
            }
        }
    }
}

/// An independent reading of upstream's double-game rule over the raw JSON.
fn upstream_double(path: &Path) -> (usize, usize, usize) {
    let text = std::fs::read_to_string(path).unwrap();
    let (mut n, mut correct, mut ties) = (0, 0, 0);
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let label = v["label"].as_str().unwrap();
        let flip = |d: &str| match d {
            "A>B" => "B>A".to_string(),
            "B>A" => "A>B".to_string(),
            other => other.to_string(),
        };
        let opposite = flip(label);
        let mut sum = 0i32;
        for (k, j) in v["judgments"].as_array().unwrap().iter().enumerate() {
            let d = j.get("decision").and_then(Value::as_str).unwrap_or("none");
            let d = if k == 1 { flip(d) } else { d.to_string() };
            sum += if d == label {
                1
            } else if d == opposite {
                -1
            } else {
                0
            };
        }
        n += 1;
        correct += (sum > 0) as usize;
        ties += (sum == 0) as usize;
    }
    (n, correct, ties)
}

#[test]
fn haiku_judge_double_game_counts_ties_and_missing_verdicts_as_zero() {
    for root in roots() {
        let file = output_file(&root, "claude-3-haiku");
        let outputs = formats::load_judgebench_outputs(&[&file], &ReadOptions::default()).unwrap().records;
        let dir = tempfile::tempdir().unwrap();
        let cfg = EvalConfig { out: Some(dir.path().to_path_buf()), ..quiet() };
        let r = eval_judgebench_outputs(&outputs, None, &cfg).unwrap();
        assert_eq!(r.metrics["mode"], "double");
        let (n, correct, ties) = upstream_double(&file);
        assert_eq!(r.get("overall"), Some(gramrr_eval::bootstrap::pct(correct as f64 / n as f64)));
        assert_eq!(r.metrics["ties"], ties);
        if root.full {
            assert_eq!((n, correct, ties), (270, 87, 104));
            assert_eq!(r.get("overall"), Some(32.22));
            assert_eq!(r.get("categories.coding"), Some(9.68));
        }

        // The per-item file keeps the verdict kinds apart and the judge's text as the rationale.
        let items = std::fs::read_to_string(dir.path().join("items.jsonl")).unwrap();
        let decisions: Vec<Value> = items
            .lines()
            .flat_map(|l| serde_json::from_str::<Value>(l).unwrap()["decisions"].as_array().unwrap().clone())
            .collect();
        assert_eq!(decisions.len(), 2 * n);
        let raw = std::fs::read_to_string(&file).unwrap();
        let raw_count = |want: Option<&str>| {
            raw.lines()
                .flat_map(|l| serde_json::from_str::<Value>(l).unwrap()["judgments"].as_array().unwrap().clone())
                .filter(|j| j.get("decision").and_then(Value::as_str) == want)
                .count()
        };
        assert_eq!(decisions.iter().filter(|d| d["decision"] == "Tie").count(), raw_count(Some("A=B")));
        let missing: Vec<&Value> = decisions.iter().filter(|d| d["decision"].is_null()).collect();
        assert_eq!(missing.len(), raw_count(None));
        assert!(!missing.is_empty(), "the sample and the full file both hold missing verdicts");
        if root.full {
            assert_eq!(decisions.len(), 540);
            assert_eq!(missing.len(), 13);
        }
        assert!(missing.iter().all(|d| d["failure"].as_str().unwrap().starts_with("no verdict")));
        assert!(decisions.iter().all(|d| d["rationale"].as_str().is_some_and(|t| !t.is_empty())));

        let single = eval_judgebench_outputs(&outputs, Some(Mode::Single), &quiet()).unwrap();
        if root.full {
            assert_eq!(single.get("overall"), Some(29.63));
        }
    }
}

#[test]
fn o1_mini_judge_file_rescored_in_both_games() {
    for root in roots() {
        let file = output_file(&root, "o1-mini");
        let outputs = formats::load_judgebench_outputs(&[&file], &ReadOptions::default()).unwrap().records;
        let double = eval_judgebench_outputs(&outputs, None, &quiet()).unwrap();
        let (n, correct, _) = upstream_double(&file);
        assert_eq!(double.get("overall"), Some(gramrr_eval::bootstrap::pct(correct as f64 / n as f64)));
        if root.full {
            assert_eq!(n, 350);
            assert_eq!(double.get("overall"), Some(65.71));
            let single = eval_judgebench_outputs(&outputs, Some(Mode::Single), &quiet()).unwrap();
            assert_eq!(single.get("overall"), Some(70.86));
        }
    }
}
