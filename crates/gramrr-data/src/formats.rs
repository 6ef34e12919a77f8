//! Adapters from public benchmark and preference-data schemas to the canonical records
//! ([`PreferencePair`], [`CandidateList`]), plus the two source-shaped records whose structure
//! the evaluators need and a flat pair list would lose: RM-Bench's 3×3 styles
//! ([`RmBenchRecord`]) and JudgeBench's recorded judge outputs ([`JudgeBenchOutput`]).
//!
//! A file's format is given ([`ReadOptions::format`]) or detected from the fields of its first
//! record ([`Format::detect`]). Every schema error names the file, the record's position and the
//! field.
//!
//! Item ids are stable and unique across the files of one benchmark, because scores files and
//! resumed runs are keyed by them. Where the source has no id (LLMBar, HH-RLHF, HelpSteer3), the
//! id is built from the file's place in the benchmark and the record's 0-based index.

#[path = "formats_adapters.rs"]
mod adapters;

use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::read::{describe, expand_paths, read_raw, Loc, RawRecord, ReadError};
use crate::record::{CandidateList, Conversation, Label, PreferencePair};

pub use adapters::{hh_split, judgebench_decision, llmbar_set_from_path};

/// The schemas gramrr reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// gramrr's own [`PreferencePair`] JSON.
    Gramrr,
    /// gramrr's own [`CandidateList`] JSON.
    GramrrCandidates,
    /// `{prompt, chosen, rejected}` (strings, or chat-message lists), optional `id`.
    Pairs,
    /// RM-Bench: `{id, prompt, subset, chosen: [3], rejected: [3]}`.
    RmBench,
    /// JudgeBench pairs: `{pair_id, source, question, response_A, response_B, label}`.
    JudgeBench,
    /// JudgeBench judge outputs: a pair plus `judge_name` and `judgments` (two orders).
    JudgeBenchOutput,
    /// RewardBench: `{id, prompt, chosen, chosen_model, rejected, rejected_model, subset}`.
    RewardBench,
    /// LLMBar: `{input, output_1, output_2, label: 1|2}`.
    LlmBar,
    /// RMB pairwise: `{pair_uid, conversation_input, chosen: {answer}, reject: {answer}, category_path}`.
    RmbPairwise,
    /// RMB best-of-N: `{bon_uid, conversation_input, bon_best, loser_list, category_path}`.
    RmbBestOfN,
    /// Anthropic HH-RLHF: `{chosen, rejected}` whole dialogues ("\n\nHuman: ...\n\nAssistant: ...").
    HhRlhf,
    /// HelpSteer3 preference: `{context, response1, response2, overall_preference, individual_preference}`.
    HelpSteer3,
    /// PPE best-of-K: `{question_id, prompt, response_1..response_K, scores: [K bools]}`.
    PpeBestOfK,
}

/// What a format's records become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Pairs,
    Candidates,
}

