//! Where the benchmark tests run: the committed sample of every benchmark file always, and the
//! full files too where `GRAMRR_BENCHDATA` names them (`.ci/run` sets it when
//! `../shared/benchdata` exists). `full` marks the full files, where published numbers apply.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

pub struct Root {
    pub dir: PathBuf,
    pub full: bool,
}

/// The sample, then the full files if given; says once per test binary (past the harness's
/// capture, so it shows) that the full files were skipped.
pub fn roots(binary: &str) -> Vec<Root> {
    static NOTE: std::sync::Once = std::sync::Once::new();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../gramrr-data/tests/fixtures/benchsample");
    let mut roots = vec![Root { dir: sample, full: false }];
    match std::env::var_os("GRAMRR_BENCHDATA") {
        Some(p) => roots.push(Root { dir: PathBuf::from(p), full: true }),
        None => NOTE.call_once(|| {
            let _ = writeln!(
                std::io::stderr(),
                "skipped: {binary} on the full files (GRAMRR_BENCHDATA not set; the committed sample is checked)"
            );
        }),
    }
    roots
}
