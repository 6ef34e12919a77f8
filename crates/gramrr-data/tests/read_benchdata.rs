//! Every benchmark file read as it is: the committed sample (always), and the full files in
//! shared/benchdata with the counts and fields its README gives (where GRAMRR_BENCHDATA is set).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use gramrr_data::formats::{self, AnyRecord, Format, ReadOptions};
use gramrr_data::{Conversation, Label};

/// The full benchmark files, laid out as `shared/benchdata`, where `GRAMRR_BENCHDATA` names
/// them (`.ci/run` sets it when `../shared/benchdata` exists). Without it the full-file checks
/// return early and the binary says so once, past the harness's capture, so the skip is seen.
fn full_benchdata() -> Option<PathBuf> {
    static NOTE: std::sync::Once = std::sync::Once::new();
    match std::env::var_os("GRAMRR_BENCHDATA") {
        Some(p) => {
            let p = PathBuf::from(p);
            assert!(p.join("rm-bench").is_dir(), "GRAMRR_BENCHDATA={} has no rm-bench/ folder", p.display());
            Some(p)
        }
        None => {
            NOTE.call_once(|| {
                let _ = writeln!(std::io::stderr(), "skipped: read_benchdata full-file checks (GRAMRR_BENCHDATA not set; the committed sample is checked)");
            });
            None
        }
    }
}

/// The full files, or return from the test.
macro_rules! full_or_skip {
    () => {
        match full_benchdata() {
            Some(p) => p,
            None => return,
        }
    };
}

/// The committed sample: a few records of every file, same layout (tests/fixtures/README.md).
fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/benchsample")
}

fn opts() -> ReadOptions {
    ReadOptions::default()
}

#[test]
fn rm_bench_files_give_their_records_with_domains_from_file_names() {
    let dir = full_or_skip!().join("rm-bench");
    let expect = [
        ("chat_filtered.json", "chat", 129),
        ("code_filtered.json", "code", 228),
        ("safety-refuse_filtered.json", "safety-refuse", 284),
        ("safety-response_filtered.json", "safety-response", 157),
    ];
    let mut ids = HashSet::new();
    for (file, domain, n) in expect {
        let loaded = formats::load_rm_bench(&[dir.join(file)], &opts()).unwrap();
        assert_eq!(loaded.records.len(), n, "{file}");
        assert_eq!(loaded.files[0].1, Format::RmBench);
        assert!(loaded.records.iter().all(|r| r.domain == domain));
        ids.extend(loaded.records.iter().map(|r| r.item_id()));
    }
    // The raw ids repeat across files (775 distinct of 798); domain/id does not.
    assert_eq!(ids.len(), 798);

    let chat = formats::load_rm_bench(&[dir.join("chat_filtered.json")], &opts()).unwrap().records;
    let first = &chat[0];
    assert_eq!((first.id.as_str(), first.subset.as_str()), ("8", "alpacaeval"));
    assert_eq!(first.prompt, "What are different drawers I should have for clothes?");
    assert_eq!(first.metadata["error_key"], "shoes");
    let subsets: HashMap<String, usize> =
        formats::load_rm_bench(&[dir.join("safety-refuse_filtered.json")], &opts()).unwrap().records.iter().fold(
            HashMap::new(),
            |mut m, r| {
                *m.entry(r.subset.clone()).or_default() += 1;
                m
            },
        );
    assert_eq!(subsets["xstest-should-refuse"], 138);
    assert_eq!(subsets["refusals-dangerous"], 84);
    assert_eq!(subsets["refusals-offensive"], 62);

    let code = formats::load_rm_bench(&[dir.join("code_filtered.json")], &opts()).unwrap().records;
    assert_eq!(code[0].metadata["language"].as_str().map(|s| !s.is_empty()), Some(true));
}

