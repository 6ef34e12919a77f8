//! Raw records out of data files: JSON (one array, or one object), JSONL, either gzip'd, and
//! Parquet. This layer knows encodings, not schemas; [`crate::formats`] turns the raw values
//! into canonical records.
//!
//! Positions in errors are how a person finds the record again: `line N` (1-based, as editors
//! count) for JSONL, `record N` (0-based, as `jq '.[N]'` counts) for a JSON array, and `row N`
//! (0-based, as pandas counts) for Parquet.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Where a record sits in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loc {
    /// 0-based index in a JSON array.
    Record(usize),
    /// 1-based line of a JSONL file.
    Line(usize),
    /// 0-based Parquet row.
    Row(usize),
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loc::Record(i) => write!(f, "record {i}"),
            Loc::Line(i) => write!(f, "line {i}"),
            Loc::Row(i) => write!(f, "row {i}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The whole file is unusable (not JSON, not Parquet, unknown format...).
    #[error("{path}: {problem}")]
    File { path: String, problem: String },
    /// One record is not valid JSON or not an object.
    #[error("{path}: {loc}: {problem}")]
    Record { path: String, loc: Loc, problem: String },
    /// One field of one record is missing or has the wrong shape.
    #[error("{path}: {loc}: field \"{field}\": {problem}")]
    Field { path: String, loc: Loc, field: String, problem: String },
}

impl ReadError {
    /// Errors confined to one record, which `--skip-bad` may step over. A broken file is not.
    pub fn is_record_level(&self) -> bool {
        matches!(self, ReadError::Record { .. } | ReadError::Field { .. })
    }
    pub fn path(&self) -> &str {
        match self {
            ReadError::Io { path, .. }
            | ReadError::File { path, .. }
            | ReadError::Record { path, .. }
            | ReadError::Field { path, .. } => path,
        }
    }
}

/// How a file's bytes are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// A JSON array of records (or a single object); JSONL content in a `.json` file is accepted.
    Json,
    Jsonl,
    Parquet,
}

/// One record as read, before any schema is applied.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRecord {
    pub loc: Loc,
    pub value: Value,
}

/// All records of one file. A JSONL line that is not JSON is kept as an error in place so that
/// `--skip-bad` can count it and go on; the other records are unaffected.
#[derive(Debug)]
pub struct RawFile {
    pub path: String,
    pub records: Vec<Result<RawRecord, ReadError>>,
}

/// The encoding a file name announces, and whether it is gzip'd. `None` for names that say
/// nothing; [`read_raw`] then looks at the first bytes.
pub fn encoding_from_name(path: &Path) -> Option<(Encoding, bool)> {
    let name = path.file_name()?.to_str()?.to_ascii_lowercase();
    let (stem, gz) = match name.strip_suffix(".gz") {
        Some(s) => (s.to_string(), true),
        None => (name, false),
    };
    let enc = if stem.ends_with(".parquet") {
        Encoding::Parquet
    } else if stem.ends_with(".jsonl") || stem.ends_with(".ndjson") {
        Encoding::Jsonl
    } else if stem.ends_with(".json") {
        Encoding::Json
    } else {
        return None;
    };
    Some((enc, gz))
}

/// Whether a directory walk should pick this file up.
pub fn is_data_file(path: &Path) -> bool {
    let hidden = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
    !hidden && encoding_from_name(path).is_some()
}

/// Files named on the command line, with directories replaced by the data files under them
/// (recursively, sorted, so that runs are reproducible).
pub fn expand_paths<P: AsRef<Path>>(inputs: &[P]) -> Result<Vec<PathBuf>, ReadError> {
    let mut out = Vec::new();
    for input in inputs {
        let input = input.as_ref();
        let meta = std::fs::metadata(input).map_err(|e| io_err(input, e))?;
        if meta.is_dir() {
            let before = out.len();
            walk(input, &mut out)?;
            if out.len() == before {
                return Err(ReadError::File {
                    path: input.display().to_string(),
                    problem: "directory holds no .json, .jsonl, .jsonl.gz or .parquet file".into(),
                });
            }
        } else {
            out.push(input.to_path_buf());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ReadError> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io_err(dir, e))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(|e| io_err(dir, e))?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else if is_data_file(&p) {
            out.push(p);
        }
    }
    Ok(())
}

fn io_err(path: &Path, source: std::io::Error) -> ReadError {
    ReadError::Io { path: path.display().to_string(), source }
}

/// Reads every record of one file.
pub fn read_raw(path: &Path) -> Result<RawFile, ReadError> {
    let shown = path.display().to_string();
    let (enc, gz) = match encoding_from_name(path) {
        Some(x) => x,
        None => sniff(path)?,
    };
    let records = match enc {
        Encoding::Parquet if gz => {
            return Err(ReadError::File {
                path: shown,
                problem: "gzip'd Parquet is not supported (Parquet compresses its own pages)".into(),
            })
        }
        Encoding::Parquet => read_parquet(path, &shown)?,
        Encoding::Json | Encoding::Jsonl => {
            let text = read_text(path, gz)?;
            if enc == Encoding::Jsonl {
                read_jsonl(&text, &shown)
            } else {
                read_json(&text, &shown)?
            }
        }
    };
    Ok(RawFile { path: shown, records })
}

