//! The length baseline on every real benchmark file, checked against small independent
//! re-implementations that read the raw JSON themselves (not through gramrr-data).

mod common;

use std::path::{Path, PathBuf};

use gramrr_data::formats::{self, ReadOptions};
use gramrr_eval::bench::rm_bench::easy_normal_hard;
use gramrr_eval::{
    eval_judgebench, eval_pairwise, eval_rm_bench, eval_rmb, EvalConfig, LengthBaseline, Mode, PairBench,
    RandomBaseline, ScoresFile, Source,
};
use serde_json::Value;

use common::Root;

fn roots() -> Vec<Root> {
    common::roots("baselines_benchdata")
}

fn cfg() -> EvalConfig {
    EvalConfig { bootstrap: 100, ..Default::default() }
}

fn json(path: &Path) -> Vec<Value> {
    serde_json::from_str::<Value>(&std::fs::read_to_string(path).unwrap()).unwrap().as_array().unwrap().clone()
}

fn chars(v: &Value) -> usize {
    v.as_str().unwrap().chars().count()
}

fn pct(k: usize, n: usize) -> f64 {
    (10000.0 * k as f64 / n as f64).round() / 100.0
}

fn length() -> Source {
    Source::Scalar(Box::new(LengthBaseline))
}

/// Upstream's compute_accuracy, re-done on the raw JSON: per domain, the mean 3×3 matrix of
/// len(chosen[i]) > len(rejected[j]); hard = upper triangle, normal = diagonal, easy = lower.
fn reference_rm_bench(files: &[PathBuf]) -> Vec<(String, [f64; 3])> {
    let mut domains: Vec<(String, Vec<[[f64; 3]; 3]>)> = Vec::new();
    for f in files {
        let name = f.file_name().unwrap().to_str().unwrap().replace("_filtered.json", "");
        let domain = if name.starts_with("safety") { "safety".to_string() } else { name };
        let mut ms = Vec::new();
        for r in json(f) {
            let mut m = [[0.0; 3]; 3];
            for (i, row) in m.iter_mut().enumerate() {
                for (j, x) in row.iter_mut().enumerate() {
                    *x = (chars(&r["chosen"][i]) > chars(&r["rejected"][j])) as u8 as f64;
                }
            }
            ms.push(m);
        }
        match domains.iter_mut().find(|(d, _)| *d == domain) {
            Some((_, v)) => v.extend(ms),
            None => domains.push((domain, ms)),
        }
    }
    domains
        .into_iter()
        .map(|(d, ms)| {
            let n = ms.len() as f64;
            let mean = |i: usize, j: usize| ms.iter().map(|m| m[i][j]).sum::<f64>() / n;
            let hard = (mean(0, 1) + mean(0, 2) + mean(1, 2)) / 3.0;
            let normal = (mean(0, 0) + mean(1, 1) + mean(2, 2)) / 3.0;
            let easy = (mean(1, 0) + mean(2, 0) + mean(2, 1)) / 3.0;
            (d, [easy, normal, hard])
        })
        .collect()
}