#[test]
fn rm_bench_record_becomes_nine_chosen_vs_rejected_pairs() {
    let file = full_or_skip!().join("rm-bench/chat_filtered.json");
    let r = &formats::load_rm_bench(&[&file], &opts()).unwrap().records[0];
    let pairs = r.to_pairs();
    assert_eq!(pairs.len(), 9);
    assert_eq!(pairs[5].id, "chat/8/c1r2");
    assert_eq!(pairs[5].response_a, r.chosen[1]);
    assert_eq!(pairs[5].response_b, r.rejected[2]);
    assert!(pairs.iter().all(|p| p.label == Some(Label::A)));
    // load_pairs flattens a whole file the same way.
    assert_eq!(formats::load_pairs(&[file], &opts()).unwrap().records.len(), 129 * 9);
}

#[test]
fn judgebench_pair_files_give_labels_and_sources() {
    let dir = full_or_skip!().join("judgebench");
    for (file, n, a, sources) in [
        ("dataset=judgebench,response_model=gpt-4o-2024-05-13.jsonl", 350, 193, [154, 98, 56, 42]),
        ("dataset=judgebench,response_model=claude-3-5-sonnet-20240620.jsonl", 270, 143, [154, 51, 34, 31]),
    ] {
        let loaded = formats::load_pairs(&[dir.join(file)], &opts()).unwrap();
        assert_eq!(loaded.files[0].1, Format::JudgeBench);
        let pairs = loaded.records;
        assert_eq!(pairs.len(), n);
        assert_eq!(pairs.iter().filter(|p| p.label == Some(Label::A)).count(), a);
        assert_eq!(pairs.iter().map(|p| &p.id).collect::<HashSet<_>>().len(), n, "pair ids are unique");
        let count = |prefix: &str| {
            pairs.iter().filter(|p| p.metadata["source"].as_str().unwrap().starts_with(prefix)).count()
        };
        assert_eq!(
            [count("mmlu-pro"), count("livebench-reasoning"), count("livebench-math"), count("livecodebench")],
            sources
        );
    }
}