impl Format {
    pub const ALL: [Format; 13] = [
        Format::Gramrr,
        Format::GramrrCandidates,
        Format::Pairs,
        Format::RmBench,
        Format::JudgeBench,
        Format::JudgeBenchOutput,
        Format::RewardBench,
        Format::LlmBar,
        Format::RmbPairwise,
        Format::RmbBestOfN,
        Format::HhRlhf,
        Format::HelpSteer3,
        Format::PpeBestOfK,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Format::Gramrr => "gramrr",
            Format::GramrrCandidates => "gramrr-candidates",
            Format::Pairs => "pairs",
            Format::RmBench => "rm-bench",
            Format::JudgeBench => "judgebench",
            Format::JudgeBenchOutput => "judgebench-output",
            Format::RewardBench => "rewardbench",
            Format::LlmBar => "llmbar",
            Format::RmbPairwise => "rmb-pairwise",
            Format::RmbBestOfN => "rmb-bon",
            Format::HhRlhf => "hh-rlhf",
            Format::HelpSteer3 => "helpsteer3",
            Format::PpeBestOfK => "ppe-bok",
        }
    }

    pub fn shape(self) -> Shape {
        match self {
            Format::GramrrCandidates | Format::RmbBestOfN | Format::PpeBestOfK => Shape::Candidates,
            _ => Shape::Pairs,
        }
    }

    /// The format a record's fields announce. Checked from the most specific schema to the most
    /// generic, because several share `chosen`/`rejected`.
    pub fn detect(record: &Value) -> Option<Format> {
        let o = record.as_object()?;
        let has = |k: &str| o.contains_key(k);
        let f = if has("judgments") && has("pair_id") {
            Format::JudgeBenchOutput
        } else if has("pair_id") && has("response_A") && has("response_B") {
            Format::JudgeBench
        } else if has("bon_best") && has("loser_list") {
            Format::RmbBestOfN
        } else if has("conversation_input") && has("chosen") && has("reject") {
            Format::RmbPairwise
        } else if has("output_1") && has("output_2") && has("label") {
            Format::LlmBar
        } else if has("response1") && has("response2") && has("overall_preference") {
            Format::HelpSteer3
        } else if has("response_1") && has("response_3") {
            Format::PpeBestOfK
        } else if has("chosen") && has("rejected") {
            let chosen = &o["chosen"];
            let is_styles = chosen
                .as_array()
                .is_some_and(|a| a.len() == 3 && a.iter().all(Value::is_string));
            let is_dialogue = chosen.as_str().is_some_and(|s| s.starts_with("\n\nHuman:"));
            if is_styles && has("prompt") {
                Format::RmBench
            } else if is_dialogue && !has("prompt") {
                Format::HhRlhf
            } else if chosen.is_string() && has("prompt") && has("subset") {
                Format::RewardBench
            } else {
                Format::Pairs
            }
        } else if has("response_a") && has("response_b") && has("prompt") {
            Format::Gramrr
        } else if has("responses") && has("prompt") {
            Format::GramrrCandidates
        } else {
            return None;
        };
        Some(f)
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.to_ascii_lowercase().replace('_', "-");
        let alias = match s.as_str() {
            "rmbench" => "rm-bench",
            "hh" | "hhrlhf" | "anthropic-hh" => "hh-rlhf",
            "rmb" => "rmb-pairwise",
            "ppe" => "ppe-bok",
            "helpsteer" | "helpsteer3-preference" => "helpsteer3",
            "reward-bench" => "rewardbench",
            other => other,
        };
        Format::ALL.into_iter().find(|f| f.name() == alias).ok_or_else(|| {
            let names: Vec<&str> = Format::ALL.iter().map(|f| f.name()).collect();
            format!("unknown format {s:?}; expected one of {}", names.join(", "))
        })
    }
}

/// How to read.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// The schema of every file; `None` detects it per file from the first record.
    pub format: Option<Format>,
    /// Step over bad records (counting them in [`Loaded::skipped`]) instead of failing.
    pub skip_bad: bool,
    /// Keep HelpSteer3 ties (`overall_preference == 0`) as [`Label::Tie`]; dropped by default.
    pub keep_ties: bool,
}

/// Records read from one or more files.
#[derive(Debug)]
pub struct Loaded<T> {
    pub records: Vec<T>,
    /// The bad records stepped over under `skip_bad`, each with its file, position and field.
    pub skipped: Vec<ReadError>,
    /// Records left out on purpose (HelpSteer3 ties), not errors.
    pub dropped: usize,
    /// Each file read, with its format.
    pub files: Vec<(String, Format)>,
}

impl<T> Default for Loaded<T> {
    fn default() -> Self {
        Loaded { records: Vec::new(), skipped: Vec::new(), dropped: 0, files: Vec::new() }
    }
}

/// RM-Bench's three styles, in the index order of `chosen`/`rejected`.
pub const RM_BENCH_STYLES: [&str; 3] = ["concise", "detailed", "markdown"];

/// One RM-Bench record: three chosen and three rejected responses, one per style.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RmBenchRecord {
    /// The source's integer id, as text. Not unique across domain files; see [`Self::item_id`].
    pub id: String,
    /// `chat`, `code`, `math`, `safety-refuse` or `safety-response`: the record's `domain` field
    /// when it has one (total_dataset.json), else the file name without `_filtered.json`.
    pub domain: String,
    pub subset: String,
    pub prompt: String,
    pub chosen: [String; 3],
    pub rejected: [String; 3],
    /// The remaining source fields (error, error_key, language, task_id...).
    pub metadata: Map<String, Value>,
}