fn sniff(path: &Path) -> Result<(Encoding, bool), ReadError> {
    let mut head = [0u8; 4];
    let mut f = File::open(path).map_err(|e| io_err(path, e))?;
    let n = f.read(&mut head).map_err(|e| io_err(path, e))?;
    Ok(match &head[..n] {
        b"PAR1" => (Encoding::Parquet, false),
        [0x1f, 0x8b, ..] => (Encoding::Json, true),
        _ => (Encoding::Json, false),
    })
}

fn read_text(path: &Path, gz: bool) -> Result<String, ReadError> {
    let f = File::open(path).map_err(|e| io_err(path, e))?;
    let mut text = String::new();
    let res = if gz {
        flate2::read::MultiGzDecoder::new(BufReader::new(f)).read_to_string(&mut text)
    } else {
        BufReader::new(f).read_to_string(&mut text)
    };
    res.map_err(|e| io_err(path, e))?;
    Ok(text)
}

fn read_jsonl(text: &str, shown: &str) -> Vec<Result<RawRecord, ReadError>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let loc = Loc::Line(i + 1);
            serde_json::from_str::<Value>(line)
                .map(|value| RawRecord { loc, value })
                .map_err(|e| ReadError::Record {
                    path: shown.to_string(),
                    loc,
                    problem: format!("not valid JSON: {e}"),
                })
        })
        .collect()
}

fn read_json(text: &str, shown: &str) -> Result<Vec<Result<RawRecord, ReadError>>, ReadError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(items)) => Ok(items
            .into_iter()
            .enumerate()
            .map(|(i, value)| Ok(RawRecord { loc: Loc::Record(i), value }))
            .collect()),
        Ok(value @ Value::Object(_)) => Ok(vec![Ok(RawRecord { loc: Loc::Record(0), value })]),
        Ok(other) => Err(ReadError::File {
            path: shown.to_string(),
            problem: format!("expected a JSON array of records, found {}", describe(&other)),
        }),
        // Many ".json" files in the wild are JSON lines; a parse that fails on the second value
        // is the sign of it.
        Err(e) if e.is_syntax() && text.trim_start().starts_with('{') && e.line() > 1 => {
            Ok(read_jsonl(text, shown))
        }
        Err(e) => Err(ReadError::File { path: shown.to_string(), problem: format!("not valid JSON: {e}") }),
    }
}

fn read_parquet(path: &Path, shown: &str) -> Result<Vec<Result<RawRecord, ReadError>>, ReadError> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let perr = |e: parquet::errors::ParquetError| ReadError::File {
        path: shown.to_string(),
        problem: format!("Parquet: {e}"),
    };
    let f = File::open(path).map_err(|e| io_err(path, e))?;
    let reader = SerializedFileReader::new(f).map_err(perr)?;
    let rows = reader.get_row_iter(None).map_err(perr)?;
    let mut out = Vec::new();
    for (i, row) in rows.enumerate() {
        let row = row.map_err(|e| ReadError::Record {
            path: shown.to_string(),
            loc: Loc::Row(i),
            problem: format!("Parquet: {e}"),
        })?;
        out.push(Ok(RawRecord { loc: Loc::Row(i), value: row.to_json_value() }));
    }
    Ok(out)
}

/// A short description of a JSON value's shape, for "expected X, found Y" messages.
pub fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => "a boolean".into(),
        Value::Number(_) => "a number".into(),
        Value::String(_) => "a string".into(),
        Value::Array(a) => format!("a list of {}", a.len()),
        Value::Object(_) => "an object".into(),
    }
}

/// Reads lines of a (possibly gzip'd) text file lazily; for big JSONL inputs such as per-item
/// result files.
pub fn open_lines(path: &Path) -> Result<Box<dyn BufRead>, ReadError> {
    let f = File::open(path).map_err(|e| io_err(path, e))?;
    let gz = path.extension().is_some_and(|e| e == "gz");
    Ok(if gz {
        Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(BufReader::new(f))))
    } else {
        Box::new(BufReader::new(f))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_announce_encoding_and_gzip() {
        assert_eq!(encoding_from_name(Path::new("a/test.jsonl.gz")), Some((Encoding::Jsonl, true)));
        assert_eq!(encoding_from_name(Path::new("x.JSON")), Some((Encoding::Json, false)));
        assert_eq!(encoding_from_name(Path::new("f.parquet")), Some((Encoding::Parquet, false)));
        assert_eq!(encoding_from_name(Path::new("README.md")), None);
    }

    #[test]
    fn jsonl_content_in_a_json_file_is_read_line_by_line() {
        let recs = read_json("{\"a\": 1}\n{\"a\": 2}\n", "x.json").unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1].as_ref().unwrap().loc, Loc::Line(2));
    }

    #[test]
    fn a_broken_jsonl_line_is_an_error_in_place_naming_its_line() {
        let recs = read_jsonl("{\"a\": 1}\n\n{oops\n{\"a\": 3}\n", "f.jsonl");
        assert_eq!(recs.len(), 3);
        let err = recs[1].as_ref().unwrap_err().to_string();
        assert!(err.starts_with("f.jsonl: line 3: not valid JSON"), "{err}");
        assert_eq!(recs[2].as_ref().unwrap().loc, Loc::Line(4));
    }
}