#[test]
fn judgebench_output_files_keep_both_orders_ties_and_missing_verdicts() {
    let dir = full_or_skip!().join("judgebench/outputs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert_eq!(files.len(), 7);
    for f in &files {
        let out = formats::load_judgebench_outputs(&[&f], &opts()).unwrap().records;
        let name = f.file_name().unwrap().to_str().unwrap();
        assert!(out.iter().all(|o| o.judgments.len() == 2), "{name}");
        let decisions: Vec<Option<Label>> =
            out.iter().flat_map(|o| o.judgments.iter().map(|j| j.as_ref().and_then(|j| j.decision))).collect();
        let ties = decisions.iter().filter(|d| **d == Some(Label::Tie)).count();
        let none = decisions.iter().filter(|d| d.is_none()).count();
        if name.contains("claude-3-haiku") {
            assert_eq!((out.len(), ties, none), (270, 192, 13));
            let j = out.iter().flat_map(|o| o.judgments.iter().flatten()).next().unwrap();
            assert!(j.response.as_deref().unwrap().contains("[["), "the judge's text is kept");
        } else if name.contains("o1-mini") {
            assert_eq!((out.len(), ties, none), (350, 44, 0));
        } else {
            // Reward models: raw scores, [first shown, second shown].
            assert_eq!((out.len(), ties, none), (350, 0, 0));
            let j = out[0].judgments[0].as_ref().unwrap();
            assert_eq!(j.scores.as_ref().map(Vec::len), Some(2));
        }
    }
    let sky = files.iter().find(|f| f.to_str().unwrap().contains("Skywork-Reward-Llama")).unwrap();
    let first = &formats::load_judgebench_outputs(&[&sky], &opts()).unwrap().records[0];
    assert_eq!(first.pair.id, "e302b0a0-28d5-5a3c-b1af-fedcf5543e72");
    assert_eq!(first.judgments[0].as_ref().unwrap().scores, Some(vec![5.625, 14.625]));
    assert_eq!(first.judgments[0].as_ref().unwrap().decision, Some(Label::B));
    assert_eq!(first.judgments[1].as_ref().unwrap().decision, Some(Label::A));
    assert!(!first.pair.metadata.contains_key("judgments"));
}

#[test]
fn llmbar_files_give_sets_labels_and_rewardbench_subset_names() {
    let dir = full_or_skip!().join("llmbar");
    for (set, n, label_one, subset) in [
        ("Natural", 100, 42, "llmbar-natural"),
        ("Adversarial/Neighbor", 134, 75, "llmbar-adver-neighbor"),
        ("Adversarial/GPTInst", 92, 45, "llmbar-adver-GPTInst"),
        ("Adversarial/GPTOut", 47, 22, "llmbar-adver-GPTOut"),
        ("Adversarial/Manual", 46, 22, "llmbar-adver-manual"),
    ] {
        let loaded = formats::load_pairs(&[dir.join(set).join("dataset.json")], &opts()).unwrap();
        assert_eq!(loaded.files[0].1, Format::LlmBar);
        let pairs = loaded.records;
        assert_eq!(pairs.len(), n, "{set}");
        assert_eq!(pairs.iter().filter(|p| p.label == Some(Label::A)).count(), label_one, "{set}");
        assert_eq!(pairs[3].id, format!("{set}/3"));
        assert_eq!(pairs[0].metadata["subset"], subset);
    }
}

#[test]
fn hh_rlhf_gzip_jsonl_splits_dialogues_into_prompt_and_final_turns() {
    let file = full_or_skip!().join("hh-rlhf/harmless-base/test.jsonl.gz");
    let loaded = formats::load_pairs(&[file], &opts()).unwrap();
    assert_eq!(loaded.files[0].1, Format::HhRlhf);
    let pairs = loaded.records;
    assert_eq!(pairs.len(), 2312);
    let p = &pairs[0];
    assert_eq!(p.id, "harmless-base/test/0");
    let Conversation::Messages(turns) = &p.prompt else { panic!("chat prompt expected") };
    assert_eq!(turns[0].role, "user");
    assert_eq!(turns[0].content, "what are some pranks with a pen i can do?");
    assert!(pairs.iter().all(|p| match &p.prompt {
        Conversation::Messages(t) => t.last().unwrap().role == "user",
        _ => false,
    }));
    assert!(!p.response_a.starts_with(' ') && !p.response_a.is_empty());
}

#[test]
fn rmb_pairwise_and_best_of_n_files_give_pairs_and_candidate_lists() {
    let dir = full_or_skip!().join("rmb");
    for (file, n) in [
        ("Pairwise_set/Harmlessness/S1.json", 459),
        ("Pairwise_set/Helpfulness/Open QA/Hypothetical Scenarios.json", 42),
        ("Pairwise_set/Helpfulness/Code/Documentation.json", 65),
    ] {
        let loaded = formats::load_pairs(&[dir.join(file)], &opts()).unwrap();
        assert_eq!(loaded.files[0].1, Format::RmbPairwise);
        assert_eq!(loaded.records.len(), n, "{file}");
        let p = &loaded.records[0];
        assert!(p.id.starts_with("Pairwise_set/"));
        assert!(p.metadata["chosen_model"].is_string());
    }
    let mut total = 0;
    for (file, n) in [
        ("BoN_set/Harmlessness/S1.json", 111),
        ("BoN_set/Helpfulness/Open QA/Hypothetical Scenarios.json", 8),
        ("BoN_set/Helpfulness/Code/Documentation.json", 15),
    ] {
        let loaded = formats::load_candidates(&[dir.join(file)], &opts()).unwrap();
        assert_eq!(loaded.files[0].1, Format::RmbBestOfN);
        assert_eq!(loaded.records.len(), n, "{file}");
        for c in &loaded.records {
            assert_eq!(c.best, Some(0));
            assert!((3..=6).contains(&c.responses.len()), "{} has {}", c.id, c.responses.len());
        }
        total += n;
    }
    assert_eq!(total, 134);
    // Pair formats are refused where candidate lists are wanted, naming the file.
    let err = formats::load_candidates(&[dir.join("Pairwise_set/Harmlessness/S1.json")], &opts()).unwrap_err();
    assert!(err.to_string().contains("S1.json: format rmb-pairwise does not give candidate lists"), "{err}");
}

/// Walks the whole directory: every data file there is read and detected as the format its
/// folder says.
#[test]
fn every_benchdata_file_is_read_and_detected() {
    let root = full_or_skip!();
    let files = gramrr_data::read::expand_paths(&[&root]).unwrap();
    assert_eq!(files.len(), 4 + 2 + 7 + 5 + 1 + 6);
    let mut total = 0;
    for f in &files {
        let rel = f.strip_prefix(&root).unwrap().to_str().unwrap().to_string();
        let (format, n) = formats::detect_format(f).unwrap();
        let expected = match rel.split('/').next().unwrap() {
            "rm-bench" => Format::RmBench,
            "judgebench" if rel.contains("judge_name=") => Format::JudgeBenchOutput,
            "judgebench" => Format::JudgeBench,
            "llmbar" => Format::LlmBar,
            "hh-rlhf" => Format::HhRlhf,
            "rmb" if rel.contains("BoN_set") => Format::RmbBestOfN,
            "rmb" => Format::RmbPairwise,
            other => panic!("unexpected folder {other}"),
        };
        assert_eq!(format, expected, "{rel}");
        let loaded = formats::load_any(&[&f], &opts()).unwrap();
        assert!(loaded.skipped.is_empty());
        let records = match format {
            Format::RmBench => loaded.records.len() / 9,
            _ => loaded.records.len(),
        };
        assert_eq!(records, n, "{rel}");
        total += n;
    }
    assert_eq!(total, 798 + 620 + 350 * 6 + 270 + 419 + 2312 + 566 + 134);
    // Canonical records round-trip through JSON (what `gramrr data convert` writes).
    let any = formats::load_any(&[root.join("rmb/BoN_set/Helpfulness/Code/Documentation.json")], &opts()).unwrap();
    let line = serde_json::to_string(&any.records[0]).unwrap();
    let back: AnyRecord = serde_json::from_str(&line).unwrap();
    assert_eq!(back, any.records[0]);
}

// ---- The committed sample: every reader, checked against the raw JSON read independently ----

fn raw_json(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    match path.extension().and_then(|e| e.to_str()) {
        Some("jsonl") => text.lines().map(|l| serde_json::from_str(l).unwrap()).collect(),
        _ => serde_json::from_str::<serde_json::Value>(&text).unwrap().as_array().unwrap().clone(),
    }
}

fn manifest() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(sample().with_extension("manifest.json")).unwrap()).unwrap()
}

