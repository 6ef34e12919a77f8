//! Parquet in the schemas of the Hugging Face-only datasets (RewardBench `filtered`, PPE
//! best-of-K, HelpSteer3 preference), written with the parquet crate's own writer as those
//! files are laid out (optional columns, 3-level LIST groups), then read back; and HelpSteer3's
//! published `.jsonl.gz` form.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use gramrr_data::formats::{self, Format, ReadOptions};
use gramrr_data::{Conversation, Label};
use parquet::basic::Compression;
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

/// One leaf column: its values, definition levels and (for lists) repetition levels.
enum Values {
    Str(Vec<String>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
}
struct Leaf {
    values: Values,
    def: Vec<i16>,
    rep: Option<Vec<i16>>,
}

/// An optional scalar column with every value present.
fn flat_str(v: &[&str]) -> Leaf {
    Leaf { values: Values::Str(v.iter().map(|s| s.to_string()).collect()), def: vec![1; v.len()], rep: None }
}
fn flat_i64(v: &[i64]) -> Leaf {
    Leaf { values: Values::I64(v.to_vec()), def: vec![1; v.len()], rep: None }
}
/// A leaf inside `optional group (LIST) { repeated group list { optional ... element } }`:
/// present values sit at definition level `depth`; a row's first element starts repetition 0.
fn list_leaf(rows: &[usize], values: Values, depth: i16) -> Leaf {
    let total: usize = rows.iter().sum();
    let rep = rows.iter().flat_map(|&n| (0..n).map(|i| if i == 0 { 0 } else { 1 })).collect();
    Leaf { values, def: vec![depth; total], rep: Some(rep) }
}

fn write_parquet(path: &Path, schema: &str, leaves: Vec<Leaf>) {
    let schema = Arc::new(parse_message_type(schema).unwrap());
    let props = Arc::new(WriterProperties::builder().set_compression(Compression::SNAPPY).build());
    let mut w = SerializedFileWriter::new(File::create(path).unwrap(), schema, props).unwrap();
    let mut rg = w.next_row_group().unwrap();
    let mut leaves = leaves.into_iter();
    while let Some(mut col) = rg.next_column().unwrap() {
        let leaf = leaves.next().expect("a leaf per schema column");
        let rep = leaf.rep.as_deref();
        match leaf.values {
            Values::Str(v) => {
                let v: Vec<ByteArray> = v.iter().map(|s| ByteArray::from(s.as_str())).collect();
                col.typed::<ByteArrayType>().write_batch(&v, Some(&leaf.def), rep).unwrap();
            }
            Values::I64(v) => {
                col.typed::<Int64Type>().write_batch(&v, Some(&leaf.def), rep).unwrap();
            }
            Values::Bool(v) => {
                col.typed::<BoolType>().write_batch(&v, Some(&leaf.def), rep).unwrap();
            }
        }
        col.close().unwrap();
    }
    rg.close().unwrap();
    w.close().unwrap();
}

#[test]
fn rewardbench_parquet_reads_as_subset_tagged_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("filtered-00000-of-00001.parquet");
    write_parquet(
        &path,
        "message schema {
            optional binary prompt (STRING);
            optional binary chosen (STRING);
            optional binary chosen_model (STRING);
            optional binary rejected (STRING);
            optional binary rejected_model (STRING);
            optional binary subset (STRING);
            optional int64 id;
        }",
        vec![
            flat_str(&["How do I bake bread?", "What is 2+2?", "Write hello world in Rust."]),
            flat_str(&["Mix flour, water, yeast...", "4", "fn main() { println!(\"hello world\"); }"]),
            flat_str(&["gpt-4", "gpt-4", "claude"]),
            flat_str(&["Buy it.", "5", "print('hello world')"]),
            flat_str(&["llama", "llama", "llama"]),
            flat_str(&["alpacaeval-easy", "math-prm", "hep-rust"]),
            flat_i64(&[30, 2401, 5012]),
        ],
    );
    let loaded = formats::load_pairs(&[path], &ReadOptions::default()).unwrap();
    assert_eq!(loaded.files[0].1, Format::RewardBench);
    let p = &loaded.records;
    assert_eq!(p.len(), 3);
    assert_eq!(p[1].id, "2401");
    assert_eq!(p[1].prompt, Conversation::Text("What is 2+2?".into()));
    assert_eq!((p[1].response_a.as_str(), p[1].response_b.as_str()), ("4", "5"));
    assert_eq!(p[2].metadata["subset"], "hep-rust");
    assert_eq!(p[0].metadata["chosen_model"], "gpt-4");
    assert!(p.iter().all(|p| p.label == Some(Label::A)));
}

const K: usize = 32;

fn ppe_schema() -> String {
    let mut s = String::from(
        "message schema {
            optional binary question_id (STRING);
            optional binary prompt (STRING);
            optional binary category (STRING);
            optional binary model_name (STRING);
            optional group scores (LIST) { repeated group list { optional boolean element; } }\n",
    );
    for i in 1..=K {
        s.push_str(&format!("optional binary response_{i} (STRING);\n"));
    }
    s.push('}');
    s
}

