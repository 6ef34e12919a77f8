//! Item-level checkpointing for the generation-heavy stages.
//!
//! A stage's items (pairs) are cut into fixed chunks by position: chunk `c` holds items
//! `c·size .. (c+1)·size`. Each process appends the finished items of a chunk to its own part
//! file (`parts/shard-I-of-N.jsonl`) in one write followed by an fsync, so a kill loses at most
//! the chunk in flight; a torn last line is cut off on reopening. On restart every part file is
//! read, and a chunk is computed again only if one of its items is missing: a chunk is always
//! computed whole, with the same members, so an interrupted run, a resumed run and a sharded run
//! send exactly the same batches to the model and produce the same outputs. `--shard i/n` deals
//! out the chunks with `c % n == i`; merging concatenates every part, drops duplicate ids, checks
//! that no item is missing and writes the canonical `items.jsonl` in item order.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{PipelineError, Result};

/// `i/n`: this process takes the chunks whose index modulo `n` is `i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    pub fn takes(&self, chunk: usize) -> bool {
        chunk % self.count == self.index
    }
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (i, n) = s.split_once('/').ok_or_else(|| format!("shard {s:?}: expected i/n, e.g. 0/4"))?;
        let index: usize = i.trim().parse().map_err(|_| format!("shard {s:?}: {i:?} is not a number"))?;
        let count: usize = n.trim().parse().map_err(|_| format!("shard {s:?}: {n:?} is not a number"))?;
        if count == 0 || index >= count {
            return Err(format!("shard {s:?}: need 0 ≤ i < n"));
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// What an item output must expose: its id and its position in the stage's input.
pub trait Keyed {
    fn id(&self) -> &str;
    fn index(&self) -> usize;
}

fn parts_dir(stage_dir: &Path) -> PathBuf {
    stage_dir.join("parts")
}

/// Reads a JSONL part file, cutting off a torn last line (a write interrupted by a kill).
fn read_part<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let bytes = std::fs::read(path).map_err(|e| PipelineError::io(path, e))?;
    let complete = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None => 0,
    };
    if complete < bytes.len() {
        let f = std::fs::OpenOptions::new().write(true).open(path).map_err(|e| PipelineError::io(path, e))?;
        f.set_len(complete as u64).map_err(|e| PipelineError::io(path, e))?;
    }
    let text = std::str::from_utf8(&bytes[..complete])
        .map_err(|e| PipelineError::Data { path: path.into(), line: 0, message: format!("not UTF-8: {e}") })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(line).map_err(|e| PipelineError::Data {
            path: path.into(),
            line: i + 1,
            message: e.to_string(),
        })?);
    }
    Ok(out)
}