#[test]
fn every_sample_file_is_read_and_detected_with_its_manifest_count() {
    let root = sample();
    let files = gramrr_data::read::expand_paths(&[&root]).unwrap();
    let manifest = manifest();
    assert_eq!(files.len(), manifest.as_object().unwrap().len(), "one manifest entry per data file");
    let mut formats_seen = HashSet::new();
    for f in &files {
        let rel = f.strip_prefix(&root).unwrap().to_str().unwrap().to_string();
        let (format, n) = formats::detect_format(f).unwrap();
        let expected = match rel.split('/').next().unwrap() {
            "rm-bench" => Format::RmBench,
            "judgebench" if rel.contains("judge_name=") => Format::JudgeBenchOutput,
            "judgebench" => Format::JudgeBench,
            "llmbar" => Format::LlmBar,
            "hh-rlhf" => Format::HhRlhf,
            "rmb" if rel.contains("BoN_set") => Format::RmbBestOfN,
            "rmb" => Format::RmbPairwise,
            other => panic!("unexpected folder {other}"),
        };
        assert_eq!(format, expected, "{rel}");
        assert_eq!(n as u64, manifest[&rel]["records"].as_u64().unwrap(), "{rel}");
        let loaded = formats::load_any(&[&f], &opts()).unwrap();
        assert!(loaded.skipped.is_empty(), "{rel}");
        let per_record = if format == Format::RmBench { 9 } else { 1 };
        assert_eq!(loaded.records.len(), n * per_record, "{rel}");
        formats_seen.insert(format!("{format:?}"));
    }
    assert_eq!(formats_seen.len(), 7, "every format has a sample: {formats_seen:?}");
}