#[test]
fn ppe_best_of_k_parquet_reads_32_responses_with_correctness() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train-00000-of-00001.parquet");
    let correct: Vec<Vec<bool>> = (0..2).map(|r| (0..K).map(|i| (i + r) % 3 == 0).collect()).collect();
    let mut leaves = vec![
        flat_str(&["q1", "q1"]),
        flat_str(&["Solve x+1=2.", "Solve x+1=2."]),
        flat_str(&["math", "math"]),
        flat_str(&["llama-3-8b", "gemma-2-9b"]),
        list_leaf(&[K, K], Values::Bool(correct.concat()), 3),
    ];
    for i in 1..=K {
        let a = format!("sample {i} of llama");
        let b = format!("sample {i} of gemma");
        leaves.push(flat_str(&[&a, &b]));
    }
    write_parquet(&path, &ppe_schema(), leaves);
    let loaded = formats::load_candidates(&[path], &ReadOptions::default()).unwrap();
    assert_eq!(loaded.files[0].1, Format::PpeBestOfK);
    let c = &loaded.records;
    assert_eq!(c.len(), 2);
    assert_eq!(c[1].id, "q1/gemma-2-9b");
    assert_eq!(c[1].responses.len(), K);
    assert_eq!(c[1].responses[31], "sample 32 of gemma");
    assert_eq!(c[0].correct.as_ref().unwrap(), &correct[0]);
    assert_eq!(c[1].correct.as_ref().unwrap(), &correct[1]);
    assert_eq!(c[0].metadata["category"], "math");
}

#[test]
fn helpsteer3_parquet_reads_chat_context_and_annotator_reasons_as_rationale() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("validation.parquet");
    // Row 0: two context turns, response1 better (-2), two annotators. Row 1: a tie. Row 2:
    // one turn, response2 better (+1), one annotator.
    let ctx_rows = [3, 1, 1];
    write_parquet(
        &path,
        "message schema {
            optional binary domain (STRING);
            optional binary language (STRING);
            optional group context (LIST) { repeated group list { optional group element {
                optional binary role (STRING); optional binary content (STRING); } } }
            optional binary response1 (STRING);
            optional binary response2 (STRING);
            optional int64 overall_preference;
            optional group individual_preference (LIST) { repeated group list { optional group element {
                optional int64 score; optional binary reasoning (STRING); } } }
        }",
        vec![
            flat_str(&["code", "general", "stem"]),
            flat_str(&["python", "english", "english"]),
            list_leaf(&ctx_rows, Values::Str(["user", "assistant", "user", "user", "user"].map(String::from).to_vec()), 4),
            list_leaf(
                &ctx_rows,
                Values::Str(["Sort a list", "Use sorted()", "In place?", "Hi", "2+2?"].map(String::from).to_vec()),
                4,
            ),
            flat_str(&["Use list.sort().", "Hello!", "5"]),
            flat_str(&["Use sorted() again.", "Hi there!", "4"]),
            flat_i64(&[-2, 0, 1]),
            list_leaf(&[2, 1, 1], Values::I64(vec![-2, -1, 0, 2]), 4),
            list_leaf(
                &[2, 1, 1],
                Values::Str(
                    ["@Response 1 sorts in place as asked.", "@Response 2 ignores 'in place'.", "Same.", "@Response 2 is correct."]
                        .map(String::from)
                        .to_vec(),
                ),
                4,
            ),
        ],
    );
    let loaded = formats::load_pairs(&[&path], &ReadOptions::default()).unwrap();
    assert_eq!(loaded.files[0].1, Format::HelpSteer3);
    assert_eq!(loaded.dropped, 1, "the tie is dropped by default");
    let p = &loaded.records;
    assert_eq!(p.len(), 2);
    let Conversation::Messages(turns) = &p[0].prompt else { panic!("chat context expected") };
    assert_eq!(turns.len(), 3);
    assert_eq!((turns[1].role.as_str(), turns[1].content.as_str()), ("assistant", "Use sorted()"));
    assert_eq!(p[0].label, Some(Label::A));
    assert_eq!(
        p[0].rationale.as_deref(),
        Some("@Response 1 sorts in place as asked.\n\n@Response 2 ignores 'in place'.")
    );
    assert_eq!(p[0].metadata["individual_scores"], serde_json::json!([-2.0, -1.0]));
    assert_eq!(p[1].label, Some(Label::B));
    assert_eq!(p[1].id, "validation/2");

    let kept = formats::load_pairs(&[path], &ReadOptions { keep_ties: true, ..Default::default() }).unwrap();
    assert_eq!(kept.records.len(), 3);
    assert_eq!(kept.records[1].label, Some(Label::Tie));
}

#[test]
fn helpsteer3_jsonl_gz_as_published_reads_the_same_way() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("validation.jsonl.gz");
    let line = serde_json::json!({
        "domain": "general", "language": "english",
        "context": [{"role": "user", "content": "Name a colour."}],
        "response1": "Blue.", "response2": "Seven.",
        "overall_preference": -3,
        "individual_preference": [{"score": -3, "reasoning": "@Response 2 is not a colour."}],
    });
    let mut gz = flate2::write::GzEncoder::new(File::create(&path).unwrap(), flate2::Compression::default());
    writeln!(gz, "{line}").unwrap();
    gz.finish().unwrap();
    let p = formats::load_pairs(&[path], &ReadOptions::default()).unwrap().records;
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].label, Some(Label::A));
    assert_eq!(p[0].rationale.as_deref(), Some("@Response 2 is not a colour."));
}

#[test]
fn a_bad_parquet_row_names_its_row_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rb.parquet");
    write_parquet(
        &path,
        "message schema { optional binary prompt (STRING); optional binary chosen (STRING);
            optional int64 rejected; optional binary subset (STRING); }",
        vec![flat_str(&["p", "q"]), flat_str(&["a", "b"]), flat_i64(&[1, 2]), flat_str(&["s", "s"])],
    );
    let opts = ReadOptions { format: Some(Format::RewardBench), ..Default::default() };
    let err = formats::load_pairs(&[path], &opts).unwrap_err().to_string();
    assert!(err.ends_with("rb.parquet: row 0: field \"rejected\": expected a string, found a number"), "{err}");
}
