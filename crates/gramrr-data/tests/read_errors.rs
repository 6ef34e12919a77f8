//! Bad records: the error names file, position and field; skip_bad counts and goes on.

use std::path::PathBuf;

use gramrr_data::formats::{self, Format, ReadOptions};
use gramrr_data::Label;

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    p
}

fn rm_record(id: u32, n_chosen: usize) -> String {
    let chosen: Vec<String> = (0..n_chosen).map(|i| format!("\"c{i}\"")).collect();
    format!(
        r#"{{"id": {id}, "subset": "alpacaeval", "prompt": "p", "chosen": [{}], "rejected": ["r0", "r1", "r2"]}}"#,
        chosen.join(", ")
    )
}

#[test]
fn a_short_style_list_is_an_error_naming_file_record_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let body = format!("[{}, {}, {}]", rm_record(1, 3), rm_record(2, 2), rm_record(3, 3));
    let p = write(&dir, "rm-bench/chat_filtered.json", &body);
    let err = formats::load_rm_bench(&[&p], &ReadOptions::default()).unwrap_err().to_string();
    assert!(
        err.ends_with("rm-bench/chat_filtered.json: record 1: field \"chosen\": expected a list of 3 strings, found 2"),
        "{err}"
    );

    let opts = ReadOptions { skip_bad: true, ..Default::default() };
    let loaded = formats::load_rm_bench(&[p], &opts).unwrap();
    assert_eq!(loaded.records.len(), 2);
    assert_eq!(loaded.skipped.len(), 1);
    assert_eq!(loaded.records[1].item_id(), "chat/3");
}

#[test]
fn jsonl_errors_name_the_line_and_skip_bad_steps_over_broken_json() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "pairs.jsonl",
        "{\"prompt\": \"q\", \"chosen\": \"a\", \"rejected\": \"b\"}\n{\"prompt\": \"q\", \"chosen\": 3, \"rejected\": \"b\"}\n{not json\n{\"prompt\": \"q2\", \"chosen\": \"a\", \"rejected\": \"b\"}\n",
    );
    let err = formats::load_pairs(&[&p], &ReadOptions::default()).unwrap_err().to_string();
    assert!(err.ends_with("pairs.jsonl: line 2: field \"chosen\": expected a string or a list of messages, found a number"), "{err}");
    let loaded = formats::load_pairs(&[p], &ReadOptions { skip_bad: true, ..Default::default() }).unwrap();
    assert_eq!(loaded.records.len(), 2);
    assert_eq!(loaded.skipped.len(), 2);
    assert!(loaded.skipped[1].to_string().contains("line 3: not valid JSON"));
    assert_eq!(loaded.records[1].id, "pairs/3", "ids without an id field are file/index");
}

#[test]
fn a_file_whose_format_cannot_be_told_lists_its_fields_and_asks_for_format() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, "x.jsonl", "{\"foo\": 1, \"bar\": 2}\n");
    let err = formats::load_pairs(&[&p], &ReadOptions::default()).unwrap_err().to_string();
    assert!(err.contains("cannot tell the format from the fields of line 1 (foo, bar); give it with --format"), "{err}");
    // With the format given, the missing field is named instead.
    let opts = ReadOptions { format: Some(Format::LlmBar), ..Default::default() };
    let err = formats::load_pairs(&[p], &opts).unwrap_err().to_string();
    assert!(err.ends_with("x.jsonl: line 1: field \"label\": missing"), "{err}");
}

#[test]
fn judgebench_labels_other_than_a_b_orders_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "jb.jsonl",
        "{\"pair_id\": \"x\", \"source\": \"mmlu-pro-law\", \"question\": \"q\", \"response_A\": \"a\", \"response_B\": \"b\", \"label\": \"A=B\"}\n",
    );
    let err = formats::load_pairs(&[p], &ReadOptions::default()).unwrap_err().to_string();
    assert!(err.ends_with("jb.jsonl: line 1: field \"label\": expected \"A>B\" or \"B>A\", found \"A=B\""), "{err}");
}

#[test]
fn generic_pairs_accept_conversational_chosen_and_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "conv.json",
        r#"[{"id": 7, "chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
             "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go away"}]}]"#,
    );
    let pairs = formats::load_pairs(&[p], &ReadOptions::default()).unwrap().records;
    assert_eq!(pairs[0].id, "7");
    assert_eq!(pairs[0].prompt.as_text(), "hi");
    assert_eq!((pairs[0].response_a.as_str(), pairs[0].response_b.as_str()), ("hello", "go away"));
    assert_eq!(pairs[0].label, Some(Label::A));
}

#[test]
fn formats_parse_from_their_names_and_aliases() {
    for f in Format::ALL {
        assert_eq!(f.name().parse::<Format>().unwrap(), f);
    }
    assert_eq!("ppe".parse::<Format>().unwrap(), Format::PpeBestOfK);
    assert!("nope".parse::<Format>().unwrap_err().contains("expected one of gramrr,"));
}