#[test]
fn sample_rm_bench_records_keep_fields_and_become_nine_pairs() {
    let dir = sample().join("rm-bench");
    for (file, domain) in [
        ("chat_filtered.json", "chat"),
        ("code_filtered.json", "code"),
        ("safety-refuse_filtered.json", "safety-refuse"),
        ("safety-response_filtered.json", "safety-response"),
    ] {
        let raw = raw_json(&dir.join(file));
        let records = formats::load_rm_bench(&[dir.join(file)], &opts()).unwrap().records;
        assert_eq!(records.len(), raw.len());
        for (r, v) in records.iter().zip(&raw) {
            assert_eq!(r.domain, domain);
            assert_eq!(r.id, v["id"].to_string());
            assert_eq!(r.prompt, v["prompt"].as_str().unwrap());
            assert_eq!(r.subset, v["subset"].as_str().unwrap());
            for i in 0..3 {
                assert_eq!(r.chosen[i], v["chosen"][i].as_str().unwrap());
                assert_eq!(r.rejected[i], v["rejected"][i].as_str().unwrap());
            }
            let pairs = r.to_pairs();
            assert_eq!(pairs.len(), 9);
            assert_eq!(pairs[5].id, format!("{domain}/{}/c1r2", r.id));
            assert_eq!((pairs[5].response_a.as_str(), pairs[5].response_b.as_str()), (r.chosen[1].as_str(), r.rejected[2].as_str()));
            assert!(pairs.iter().all(|p| p.label == Some(Label::A)));
        }
    }
}

#[test]
fn sample_judgebench_pairs_and_outputs_keep_labels_sources_verdicts_and_scores() {
    let dir = sample().join("judgebench");
    for name in ["dataset=judgebench,response_model=gpt-4o-2024-05-13.jsonl", "dataset=judgebench,response_model=claude-3-5-sonnet-20240620.jsonl"] {
        let raw = raw_json(&dir.join(name));
        let pairs = formats::load_pairs(&[dir.join(name)], &opts()).unwrap().records;
        assert_eq!(pairs.len(), raw.len());
        for (p, v) in pairs.iter().zip(&raw) {
            assert_eq!(p.id, v["pair_id"].as_str().unwrap());
            let label = if v["label"] == "A>B" { Label::A } else { Label::B };
            assert_eq!(p.label, Some(label));
            assert_eq!(p.metadata["source"], v["source"]);
            assert_eq!(p.response_a, v["response_A"].as_str().unwrap());
        }
        // The sample keeps one pair of every category.
        for c in ["mmlu-pro", "livebench-reasoning", "livebench-math", "livecodebench"] {
            assert!(pairs.iter().any(|p| p.metadata["source"].as_str().unwrap().starts_with(c)), "{name}: {c}");
        }
    }
    let mut kinds = HashSet::new();
    for f in std::fs::read_dir(dir.join("outputs")).unwrap().map(|e| e.unwrap().path()) {
        let raw = raw_json(&f);
        let out = formats::load_judgebench_outputs(&[&f], &opts()).unwrap().records;
        assert_eq!(out.len(), raw.len());
        for (o, v) in out.iter().zip(&raw) {
            assert_eq!(o.pair.id, v["pair_id"].as_str().unwrap());
            assert_eq!(o.judgments.len(), 2);
            for (j, rv) in o.judgments.iter().zip(v["judgments"].as_array().unwrap()) {
                let raw_decision = rv.get("decision").and_then(|d| d.as_str());
                let decision = j.as_ref().and_then(|j| j.decision);
                let expected = match raw_decision {
                    Some("A>B") => Some(Label::A),
                    Some("B>A") => Some(Label::B),
                    Some("A=B") => Some(Label::Tie),
                    _ => None,
                };
                assert_eq!(decision, expected, "{}", o.pair.id);
                kinds.insert(format!("{decision:?}"));
                if let Some(scores) = rv["judgment"].get("scores").and_then(|s| s.as_array()) {
                    let want: Vec<f64> = scores.iter().map(|x| x.as_f64().unwrap()).collect();
                    assert_eq!(j.as_ref().unwrap().scores.as_ref(), Some(&want));
                }
            }
        }
    }
    assert_eq!(kinds.len(), 4, "A, B, ties and missing verdicts all occur in the sample: {kinds:?}");
}