#[test]
fn rm_bench_length_baseline_matches_an_independent_reimplementation() {
    for root in roots() {
        let dir = root.dir.join("rm-bench");
        let files: Vec<PathBuf> = ["chat", "code", "safety-refuse", "safety-response"]
            .iter()
            .map(|d| dir.join(format!("{d}_filtered.json")))
            .collect();
        let records = formats::load_rm_bench(&[&dir], &ReadOptions::default()).unwrap().records;
        let r = eval_rm_bench(&records, &length(), &cfg()).unwrap();

        let reference = reference_rm_bench(&files);
        let mut sums = [0.0; 4];
        for (d, [easy, normal, hard]) in &reference {
            let avg = (easy + normal + hard) / 3.0;
            for (k, x) in ["easy", "normal", "hard", "avg"].iter().zip([easy, normal, hard, &avg]) {
                assert_eq!(r.get(&format!("domains.{d}.{k}")), Some((x * 10000.0).round() / 100.0), "{d} {k}");
            }
            for (s, x) in sums.iter_mut().zip([easy, normal, hard, &avg]) {
                *s += x / reference.len() as f64;
            }
        }
        for (k, x) in ["easy", "normal", "hard", "avg"].iter().zip(sums) {
            assert_eq!(r.get(&format!("overall.{k}")), Some((x * 10000.0).round() / 100.0), "overall {k}");
        }
        assert!(r.metrics["domains"].get("math").is_none(), "only the domains in the files are reported");
        let safety = records.iter().filter(|x| x.domain.starts_with("safety")).count();
        assert_eq!(r.metrics["counts"]["safety"], safety, "safety pools both safety files");
        if !root.full {
            continue;
        }
        // The numbers themselves: length wins the easy comparisons and loses the hard ones.
        assert_eq!(r.get("domains.chat.easy"), Some(81.14));
        assert_eq!(r.get("domains.chat.normal"), Some(28.42));
        assert_eq!(r.get("domains.chat.hard"), Some(2.58));
        assert_eq!(r.get("domains.code.avg"), Some(51.61));
        assert_eq!(r.get("domains.safety.avg"), Some(46.76));
        assert_eq!(r.get("overall.avg"), Some(45.25));
        assert_eq!(safety, 441);
    }
}

/// One record by hand: chat_filtered.json[0] (id 8), lengths of its six responses.
#[test]
#[allow(clippy::needless_range_loop)]
fn rm_bench_first_chat_record_matrix_by_hand() {
    for root in roots() {
        let file = root.dir.join("rm-bench/chat_filtered.json");
        let raw = &json(&file)[0];
        let c: Vec<usize> = (0..3).map(|i| chars(&raw["chosen"][i])).collect();
        let r: Vec<usize> = (0..3).map(|j| chars(&raw["rejected"][j])).collect();
        let records = formats::load_rm_bench(&[file], &ReadOptions::default()).unwrap().records;
        let report =
            eval_rm_bench(&records[..1], &length(), &EvalConfig { bootstrap: 0, ..Default::default() }).unwrap();
        let d = &report.outcomes[0].decisions;
        assert_eq!(d.len(), 9);
        for i in 0..3 {
            for j in 0..3 {
                let k = 3 * i + j;
                assert_eq!(
                    (d[k].a.as_str(), d[k].b.as_str()),
                    (format!("chosen[{i}]").as_str(), format!("rejected[{j}]").as_str())
                );
                assert_eq!(d[k].d.score_a, Some(c[i] as f64));
                assert_eq!(d[k].d.score_b, Some(r[j] as f64));
                assert_eq!(d[k].d.decision == Some(gramrr_data::Label::A), c[i] > r[j]);
            }
        }
        let m: [[bool; 3]; 3] = std::array::from_fn(|i| std::array::from_fn(|j| c[i] > r[j]));
        let [easy, normal, hard] = easy_normal_hard(std::iter::once(&m));
        assert_eq!(report.get("domains.chat.easy"), Some((easy * 10000.0).round() / 100.0));
        assert_eq!(report.get("domains.chat.normal"), Some((normal * 10000.0).round() / 100.0));
        assert_eq!(report.get("domains.chat.hard"), Some((hard * 10000.0).round() / 100.0));
    }
}

