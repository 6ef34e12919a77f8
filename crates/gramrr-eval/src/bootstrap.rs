//! Percentile-bootstrap 95% intervals for every number a benchmark reports.
//!
//! Items are resampled with replacement *within their group* (domain, category, subset), so
//! every resample has the benchmark's composition: RM-Bench's domain averages and RewardBench's
//! weighted sections stay defined, and the interval reflects item noise, not composition noise.

use serde_json::{Map, Value};

use crate::scorers::SplitMix64;

/// The numeric leaves of a metrics object that are percentages (floats), by dotted path.
/// Integer leaves (counts) are left out.
pub fn flatten(m: &Map<String, Value>) -> Vec<(String, f64)> {
    fn go(prefix: &str, v: &Value, out: &mut Vec<(String, f64)>) {
        match v {
            Value::Number(n) if n.is_f64() => out.push((prefix.to_string(), n.as_f64().unwrap_or(f64::NAN))),
            Value::Object(m) => {
                for (k, v) in m {
                    let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    go(&p, v, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (k, v) in m {
        go(k, v, &mut out);
    }
    out
}

/// `(path, [lo, hi])` for every float leaf of `metrics(all items)`.
pub fn intervals(
    groups: &[&str],
    resamples: usize,
    seed: u64,
    metrics: &dyn Fn(&[usize]) -> Map<String, Value>,
) -> Vec<(String, [f64; 2])> {
    if resamples == 0 || groups.is_empty() {
        return Vec::new();
    }
    let mut strata: Vec<(&str, Vec<usize>)> = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        match strata.iter_mut().find(|(name, _)| name == g) {
            Some((_, v)) => v.push(i),
            None => strata.push((g, vec![i])),
        }
    }
    let all: Vec<usize> = (0..groups.len()).collect();
    let paths: Vec<String> = flatten(&metrics(&all)).into_iter().map(|(p, _)| p).collect();
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(resamples); paths.len()];
    let mut rng = SplitMix64(seed ^ 0x5eed_b007);
    let mut idx = Vec::with_capacity(groups.len());
    for _ in 0..resamples {
        idx.clear();
        for (_, members) in &strata {
            for _ in 0..members.len() {
                idx.push(members[rng.below(members.len())]);
            }
        }
        let flat = flatten(&metrics(&idx));
        for (slot, path) in samples.iter_mut().zip(&paths) {
            if let Some((_, v)) = flat.iter().find(|(p, _)| p == path) {
                slot.push(*v);
            }
        }
    }
    paths
        .into_iter()
        .zip(samples)
        .filter(|(_, s)| !s.is_empty())
        .map(|(p, mut s)| {
            s.sort_by(f64::total_cmp);
            (p, [round2(percentile(&s, 0.025)), round2(percentile(&s, 0.975))])
        })
        .collect()
}

/// Linear interpolation between order statistics (numpy's default).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Two decimals, as the upstream scripts print percentages.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A fraction as a percentage with two decimals.
pub fn pct(x: f64) -> f64 {
    round2(100.0 * x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_brackets_the_mean_of_a_coin_and_shrinks_with_more_items() {
        let width = |n: usize| {
            let groups = vec!["g"; n];
            let data: Vec<f64> = (0..n).map(|i| (i % 2) as f64).collect();
            let f = |idx: &[usize]| {
                let mut m = Map::new();
                let mean = idx.iter().map(|&i| data[i]).sum::<f64>() / idx.len() as f64;
                m.insert("acc".into(), pct(mean).into());
                m
            };
            let ci = intervals(&groups, 500, 1, &f);
            assert_eq!(ci[0].0, "acc");
            let [lo, hi] = ci[0].1;
            assert!(lo < 50.0 && hi > 50.0, "{lo} {hi}");
            hi - lo
        };
        assert!(width(400) < width(40));
    }

    #[test]
    fn percentile_interpolates_like_numpy() {
        assert_eq!(percentile(&[0.0, 10.0], 0.25), 2.5);
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 0.5), 2.0);
    }
}