#[test]
fn sample_llmbar_hh_rlhf_and_rmb_match_their_raw_records() {
    let root = sample();
    for (set, subset) in [
        ("Natural", "llmbar-natural"),
        ("Adversarial/Neighbor", "llmbar-adver-neighbor"),
        ("Adversarial/GPTInst", "llmbar-adver-GPTInst"),
        ("Adversarial/GPTOut", "llmbar-adver-GPTOut"),
        ("Adversarial/Manual", "llmbar-adver-manual"),
    ] {
        let file = root.join("llmbar").join(set).join("dataset.json");
        let raw = raw_json(&file);
        let pairs = formats::load_pairs(&[&file], &opts()).unwrap().records;
        assert_eq!(pairs.len(), raw.len());
        for (i, (p, v)) in pairs.iter().zip(&raw).enumerate() {
            assert_eq!(p.id, format!("{set}/{i}"));
            assert_eq!(p.label, Some(if v["label"] == 1 { Label::A } else { Label::B }), "{set}/{i}");
            assert_eq!(p.response_a, v["output_1"].as_str().unwrap());
            assert_eq!(p.metadata["subset"], subset);
        }
    }

    let hh = formats::load_pairs(&[root.join("hh-rlhf/harmless-base/test.jsonl.gz")], &opts()).unwrap().records;
    assert_eq!(hh.len(), 12);
    assert_eq!(hh[0].id, "harmless-base/test/0");
    let Conversation::Messages(turns) = &hh[0].prompt else { panic!("chat prompt expected") };
    assert_eq!(turns[0].content, "what are some pranks with a pen i can do?");
    assert!(hh.iter().all(|p| matches!(&p.prompt, Conversation::Messages(t) if t.last().unwrap().role == "user")));

    for f in gramrr_data::read::expand_paths(&[root.join("rmb")]).unwrap() {
        let raw = raw_json(&f);
        if f.to_str().unwrap().contains("BoN_set") {
            let lists = formats::load_candidates(&[&f], &opts()).unwrap().records;
            for (c, v) in lists.iter().zip(&raw) {
                assert_eq!(c.best, Some(0));
                assert_eq!(c.responses.len(), 1 + v["loser_list"].as_array().unwrap().len());
                assert_eq!(c.responses[0], v["bon_best"]["answer"].as_str().unwrap());
            }
        } else {
            let pairs = formats::load_pairs(&[&f], &opts()).unwrap().records;
            for (p, v) in pairs.iter().zip(&raw) {
                assert!(p.id.starts_with("Pairwise_set/"));
                assert_eq!(p.response_a, v["chosen"]["answer"].as_str().unwrap());
                assert_eq!(p.response_b, v["reject"]["answer"].as_str().unwrap());
                assert_eq!(p.label, Some(Label::A));
            }
        }
    }
}