#[test]
fn rm_bench_scores_file_and_baseline_go_through_the_same_scoring() {
    for root in roots() {
        let dir = root.dir.join("rm-bench");
        let records =
            formats::load_rm_bench(&[dir.join("code_filtered.json")], &ReadOptions::default()).unwrap().records;
        // The lengths, written as a scores file in the per-response form.
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("len.jsonl");
        let mut text = String::new();
        for r in &records {
            for (role, list) in [("chosen", &r.chosen), ("rejected", &r.rejected)] {
                for (i, s) in list.iter().enumerate() {
                    let line = serde_json::json!({"id": r.item_id(), "response": format!("{role}[{i}]"), "score": s.chars().count()});
                    text.push_str(&format!("{line}\n"));
                }
            }
        }
        std::fs::write(&path, text).unwrap();
        let from_file =
            eval_rm_bench(&records, &Source::Scalar(Box::new(ScoresFile::open(&path).unwrap())), &cfg()).unwrap();
        let baseline = eval_rm_bench(&records, &length(), &cfg()).unwrap();
        assert_eq!(from_file.metrics["domains"], baseline.metrics["domains"]);
        assert_eq!(from_file.metrics["ci95"], baseline.metrics["ci95"]);

        // A scores file missing a response names the item and the key.
        std::fs::write(
            &path,
            format!("{}\n", serde_json::json!({"id": records[0].item_id(), "scores": {"chosen[0]": 1.0}})),
        )
        .unwrap();
        let err = eval_rm_bench(&records, &Source::Scalar(Box::new(ScoresFile::open(&path).unwrap())), &cfg())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("no score for item \"{}\" response \"chosen[1]\"", records[0].item_id())),
            "{err}"
        );
    }
}

#[test]
fn random_baseline_is_near_chance_and_reproducible() {
    // Near chance needs many comparisons: the full files only.
    let Some(root) = roots().into_iter().find(|r| r.full) else {
        return;
    };
    let dir = root.dir.join("rm-bench");
    let records = formats::load_rm_bench(&[dir], &ReadOptions::default()).unwrap().records;
    let src = Source::Scalar(Box::new(RandomBaseline { seed: 3 }));
    let a = eval_rm_bench(&records, &src, &cfg()).unwrap();
    let b = eval_rm_bench(&records, &src, &cfg()).unwrap();
    assert_eq!(a.metrics["overall"], b.metrics["overall"]);
    for k in ["easy", "normal", "hard"] {
        let x = a.get(&format!("overall.{k}")).unwrap();
        assert!((45.0..55.0).contains(&x), "{k} = {x}");
    }
    let other = eval_rm_bench(&records, &Source::Scalar(Box::new(RandomBaseline { seed: 4 })), &cfg()).unwrap();
    assert_ne!(other.metrics["overall"], a.metrics["overall"]);
}

#[test]
fn judgebench_length_baseline_single_game_matches_upstream_rule() {
    for root in roots() {
        let file = root.dir.join("judgebench/dataset=judgebench,response_model=gpt-4o-2024-05-13.jsonl");
        let text = std::fs::read_to_string(&file).unwrap();
        let (mut n, mut k) = (0, 0);
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            // decision = "A>B" if score_A > score_B else "B>A"
            let d = if chars(&v["response_A"]) > chars(&v["response_B"]) { "A>B" } else { "B>A" };
            n += 1;
            k += (d == v["label"].as_str().unwrap()) as usize;
        }
        let pairs = formats::load_pairs(&[file], &ReadOptions::default()).unwrap().records;
        let r = eval_judgebench(&pairs, &length(), Mode::Single, &cfg()).unwrap();
        assert_eq!(r.get("overall"), Some(pct(k, n)));
        if root.full {
            assert_eq!(r.get("overall"), Some(46.0));
        }
    }
}

