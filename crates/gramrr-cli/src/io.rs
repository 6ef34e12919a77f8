//! Line-oriented input and output shared by the subcommands.

use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Reads a JSONL file into typed records; an error names the file, the line and serde's
/// description of the bad field. Blank lines are skipped.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("{}: line {}: reading", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let rec = serde_json::from_str(&line)
            .with_context(|| format!("{}: line {}: invalid record", path.display(), i + 1))?;
        out.push(rec);
    }
    Ok(out)
}

/// Writes records as JSONL to `path` through a temporary file renamed at the end, so a
/// crashed run never leaves a truncated output that looks complete.
pub struct JsonlWriter {
    tmp: PathBuf,
    path: PathBuf,
    w: BufWriter<std::fs::File>,
}

impl JsonlWriter {
    pub fn create(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let tmp = path.with_extension(format!(
            "{}.partial",
            path.extension().and_then(|e| e.to_str()).unwrap_or("jsonl")
        ));
        let f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        Ok(Self { tmp, path: path.to_path_buf(), w: BufWriter::new(f) })
    }

    pub fn write<T: Serialize>(&mut self, rec: &T) -> Result<()> {
        serde_json::to_writer(&mut self.w, rec)?;
        self.w.write_all(b"\n")?;
        Ok(())
    }

    pub fn finish(mut self) -> Result<()> {
        self.w.flush()?;
        self.w.get_ref().sync_all()?;
        std::fs::rename(&self.tmp, &self.path)
            .with_context(|| format!("renaming {} to {}", self.tmp.display(), self.path.display()))?;
        Ok(())
    }
}

pub fn progress_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>12} [{bar:30}] {pos}/{len} {per_sec} eta {eta} ({elapsed})",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}
