//! metrics.json, report.md and the run header that guards resumes.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::EvalError;

/// Writes `run.json` (benchmark, source, settings), or on resume checks that the existing one
/// describes the same run: items decided by another source or mode must not be mixed in.
pub(crate) fn check_and_write_run(dir: &Path, run: &Map<String, Value>, resume: bool) -> Result<(), EvalError> {
    let path = dir.join("run.json");
    if resume && path.exists() {
        let text = std::fs::read_to_string(&path).map_err(|e| EvalError::io(&path, e))?;
        let old: Map<String, Value> = serde_json::from_str(&text).map_err(|e| EvalError::Resume {
            path: path.display().to_string(),
            line: e.line(),
            problem: e.to_string(),
        })?;
        for (k, v) in run {
            if old.get(k) != Some(v) {
                return Err(EvalError::Resume {
                    path: path.display().to_string(),
                    line: 1,
                    problem: format!(
                        "the earlier run had {k} = {}, this one {v}; use another --out or drop --resume",
                        old.get(k).unwrap_or(&Value::Null)
                    ),
                });
            }
        }
        return Ok(());
    }
    write_json(&path, &Value::Object(run.clone()))
}

fn write_json(path: &Path, v: &Value) -> Result<(), EvalError> {
    let mut text = serde_json::to_string_pretty(v).expect("plain data");
    text.push('\n');
    std::fs::write(path, text).map_err(|e| EvalError::io(path, e))
}

pub(crate) fn write_outputs(dir: &Path, metrics: &Map<String, Value>) -> Result<Vec<PathBuf>, EvalError> {
    let mpath = dir.join("metrics.json");
    write_json(&mpath, &Value::Object(metrics.clone()))?;
    let rpath = dir.join("report.md");
    std::fs::write(&rpath, markdown(metrics)).map_err(|e| EvalError::io(&rpath, e))?;
    Ok(vec![mpath, rpath])
}

/// The Markdown report: the settings in a header, top-level numbers in one table, and one table
/// per nested object (a matrix when its entries share their keys, like RM-Bench's domains).
/// Every percentage carries its bootstrap interval.
pub fn markdown(m: &Map<String, Value>) -> String {
    let ci = m.get("ci95").and_then(Value::as_object).cloned().unwrap_or_default();
    let cell = |path: &str, v: &Value| -> String {
        let Some(x) = v.as_f64() else { return v.to_string() };
        if !v.is_f64() {
            return v.to_string();
        }
        match ci.get(path).and_then(Value::as_array) {
            Some(iv) if iv.len() == 2 => {
                format!("{x:.2} [{:.2}, {:.2}]", iv[0].as_f64().unwrap_or(f64::NAN), iv[1].as_f64().unwrap_or(f64::NAN))
            }
            _ => format!("{x:.2}"),
        }
    };
    let skip = ["ci95", "bootstrap", "benchmark", "source"];
    let mut out = String::new();
    let bench = m.get("benchmark").and_then(Value::as_str).unwrap_or("benchmark");
    let source = m.get("source").and_then(Value::as_str).unwrap_or("");
    out.push_str(&format!("# {bench}\n\nSource: `{source}`"));
    for (k, v) in m {
        if let Value::String(s) = v {
            if !skip.contains(&k.as_str()) {
                out.push_str(&format!(", {k}: `{s}`"));
            }
        }
    }
    out.push_str(".\n\n");
    if let Some(b) = m.get("bootstrap") {
        out.push_str(&format!(
            "Values are percentages; brackets hold the 95% percentile-bootstrap interval ({} resamples of the items, within their groups, seed {}).\n\n",
            b.get("resamples").unwrap_or(&Value::Null),
            b.get("seed").unwrap_or(&Value::Null)
        ));
    }
    let top: Vec<(&String, &Value)> = m.iter().filter(|(k, v)| !skip.contains(&k.as_str()) && v.is_number()).collect();
    if !top.is_empty() {
        out.push_str("| metric | value |\n|---|---:|\n");
        for (k, v) in top {
            out.push_str(&format!("| {k} | {} |\n", cell(k, v)));
        }
        out.push('\n');
    }
    for (k, v) in m {
        let Value::Object(inner) = v else { continue };
        if skip.contains(&k.as_str()) || inner.is_empty() {
            continue;
        }
        out.push_str(&format!("## {k}\n\n"));
        let rows: Vec<(&String, &Map<String, Value>)> =
            inner.iter().filter_map(|(rk, rv)| rv.as_object().map(|o| (rk, o))).collect();
        if rows.len() == inner.len() {
            // A matrix: columns are the union of the rows' numeric keys, in first-seen order.
            let mut cols: Vec<&String> = Vec::new();
            for (_, r) in &rows {
                for (ck, cv) in r.iter() {
                    if (cv.is_number()) && !cols.contains(&ck) {
                        cols.push(ck);
                    }
                }
            }
            out.push_str(&format!("| {k} | {} |\n", cols.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(" | ")));
            out.push_str(&format!("|---|{}\n", "---:|".repeat(cols.len())));
            for (rk, r) in rows {
                let cells: Vec<String> = cols
                    .iter()
                    .map(|c| r.get(*c).map(|v| cell(&format!("{k}.{rk}.{c}"), v)).unwrap_or_default())
                    .collect();
                out.push_str(&format!("| {rk} | {} |\n", cells.join(" | ")));
            }
        } else {
            out.push_str(&format!("| {k} | value |\n|---|---:|\n"));
            for (rk, rv) in inner {
                if rv.is_number() {
                    out.push_str(&format!("| {rk} | {} |\n", cell(&format!("{k}.{rk}"), rv)));
                } else if let Value::Object(o) = rv {
                    for (ck, cv) in o.iter().filter(|(_, cv)| cv.is_number()) {
                        out.push_str(&format!("| {rk} {ck} | {} |\n", cell(&format!("{k}.{rk}.{ck}"), cv)));
                    }
                }
            }
        }
        out.push('\n');
    }
    out
}