#[test]
fn llmbar_length_baseline_matches_an_independent_count() {
    for base in roots() {
        let root = base.dir.join("llmbar");
        let sets =
            ["Natural", "Adversarial/Neighbor", "Adversarial/GPTInst", "Adversarial/GPTOut", "Adversarial/Manual"];
        let (mut n_all, mut k_all) = (0, 0);
        let pairs = formats::load_pairs(&[&root], &ReadOptions::default()).unwrap().records;
        let r = eval_pairwise(PairBench::LlmBar, &pairs, &length(), &cfg()).unwrap();
        for set in sets {
            let recs = json(&root.join(set).join("dataset.json"));
            let k = recs
                .iter()
                .filter(|v| {
                    let (better, worse) =
                        if v["label"] == 1 { ("output_1", "output_2") } else { ("output_2", "output_1") };
                    chars(&v[better]) > chars(&v[worse])
                })
                .count();
            assert_eq!(r.get(&format!("subsets.{set}")), Some(pct(k, recs.len())), "{set}");
            n_all += recs.len();
            k_all += k;
        }
        assert_eq!(r.get("accuracy"), Some(pct(k_all, n_all)));
        if base.full {
            assert_eq!(r.get("accuracy"), Some(26.97));
            assert_eq!(r.get("subsets.Natural"), Some(56.0));
        }

        // The same files as RewardBench's Chat Hard subsets: weighted by EXAMPLE_COUNTS, which equal
        // the file sizes here, so the section equals the pooled accuracy.
        // (The sample keeps 4 records of every file, so its counts are also proportional.)
        let rb = eval_pairwise(PairBench::RewardBench, &pairs, &length(), &cfg()).unwrap();
        let pooled = if base.full { Some(pct(k_all, n_all)) } else { rb.get("sections.Chat Hard") };
        if base.full {
            assert_eq!(rb.get("sections.Chat Hard"), Some(26.97));
        }
        assert_eq!(rb.get("score"), pooled);
        assert_eq!(rb.metrics["missing_sections"], serde_json::json!(["Chat", "Safety", "Reasoning"]));
        assert_eq!(rb.get("subsets.llmbar-adver-GPTOut"), r.get("subsets.Adversarial/GPTOut"));
    }
}

#[test]
fn hh_rlhf_length_baseline_matches_comparing_whole_dialogues() {
    // Chosen and rejected share the prompt, so comparing the final turns' lengths is comparing
    // the whole dialogues' lengths.
    for root in roots() {
        let file = root.dir.join("hh-rlhf/harmless-base/test.jsonl.gz");
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(std::fs::File::open(&file).unwrap()),
            &mut text,
        )
        .unwrap();
        let (mut n, mut k) = (0, 0);
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            n += 1;
            k += (chars(&v["chosen"]) > chars(&v["rejected"])) as usize;
        }
        let pairs = formats::load_pairs(&[file], &ReadOptions::default()).unwrap().records;
        let r = eval_pairwise(PairBench::HhRlhf, &pairs, &length(), &cfg()).unwrap();
        assert_eq!(n, if root.full { 2312 } else { 12 });
        assert_eq!(r.get("accuracy"), Some(pct(k, n)));
        if root.full {
            assert_eq!(r.get("accuracy"), Some(44.33));
        }
    }
}

#[test]
fn rmb_length_baseline_pairwise_and_best_of_n_match_independent_counts() {
    for base in roots() {
        let root = base.dir.join("rmb");
        let (mut pn, mut pk, mut bn, mut bk) = (0, 0, 0, 0);
        for f in gramrr_data::read::expand_paths(&[&root]).unwrap() {
            for v in json(&f) {
                if v.get("bon_best").is_some() {
                    let best = chars(&v["bon_best"]["answer"]);
                    bn += 1;
                    bk += v["loser_list"].as_array().unwrap().iter().all(|l| best > chars(&l["answer"])) as usize;
                } else {
                    pn += 1;
                    pk += (chars(&v["chosen"]["answer"]) > chars(&v["reject"]["answer"])) as usize;
                }
            }
        }
        let pairs = formats::load_pairs(&[root.join("Pairwise_set")], &ReadOptions::default()).unwrap().records;
        let lists = formats::load_candidates(&[root.join("BoN_set")], &ReadOptions::default()).unwrap().records;
        let r = eval_rmb(&pairs, &lists, &length(), &cfg()).unwrap();
        assert_eq!((pn, bn), if base.full { (566, 134) } else { (9, 9) });
        assert_eq!(r.get("pairwise.accuracy"), Some(pct(pk, pn)));
        assert_eq!(r.get("bon.accuracy"), Some(pct(bk, bn)));
        if base.full {
            assert_eq!(r.get("pairwise.accuracy"), Some(59.36));
            assert_eq!(r.get("bon.accuracy"), Some(42.54));
            assert_eq!(r.get("bon.categories.Harmlessness/S1"), Some(39.64));
        }
    }
}