impl RmBenchRecord {
    /// `domain/id`, unique across the five files.
    pub fn item_id(&self) -> String {
        format!("{}/{}", self.domain, self.id)
    }

    /// The 9 chosen-vs-rejected comparisons as pairs (chosen is A, label A), with the style
    /// indices in `metadata.chosen_style` / `metadata.rejected_style`.
    pub fn to_pairs(&self) -> Vec<PreferencePair> {
        let mut out = Vec::with_capacity(9);
        for i in 0..3 {
            for j in 0..3 {
                let mut metadata = self.metadata.clone();
                metadata.insert("domain".into(), self.domain.clone().into());
                metadata.insert("subset".into(), self.subset.clone().into());
                metadata.insert("chosen_style".into(), i.into());
                metadata.insert("rejected_style".into(), j.into());
                out.push(PreferencePair {
                    id: format!("{}/c{i}r{j}", self.item_id()),
                    prompt: Conversation::Text(self.prompt.clone()),
                    response_a: self.chosen[i].clone(),
                    response_b: self.rejected[j].clone(),
                    label: Some(Label::A),
                    rationale: None,
                    metadata,
                });
            }
        }
        out
    }
}

/// One judgment recorded in a JudgeBench output file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedJudgment {
    /// `A>B` → A, `B>A` → B, `A=B` → Tie; `None` for a null or any other decision. In the
    /// order the judge saw the pair (the second judgment of a pair is the swapped order).
    pub decision: Option<Label>,
    /// The decision string as written, when it was a string.
    pub raw_decision: Option<String>,
    pub judge_model: Option<String>,
    /// The judge's text (its rationale), when it wrote one.
    pub response: Option<String>,
    /// Reward-model scores `[first shown, second shown]`, when the judge is a reward model.
    pub scores: Option<Vec<f64>>,
}

/// A JudgeBench pair with the judgments a judge recorded for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeBenchOutput {
    pub pair: PreferencePair,
    pub judge_name: Option<String>,
    /// Usually two: the (A, B) order, then the (B, A) order. A null judgment is `None`.
    pub judgments: Vec<Option<RecordedJudgment>>,
}

/// One record of one file, with what is needed to name it in errors.
pub(crate) struct Rec<'a> {
    pub path: &'a str,
    pub file: &'a Path,
    pub loc: Loc,
    pub index: usize,
    pub obj: &'a Map<String, Value>,
}