/// Every item already written by any process into the stage's part files, by id.
pub fn load_parts<T: DeserializeOwned + Keyed>(stage_dir: &Path) -> Result<BTreeMap<String, T>> {
    let dir = parts_dir(stage_dir);
    let mut out = BTreeMap::new();
    if !dir.exists() {
        return Ok(out);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| PipelineError::io(&dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    for f in files {
        for item in read_part::<T>(&f)? {
            out.entry(item.id().to_string()).or_insert(item);
        }
    }
    Ok(out)
}

/// Appends whole chunks to one process's part file.
pub struct PartWriter {
    path: PathBuf,
    file: std::fs::File,
}

impl PartWriter {
    pub fn open(stage_dir: &Path, shard: Shard) -> Result<Self> {
        let dir = parts_dir(stage_dir);
        std::fs::create_dir_all(&dir).map_err(|e| PipelineError::io(&dir, e))?;
        let path = dir.join(format!("shard-{}-of-{}.jsonl", shard.index, shard.count));
        if path.exists() {
            // Cut a torn line before appending after it.
            read_part::<serde_json::Value>(&path)?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| PipelineError::io(&path, e))?;
        Ok(Self { path, file })
    }

    /// One write and one fsync per chunk.
    pub fn append<T: Serialize>(&mut self, items: &[T]) -> Result<()> {
        let mut buf = Vec::new();
        for it in items {
            serde_json::to_writer(&mut buf, it).expect("items serialize");
            buf.push(b'\n');
        }
        self.file.write_all(&buf).map_err(|e| PipelineError::io(&self.path, e))?;
        self.file.sync_data().map_err(|e| PipelineError::io(&self.path, e))?;
        Ok(())
    }
}

/// The chunks of `n` items this shard still has to compute, given the ids already written.
pub fn pending_chunks(ids: &[&str], chunk: usize, shard: Shard, done: &HashSet<&str>) -> Vec<std::ops::Range<usize>> {
    let n = ids.len();
    (0..n.div_ceil(chunk))
        .filter(|&c| shard.takes(c))
        .map(|c| c * chunk..((c + 1) * chunk).min(n))
        .filter(|r| ids[r.clone()].iter().any(|id| !done.contains(id)))
        .collect()
}

/// Runs `compute` on every pending chunk of this shard and appends its outputs (only the ids
/// not already written). `on_chunk` sees the number of items finished so far.
pub fn run_chunks<T, F>(
    stage_dir: &Path,
    ids: &[&str],
    chunk: usize,
    shard: Shard,
    mut compute: F,
    mut on_chunk: impl FnMut(usize, usize),
) -> Result<()>
where
    T: Serialize + DeserializeOwned + Keyed,
    F: FnMut(std::ops::Range<usize>) -> Result<Vec<T>>,
{
    let existing: BTreeMap<String, T> = load_parts(stage_dir)?;
    let done: HashSet<&str> = existing.keys().map(|s| s.as_str()).collect();
    let pending = pending_chunks(ids, chunk, shard, &done);
    let mine: usize = (0..ids.len().div_ceil(chunk))
        .filter(|&c| shard.takes(c))
        .map(|c| ((c + 1) * chunk).min(ids.len()) - c * chunk)
        .sum();
    let mut finished = mine - pending.iter().map(|r| r.len()).sum::<usize>();
    on_chunk(finished, mine);
    let mut writer = PartWriter::open(stage_dir, shard)?;
    for range in pending {
        let len = range.len();
        let outs = compute(range)?;
        let fresh: Vec<&T> = outs.iter().filter(|o| !done.contains(o.id())).collect();
        writer.append(&fresh)?;
        finished += len;
        on_chunk(finished, mine);
    }
    Ok(())
}

/// Merges every part into `items.jsonl` in item order, after checking that each of `ids` is
/// present exactly once (duplicates across parts are dropped; a missing id is an error naming
/// how many are missing and the first of them).
pub fn merge_parts<T>(stage_dir: &Path, stage: &str, ids: &[&str]) -> Result<Vec<T>>
where
    T: Serialize + DeserializeOwned + Keyed,
{
    let mut all: BTreeMap<String, T> = load_parts(stage_dir)?;
    let missing: Vec<&str> = ids.iter().copied().filter(|id| !all.contains_key(*id)).collect();
    if let Some(first) = missing.first() {
        return Err(PipelineError::stage(
            stage,
            format!(
                "cannot merge: {} of {} items have no output yet (first: {first:?}); run the missing shards, or the stage without --shard",
                missing.len(),
                ids.len()
            ),
        ));
    }
    let mut out: Vec<T> = Vec::with_capacity(ids.len());
    for id in ids {
        out.push(all.remove(*id).expect("checked above"));
    }
    let mut buf = Vec::new();
    for it in &out {
        serde_json::to_writer(&mut buf, it).expect("items serialize");
        buf.push(b'\n');
    }
    gramrr_model::fsutil::write_atomic(&stage_dir.join("items.jsonl"), &buf)?;
    Ok(out)
}

/// Reads a finished stage's `items.jsonl`.
pub fn read_items<T: DeserializeOwned>(stage_dir: &Path) -> Result<Vec<T>> {
    read_part(&stage_dir.join("items.jsonl"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct It {
        id: String,
        index: usize,
        v: u64,
    }
    impl Keyed for It {
        fn id(&self) -> &str {
            &self.id
        }
        fn index(&self) -> usize {
            self.index
        }
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("item-{i}")).collect()
    }

    fn compute(ids: &[String], r: std::ops::Range<usize>) -> Result<Vec<It>> {
        Ok(r.map(|i| It { id: ids[i].clone(), index: i, v: (i * i) as u64 }).collect())
    }

    #[test]
    fn shards_cover_every_chunk_once_and_merge_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let all = ids(23);
        let refs: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
        for i in [2, 0, 1] {
            let shard = Shard { index: i, count: 3 };
            run_chunks(tmp.path(), &refs, 4, shard, |r| compute(&all, r), |_, _| {}).unwrap();
        }
        let merged: Vec<It> = merge_parts(tmp.path(), "t", &refs).unwrap();
        assert_eq!(merged, compute(&all, 0..23).unwrap());
    }

    #[test]
    fn torn_lines_are_cut_and_missing_items_recomputed() {
        let tmp = tempfile::tempdir().unwrap();
        let all = ids(10);
        let refs: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
        // First run dies after two chunks, in the middle of writing a line.
        let mut calls = 0;
        let r = run_chunks(
            tmp.path(),
            &refs,
            3,
            Shard::WHOLE,
            |r| {
                calls += 1;
                if calls == 3 {
                    return Err(PipelineError::stage("t", "killed"));
                }
                compute(&all, r)
            },
            |_, _| {},
        );
        assert!(r.is_err());
        let part = tmp.path().join("parts/shard-0-of-1.jsonl");
        let mut f = std::fs::OpenOptions::new().append(true).open(&part).unwrap();
        f.write_all(b"{\"id\":\"item-6\",\"ind").unwrap();
        drop(f);
        assert!(merge_parts::<It>(tmp.path(), "t", &refs).is_err());
        let mut seen = Vec::new();
        run_chunks(tmp.path(), &refs, 3, Shard::WHOLE, |r| { seen.push(r.clone()); compute(&all, r) }, |_, _| {}).unwrap();
        assert_eq!(seen, vec![6..9, 9..10]);
        let merged: Vec<It> = merge_parts(tmp.path(), "t", &refs).unwrap();
        assert_eq!(merged, compute(&all, 0..10).unwrap());
        let lines = std::fs::read_to_string(&part).unwrap().lines().count();
        assert_eq!(lines, 10, "no duplicates in the part file");
    }

    #[test]
    fn shard_parses() {
        assert_eq!("1/4".parse::<Shard>().unwrap(), Shard { index: 1, count: 4 });
        assert!("4/4".parse::<Shard>().is_err());
        assert!("x".parse::<Shard>().is_err());
    }
}
