//! Finding a model: a directory, or `org/name[@revision]` in the local Hugging Face cache.
//! Never touches the network.

use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};

/// The hub cache directory, resolved as huggingface_hub does: `HF_HUB_CACHE`, else
/// `HF_HOME/hub`, else `XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
pub fn hub_cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE").or_else(|| std::env::var_os("HUGGINGFACE_HUB_CACHE")) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return PathBuf::from(p).join("hub");
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("huggingface").join("hub")
}

/// Resolves `spec` to a model directory: an existing path as is; otherwise a repo id
/// `org/name` with an optional `@revision` (a branch or tag under `refs/`, or a commit hash)
/// looked up in the offline cache.
pub fn resolve_model_dir(spec: &str) -> Result<PathBuf> {
    let p = Path::new(spec);
    if p.is_dir() {
        return Ok(p.to_path_buf());
    }
    let (repo, revision) = match spec.split_once('@') {
        Some((r, rev)) => (r, rev),
        None => (spec, "main"),
    };
    let parts: Vec<&str> = repo.split('/').collect();
    if parts.len() != 2 || parts.iter().any(|s| s.is_empty()) {
        return Err(ModelError::NotFound(format!(
            "{spec:?} is neither a directory nor a Hugging Face repo id (org/name)"
        )));
    }
    let cache = hub_cache_dir();
    let repo_dir = cache.join(format!("models--{}--{}", parts[0], parts[1]));
    if !repo_dir.is_dir() {
        return Err(ModelError::NotFound(format!(
            "{spec:?}: not a directory, and {} does not exist (offline: models are never downloaded; \
             set HF_HUB_CACHE or HF_HOME, or pass a directory)",
            repo_dir.display()
        )));
    }
    let ref_file = repo_dir.join("refs").join(revision);
    let commit = if ref_file.is_file() {
        std::fs::read_to_string(&ref_file).map_err(|e| ModelError::io(&ref_file, e))?.trim().to_string()
    } else {
        revision.to_string()
    };
    let snap = repo_dir.join("snapshots").join(&commit);
    if snap.is_dir() {
        Ok(snap)
    } else {
        Err(ModelError::NotFound(format!(
            "{spec:?}: revision {revision:?} has no snapshot in {} (looked for {})",
            repo_dir.display(),
            snap.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_repo_id_through_refs_main_to_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("models--acme--tiny");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::create_dir_all(repo.join("snapshots/abc123")).unwrap();
        std::fs::create_dir_all(repo.join("snapshots/def456")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc123\n").unwrap();
        std::fs::write(repo.join("refs/v2"), "def456").unwrap();
        // SAFETY: tests in this module are the only readers of HF_HUB_CACHE in this process.
        unsafe { std::env::set_var("HF_HUB_CACHE", tmp.path()) };
        assert_eq!(resolve_model_dir("acme/tiny").unwrap(), repo.join("snapshots/abc123"));
        assert_eq!(resolve_model_dir("acme/tiny@v2").unwrap(), repo.join("snapshots/def456"));
        assert_eq!(resolve_model_dir("acme/tiny@def456").unwrap(), repo.join("snapshots/def456"));
        let err = resolve_model_dir("acme/missing").unwrap_err().to_string();
        assert!(err.contains("models--acme--missing"), "{err}");
        let err = resolve_model_dir("acme/tiny@nope").unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
    }
}
