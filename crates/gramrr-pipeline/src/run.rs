//! The run directory and its manifest.
//!
//! `manifest.json` records the configuration, the content hashes of the input files, and for
//! every stage its key, its status, the hashes of its outputs, its statistics and its time. A
//! stage's key is the hash of its settings and of the hashes of everything it reads (input
//! files, upstream stages' outputs), so a rerun skips a stage whose key is unchanged and redoes
//! one whose configuration or inputs changed — and, through the hashes, everything downstream.
//! A stage that was interrupted (status `running`, same key) continues where it stopped.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{PipelineError, Result};

pub const MANIFEST: &str = "manifest.json";
const STAGE_KEY_FILE: &str = "stage.key";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHash {
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageStatus {
    Running,
    Done,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub key: String,
    pub status: StageStatus,
    /// The hashes that went into the key, by name.
    pub inputs: BTreeMap<String, String>,
    pub outputs: BTreeMap<String, FileHash>,
    #[serde(default)]
    pub stats: serde_json::Value,
    #[serde(default)]
    pub seconds: f64,
}

impl StageRecord {
    /// The content hash of output `name` (a file's sha256, or a model's fingerprint).
    pub fn output_hash(&self, name: &str) -> Option<&str> {
        self.outputs.get(name).map(|h| h.sha256.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    /// The resolved configuration.
    pub config: serde_json::Value,
    pub inputs: BTreeMap<String, FileHash>,
    pub stages: BTreeMap<String, StageRecord>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn sha256_bytes(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}

/// The hash of a JSON value (settings, or a map of input hashes).
pub fn hash_json(v: &serde_json::Value) -> String {
    sha256_bytes(&serde_json::to_vec(v).expect("JSON values serialize"))
}

pub fn hash_file(path: &Path) -> Result<FileHash> {
    let mut f = std::fs::File::open(path).map_err(|e| PipelineError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| PipelineError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(FileHash { path: path.display().to_string(), sha256: hex(&h.finalize()), bytes })
}

/// Files of a model directory that define the model (weights, config, tokenizer, templates);
/// training logs and checkpoints are left out.
fn is_model_file(name: &str) -> bool {
    let skip = ["train_report.json", "trainer_state.json", "metrics.jsonl", "loss.png"];
    !skip.contains(&name)
        && [".json", ".safetensors", ".jinja", ".txt", ".model"].iter().any(|e| name.ends_with(e))
        && !name.starts_with('.')
}

/// A content fingerprint of a model directory. Files up to 64 MiB are hashed whole; larger
/// weight shards by their size and their first and last 4 MiB, which keeps fingerprinting a
/// 16 GB checkpoint to seconds while still telling any two real checkpoints apart.
pub fn fingerprint_model(dir: &Path) -> Result<FileHash> {
    const WHOLE: u64 = 64 << 20;
    const EDGE: usize = 4 << 20;
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| PipelineError::io(dir, e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| is_model_file(n))
        .collect();
    names.sort();
    if !names.iter().any(|n| n == "config.json") {
        return Err(PipelineError::stage("fingerprint", format!("{}: no config.json, not a model directory", dir.display())));
    }
    let mut h = Sha256::new();
    let mut total = 0u64;
    for n in &names {
        let p = dir.join(n);
        let len = std::fs::metadata(&p).map_err(|e| PipelineError::io(&p, e))?.len();
        total += len;
        h.update(n.as_bytes());
        h.update(len.to_le_bytes());
        if len <= WHOLE {
            h.update(hash_file(&p)?.sha256.as_bytes());
        } else {
            use std::io::{Seek, SeekFrom};
            let mut f = std::fs::File::open(&p).map_err(|e| PipelineError::io(&p, e))?;
            let mut buf = vec![0u8; EDGE];
            f.read_exact(&mut buf).map_err(|e| PipelineError::io(&p, e))?;
            h.update(&buf);
            f.seek(SeekFrom::End(-(EDGE as i64))).map_err(|e| PipelineError::io(&p, e))?;
            f.read_exact(&mut buf).map_err(|e| PipelineError::io(&p, e))?;
            h.update(&buf);
        }
    }
    Ok(FileHash { path: dir.display().to_string(), sha256: hex(&h.finalize()), bytes: total })
}

/// Held by the process that owns a run directory (see [`RunDir::open`]).
const LOCK_FILE: &str = ".lock";

/// A run directory with its manifest.
pub struct RunDir {
    pub root: PathBuf,
    pub manifest: Manifest,
    /// An exclusive advisory lock on `root/.lock`, held while this value lives: two owners
    /// writing one manifest and one set of stage directories would interleave their work.
    /// Shard workers ([`RunDir::open_existing`]) take none; they write only their own shard files.
    _lock: Option<std::fs::File>,
}

impl RunDir {
    /// Opens `root`. A directory with a manifest is continued only when `resume` is set, so two
    /// different runs never mix by accident.
    pub fn open(root: &Path, config: serde_json::Value, resume: bool) -> Result<Self> {
        let path = root.join(MANIFEST);
        let manifest = if path.exists() {
            if !resume {
                return Err(PipelineError::stage(
                    "run",
                    format!("{} already holds a run; pass --resume to continue it, or choose another run_dir", root.display()),
                ));
            }
            let text = std::fs::read_to_string(&path).map_err(|e| PipelineError::io(&path, e))?;
            let mut m: Manifest = serde_json::from_str(&text)
                .map_err(|e| PipelineError::Data { path: path.clone(), line: e.line(), message: e.to_string() })?;
            m.config = config;
            m
        } else {
            std::fs::create_dir_all(root).map_err(|e| PipelineError::io(root, e))?;
            Manifest { version: 1, config, ..Default::default() }
        };
        let lock = lock_run_dir(root)?;
        let run = Self { root: root.to_path_buf(), manifest, _lock: Some(lock) };
        run.save()?;
        Ok(run)
    }

    /// Opens an existing run for a worker (a shard of one stage): never creates, never writes
    /// the manifest.
    pub fn open_existing(root: &Path) -> Result<Self> {
        let path = root.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| PipelineError::io(&path, e))?;
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| PipelineError::Data { path: path.clone(), line: e.line(), message: e.to_string() })?;
        Ok(Self { root: root.to_path_buf(), manifest, _lock: None })
    }

    pub fn save(&self) -> Result<()> {
        let v = serde_json::to_value(&self.manifest).expect("the manifest serializes");
        Ok(gramrr_model::fsutil::write_json_atomic(&self.root.join(MANIFEST), &v)?)
    }

    pub fn stage_dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn record(&self, name: &str) -> Option<&StageRecord> {
        self.manifest.stages.get(name)
    }

    /// A finished stage's record, or an error telling which stage to run first.
    pub fn require_done(&self, name: &str, needed_by: &str) -> Result<&StageRecord> {
        match self.record(name) {
            Some(r) if r.status == StageStatus::Done => Ok(r),
            _ => Err(PipelineError::stage(needed_by, format!("needs stage {name:?}, which has not finished; run it first"))),
        }
    }

    /// Whether `name` finished with this `key` and its outputs are still there.
    pub fn is_done(&self, name: &str, key: &str) -> bool {
        match self.record(name) {
            Some(r) if r.status == StageStatus::Done && r.key == key => {
                r.outputs.values().all(|h| Path::new(&h.path).exists())
            }
            _ => false,
        }
    }

    /// The key of a stage from its settings and input hashes.
    pub fn stage_key(name: &str, settings: &serde_json::Value, inputs: &BTreeMap<String, String>) -> String {
        hash_json(&serde_json::json!({"stage": name, "settings": settings, "inputs": inputs}))
    }

    /// Starts (or continues) a stage: a directory holding work of another key is cleared, the
    /// key is written next to the work, and the manifest marks the stage running.
    pub fn begin(&mut self, name: &str, key: &str, inputs: BTreeMap<String, String>) -> Result<PathBuf> {
        let dir = self.stage_dir(name);
        prepare_stage_dir(&dir, key, true)?;
        self.manifest.stages.insert(
            name.to_string(),
            StageRecord {
                key: key.to_string(),
                status: StageStatus::Running,
                inputs,
                outputs: BTreeMap::new(),
                stats: serde_json::Value::Null,
                seconds: 0.0,
            },
        );
        self.save()?;
        Ok(dir)
    }

    /// Marks a stage done with the hashes of its outputs. A path that is a directory is
    /// fingerprinted as a model.
    pub fn finish(&mut self, name: &str, outputs: &[(&str, PathBuf)], stats: serde_json::Value, seconds: f64) -> Result<StageRecord> {
        let mut hashes = BTreeMap::new();
        for (k, p) in outputs {
            let h = if p.is_dir() { fingerprint_model(p)? } else { hash_file(p)? };
            hashes.insert(k.to_string(), h);
        }
        let rec = self
            .manifest
            .stages
            .get_mut(name)
            .ok_or_else(|| PipelineError::stage(name, "finished without having begun"))?;
        rec.status = StageStatus::Done;
        rec.outputs = hashes;
        rec.stats = stats;
        rec.seconds += seconds;
        let rec = rec.clone();
        self.save()?;
        Ok(rec)
    }

    /// Records the hash of an input file under `name` and returns it.
    pub fn input_hash(&mut self, name: &str, path: &Path) -> Result<String> {
        let h = hash_file(path)?;
        let s = h.sha256.clone();
        self.manifest.inputs.insert(name.to_string(), h);
        Ok(s)
    }
}

/// How long a busy lock is retried before the run directory is declared in use. A process that
/// spawns a command (a trainer, a server) while it holds the lock shares the lock's open file
/// with the child between fork and exec, so a lock just released can look held for an instant.
const LOCK_GRACE: std::time::Duration = std::time::Duration::from_millis(1500);

/// Takes the run directory's exclusive lock, retrying for [`LOCK_GRACE`]. The operating system
/// releases it when the process ends however it ends, so a killed run never leaves a stale lock.
fn lock_run_dir(root: &Path) -> Result<std::fs::File> {
    let path = root.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| PipelineError::io(&path, e))?;
    let deadline = std::time::Instant::now() + LOCK_GRACE;
    let mut tried = file.try_lock();
    while matches!(tried, Err(std::fs::TryLockError::WouldBlock)) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(25));
        tried = file.try_lock();
    }
    match tried {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(PipelineError::stage(
            "run",
            format!(
                "{} is in use by another gramrr process (it holds {}); wait for it to finish or stop it, \
                 or choose another run_dir",
                root.display(),
                path.display()
            ),
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(PipelineError::io(&path, e)),
    }
}

/// Makes sure `dir` holds only work of `key`: a stage directory written under another key is
/// emptied when `clear` is allowed (the owner of the run) and an error otherwise (a shard
/// worker must not delete what other workers may be writing).
pub fn prepare_stage_dir(dir: &Path, key: &str, clear: bool) -> Result<()> {
    let key_file = dir.join(STAGE_KEY_FILE);
    if let Ok(old) = std::fs::read_to_string(&key_file) {
        if old.trim() != key {
            if !clear {
                return Err(PipelineError::stage(
                    dir.display().to_string(),
                    "holds work from a different configuration or different inputs; run the stage without --shard to restart it",
                ));
            }
            std::fs::remove_dir_all(dir).map_err(|e| PipelineError::io(dir, e))?;
        }
    } else if dir.exists() && clear {
        // Left over from an unrecorded attempt: nothing in it can be trusted.
        std::fs::remove_dir_all(dir).map_err(|e| PipelineError::io(dir, e))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| PipelineError::io(dir, e))?;
    if !key_file.exists() {
        gramrr_model::fsutil::write_atomic(&key_file, key.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_lifecycle_and_key_change_clears_the_stage() {
        let tmp = tempfile::tempdir().unwrap();
        let mut run = RunDir::open(tmp.path(), serde_json::json!({"a": 1}), false).unwrap();
        let k1 = RunDir::stage_key("s", &serde_json::json!({"k": 1}), &BTreeMap::new());
        let dir = run.begin("s", &k1, BTreeMap::new()).unwrap();
        std::fs::write(dir.join("out.txt"), "x").unwrap();
        assert!(!run.is_done("s", &k1));
        run.finish("s", &[("out", dir.join("out.txt"))], serde_json::Value::Null, 1.0).unwrap();
        assert!(run.is_done("s", &k1));
        assert!(RunDir::open(tmp.path(), serde_json::json!({}), false).is_err(), "an existing run needs --resume");
        let err = RunDir::open(tmp.path(), serde_json::json!({}), true).err().expect("the run is still open");
        assert!(err.to_string().contains("in use by another gramrr process"), "{err}");
        assert!(RunDir::open_existing(tmp.path()).is_ok(), "shard workers share the run");
        drop(run);
        let mut run = RunDir::open(tmp.path(), serde_json::json!({}), true).unwrap();
        assert!(run.is_done("s", &k1));
        let k2 = RunDir::stage_key("s", &serde_json::json!({"k": 2}), &BTreeMap::new());
        assert!(!run.is_done("s", &k2));
        assert!(prepare_stage_dir(&dir, &k2, false).is_err(), "a worker never clears");
        let dir = run.begin("s", &k2, BTreeMap::new()).unwrap();
        assert!(!dir.join("out.txt").exists());
    }
}