impl<'a> Rec<'a> {
    pub fn err(&self, field: &str, problem: impl Into<String>) -> ReadError {
        ReadError::Field {
            path: self.path.to_string(),
            loc: self.loc,
            field: field.to_string(),
            problem: problem.into(),
        }
    }
    pub fn get(&self, field: &str) -> Result<&'a Value, ReadError> {
        self.obj.get(field).ok_or_else(|| self.err(field, "missing"))
    }
    pub fn string(&self, field: &str) -> Result<String, ReadError> {
        match self.get(field)? {
            Value::String(s) => Ok(s.clone()),
            other => Err(self.err(field, format!("expected a string, found {}", describe(other)))),
        }
    }
    pub fn opt_string(&self, field: &str) -> Result<Option<String>, ReadError> {
        match self.obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.string(field).map(Some),
        }
    }
    /// An id given as a string or an integer.
    pub fn id(&self, field: &str) -> Result<String, ReadError> {
        match self.get(field)? {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
            other => Err(self.err(
                field,
                format!("expected a string or integer id, found {}", describe(other)),
            )),
        }
    }
    pub fn opt_id(&self, field: &str) -> Result<Option<String>, ReadError> {
        match self.obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.id(field).map(Some),
        }
    }
    pub fn strings(&self, field: &str, n: usize) -> Result<Vec<String>, ReadError> {
        let expected = format!("expected a list of {n} strings");
        match self.get(field)? {
            Value::Array(a) if a.len() == n => a
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| self.err(field, format!("{expected}, found a non-string item"))),
            Value::Array(a) => Err(self.err(field, format!("{expected}, found {}", a.len()))),
            other => Err(self.err(field, format!("{expected}, found {}", describe(other)))),
        }
    }
    /// The other fields, kept as metadata.
    pub fn rest(&self, used: &[&str]) -> Map<String, Value> {
        self.obj
            .iter()
            .filter(|(k, _)| !used.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
    /// The file name without data extensions (`chat_filtered.json` → `chat_filtered`).
    pub fn file_stem(&self) -> String {
        let name = self.file.file_name().and_then(|n| n.to_str()).unwrap_or("data");
        let mut s = name;
        for ext in [".gz", ".parquet", ".jsonl", ".ndjson", ".json"] {
            s = s.strip_suffix(ext).unwrap_or(s);
        }
        s.to_string()
    }
}

/// One record converted.
pub(crate) enum Parsed {
    Pair(PreferencePair),
    Candidates(CandidateList),
    RmBench(RmBenchRecord),
    JudgeBench(JudgeBenchOutput),
    /// Left out on purpose (a HelpSteer3 tie without `keep_ties`).
    Dropped,
}

fn parse_one(format: Format, rec: &Rec, opts: &ReadOptions) -> Result<Parsed, ReadError> {
    use adapters::*;
    Ok(match format {
        Format::Gramrr => Parsed::Pair(serde_record(rec)?),
        Format::GramrrCandidates => Parsed::Candidates(serde_record(rec)?),
        Format::Pairs => Parsed::Pair(generic_pair(rec)?),
        Format::RmBench => Parsed::RmBench(rm_bench(rec)?),
        Format::JudgeBench => Parsed::Pair(judgebench_pair(rec)?),
        Format::JudgeBenchOutput => Parsed::JudgeBench(judgebench_output(rec)?),
        Format::RewardBench => Parsed::Pair(rewardbench(rec)?),
        Format::LlmBar => Parsed::Pair(llmbar(rec)?),
        Format::RmbPairwise => Parsed::Pair(rmb_pairwise(rec)?),
        Format::RmbBestOfN => Parsed::Candidates(rmb_bon(rec)?),
        Format::HhRlhf => Parsed::Pair(hh_rlhf(rec)?),
        Format::HelpSteer3 => match helpsteer3(rec, opts.keep_ties)? {
            Some(p) => Parsed::Pair(p),
            None => Parsed::Dropped,
        },
        Format::PpeBestOfK => Parsed::Candidates(ppe_bok(rec)?),
    })
}

/// Reads files (directories are walked) and converts each record with `convert`, which says
/// whether the record's format fits what the caller wants.
fn load_with<T, P: AsRef<Path>>(
    paths: &[P],
    opts: &ReadOptions,
    wanted: &str,
    mut convert: impl FnMut(Parsed, &mut Vec<T>) -> Result<(), String>,
) -> Result<Loaded<T>, ReadError> {
    let mut out = Loaded::default();
    for file in expand_paths(paths)? {
        let raw = read_raw(&file)?;
        let format = match opts.format {
            Some(f) => f,
            None => detect_file(&raw.path, &raw.records)?,
        };
        out.files.push((raw.path.clone(), format));
        for (index, r) in raw.records.iter().enumerate() {
            let result = match r {
                Err(e) => Err(clone_err(e)),
                Ok(RawRecord { loc, value }) => match value.as_object() {
                    None => Err(ReadError::Record {
                        path: raw.path.clone(),
                        loc: *loc,
                        problem: format!("expected an object, found {}", describe(value)),
                    }),
                    Some(obj) => {
                        let rec = Rec { path: &raw.path, file: &file, loc: *loc, index, obj };
                        parse_one(format, &rec, opts)
                    }
                },
            };
            match result {
                Ok(Parsed::Dropped) => out.dropped += 1,
                Ok(parsed) => convert(parsed, &mut out.records).map_err(|problem| ReadError::File {
                    path: raw.path.clone(),
                    problem: format!("format {format} does not give {wanted}: {problem}"),
                })?,
                Err(e) if opts.skip_bad && e.is_record_level() => out.skipped.push(e),
                Err(e) => return Err(e),
            }
        }
    }
    Ok(out)
}

fn clone_err(e: &ReadError) -> ReadError {
    match e {
        ReadError::Record { path, loc, problem } => {
            ReadError::Record { path: path.clone(), loc: *loc, problem: problem.clone() }
        }
        ReadError::Field { path, loc, field, problem } => ReadError::Field {
            path: path.clone(),
            loc: *loc,
            field: field.clone(),
            problem: problem.clone(),
        },
        other => ReadError::File { path: other.path().to_string(), problem: other.to_string() },
    }
}

fn detect_file(path: &str, records: &[Result<RawRecord, ReadError>]) -> Result<Format, ReadError> {
    let first = records.iter().find_map(|r| r.as_ref().ok());
    let Some(first) = first else {
        return Err(ReadError::File { path: path.into(), problem: "no records".into() });
    };
    Format::detect(&first.value).ok_or_else(|| {
        let keys: Vec<String> = first
            .value
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        ReadError::File {
            path: path.into(),
            problem: format!(
                "cannot tell the format from the fields of {} ({}); give it with --format",
                first.loc,
                keys.join(", ")
            ),
        }
    })
}

/// Preference pairs from any pair format. RM-Bench records become their 9 pairs and JudgeBench
/// outputs their pair; candidate-list formats are refused.
pub fn load_pairs<P: AsRef<Path>>(paths: &[P], opts: &ReadOptions) -> Result<Loaded<PreferencePair>, ReadError> {
    load_with(paths, opts, "preference pairs", |p, out| {
        match p {
            Parsed::Pair(x) => out.push(x),
            Parsed::RmBench(r) => out.extend(r.to_pairs()),
            Parsed::JudgeBench(j) => out.push(j.pair),
            Parsed::Candidates(_) => return Err("it holds candidate lists".into()),
            Parsed::Dropped => {}
        }
        Ok(())
    })
}

/// Candidate lists (best-of-N) from RMB best-of-N, PPE best-of-K or gramrr's own form.
pub fn load_candidates<P: AsRef<Path>>(
    paths: &[P],
    opts: &ReadOptions,
) -> Result<Loaded<CandidateList>, ReadError> {
    load_with(paths, opts, "candidate lists", |p, out| match p {
        Parsed::Candidates(c) => {
            out.push(c);
            Ok(())
        }
        _ => Err("it holds pairs".into()),
    })
}

/// RM-Bench records, keeping the 3×3 structure.
pub fn load_rm_bench<P: AsRef<Path>>(paths: &[P], opts: &ReadOptions) -> Result<Loaded<RmBenchRecord>, ReadError> {
    let opts = ReadOptions { format: Some(opts.format.unwrap_or(Format::RmBench)), ..opts.clone() };
    load_with(paths, &opts, "RM-Bench records", |p, out| match p {
        Parsed::RmBench(r) => {
            out.push(r);
            Ok(())
        }
        _ => Err("only rm-bench does".into()),
    })
}

/// JudgeBench judge-output files (pairs with recorded judgments).
pub fn load_judgebench_outputs<P: AsRef<Path>>(
    paths: &[P],
    opts: &ReadOptions,
) -> Result<Loaded<JudgeBenchOutput>, ReadError> {
    let opts =
        ReadOptions { format: Some(opts.format.unwrap_or(Format::JudgeBenchOutput)), ..opts.clone() };
    load_with(paths, &opts, "JudgeBench judgments", |p, out| match p {
        Parsed::JudgeBench(r) => {
            out.push(r);
            Ok(())
        }
        _ => Err("only judgebench-output does".into()),
    })
}

/// Canonical records of any format, for conversion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AnyRecord {
    Pair(PreferencePair),
    Candidates(CandidateList),
}

/// Any format, as canonical records: pairs for pair formats (RM-Bench as its 9 pairs), candidate
/// lists for best-of-N formats.
pub fn load_any<P: AsRef<Path>>(paths: &[P], opts: &ReadOptions) -> Result<Loaded<AnyRecord>, ReadError> {
    load_with(paths, opts, "records", |p, out| {
        match p {
            Parsed::Pair(x) => out.push(AnyRecord::Pair(x)),
            Parsed::RmBench(r) => out.extend(r.to_pairs().into_iter().map(AnyRecord::Pair)),
            Parsed::JudgeBench(j) => out.push(AnyRecord::Pair(j.pair)),
            Parsed::Candidates(c) => out.push(AnyRecord::Candidates(c)),
            Parsed::Dropped => {}
        }
        Ok(())
    })
}

/// Reads one file's records without converting them: for `data inspect`.
pub fn detect_format(path: &Path) -> Result<(Format, usize), ReadError> {
    let raw = read_raw(path)?;
    let f = detect_file(&raw.path, &raw.records)?;
    Ok((f, raw.records.len()))
}
