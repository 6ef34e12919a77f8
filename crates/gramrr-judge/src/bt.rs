//! Bradley–Terry scores by maximum likelihood: `P(i beats j) = σ(s_i - s_j)`.
//!
//! Outcomes may be fractional (a judge's P(A better) counts as that much of a win), which
//! keeps the information a soft verdict carries. A small L2 penalty keeps the fit finite when
//! one candidate wins every game (the MLE is then at infinity) and fixes the scale's shift,
//! so the scores come out centred on zero.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BtOptions {
    /// Strength of the Gaussian prior `l2/2 · Σ s²`.
    pub l2: f64,
    pub max_iter: usize,
    /// Stop once the largest Newton step is below this.
    pub tol: f64,
}

impl Default for BtOptions {
    fn default() -> Self {
        BtOptions { l2: 0.01, max_iter: 100, tol: 1e-9 }
    }
}

/// One game: `i` against `j`, with `win` ∈ [0, 1] the share `i` won.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Game {
    pub i: usize,
    pub j: usize,
    pub win: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BradleyTerryFit {
    /// Log-strengths, centred on zero.
    pub strengths: Vec<f64>,
    pub iterations: usize,
    pub converged: bool,
    /// Penalised log-likelihood at the fit.
    pub objective: f64,
}

fn log_sigmoid(x: f64) -> f64 {
    if x >= 0.0 { -(-x).exp().ln_1p() } else { x - x.exp().ln_1p() }
}
fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 { 1.0 / (1.0 + (-x).exp()) } else { let e = x.exp(); e / (1.0 + e) }
}

fn objective(s: &[f64], games: &[Game], l2: f64) -> f64 {
    let ll: f64 = games
        .iter()
        .map(|g| {
            let d = s[g.i] - s[g.j];
            g.win * log_sigmoid(d) + (1.0 - g.win) * log_sigmoid(-d)
        })
        .sum();
    ll - 0.5 * l2 * s.iter().map(|x| x * x).sum::<f64>()
}

/// Solves `a x = b` for a symmetric positive-definite `a` (row-major n×n) by Cholesky.
fn solve_spd(mut a: Vec<f64>, mut b: Vec<f64>, n: usize) -> Vec<f64> {
    for k in 0..n {
        let mut d = a[k * n + k];
        for p in 0..k {
            d -= a[k * n + p] * a[k * n + p];
        }
        let d = d.max(1e-300).sqrt();
        a[k * n + k] = d;
        for i in k + 1..n {
            let mut v = a[i * n + k];
            for p in 0..k {
                v -= a[i * n + p] * a[k * n + p];
            }
            a[i * n + k] = v / d;
        }
    }
    for i in 0..n {
        for p in 0..i {
            b[i] -= a[i * n + p] * b[p];
        }
        b[i] /= a[i * n + i];
    }
    for i in (0..n).rev() {
        for p in i + 1..n {
            b[i] -= a[p * n + i] * b[p];
        }
        b[i] /= a[i * n + i];
    }
    b
}

impl BradleyTerryFit {
    /// Fits `n` strengths to `games` by damped Newton ascent on the penalised likelihood.
    /// Candidates with no games get strength 0.
    pub fn fit(n: usize, games: &[Game], opts: &BtOptions) -> Self {
        // A zero penalty leaves the Hessian singular along the all-ones direction; the tiny
        // ridge fixes the shift without changing the fit measurably.
        let l2 = opts.l2.max(1e-9);
        let mut s = vec![0.0; n];
        let mut f = objective(&s, games, l2);
        let (mut iterations, mut converged) = (0, n == 0);
        while iterations < opts.max_iter && !converged {
            iterations += 1;
            let mut grad: Vec<f64> = s.iter().map(|x| -l2 * x).collect();
            let mut h = vec![0.0; n * n];
            for i in 0..n {
                h[i * n + i] = l2;
            }
            for g in games {
                let p = sigmoid(s[g.i] - s[g.j]);
                grad[g.i] += g.win - p;
                grad[g.j] -= g.win - p;
                let w = p * (1.0 - p);
                h[g.i * n + g.i] += w;
                h[g.j * n + g.j] += w;
                h[g.i * n + g.j] -= w;
                h[g.j * n + g.i] -= w;
            }
            let step = solve_spd(h, grad, n);
            let mut t = 1.0;
            loop {
                let cand: Vec<f64> = s.iter().zip(&step).map(|(x, d)| x + t * d).collect();
                let fc = objective(&cand, games, l2);
                if fc >= f - 1e-12 || t < 1e-6 {
                    s = cand;
                    f = fc;
                    break;
                }
                t *= 0.5;
            }
            // A common shift leaves the likelihood unchanged and is only held by the (possibly
            // tiny) penalty, so it is left out of the convergence test.
            let shift = step.iter().sum::<f64>() / n as f64;
            let max_step = step.iter().fold(0.0f64, |m, d| m.max((t * (d - shift)).abs()));
            converged = max_step < opts.tol;
        }
        let mean = if n > 0 { s.iter().sum::<f64>() / n as f64 } else { 0.0 };
        for x in &mut s {
            *x -= mean;
        }
        BradleyTerryFit { strengths: s, iterations, converged, objective: f }
    }

    /// P(i beats j) under the fit.
    pub fn prob(&self, i: usize, j: usize) -> f64 {
        sigmoid(self.strengths[i] - self.strengths[j])
    }

    /// Candidates from strongest to weakest (ties by index).
    pub fn ranking(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.strengths.len()).collect();
        order.sort_by(|&a, &b| self.strengths[b].total_cmp(&self.strengths[a]).then(a.cmp(&b)));
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::{mix, unit};

    #[test]
    fn recovers_known_strengths_from_simulated_games() {
        let truth = [1.2, 0.5, 0.0, -0.3, -1.4];
        let mean = truth.iter().sum::<f64>() / truth.len() as f64;
        let mut games = Vec::new();
        let mut k = 0u64;
        for i in 0..truth.len() {
            for j in 0..truth.len() {
                if i == j {
                    continue;
                }
                for _ in 0..400 {
                    k += 1;
                    let win = (unit(mix(&[k])) < sigmoid(truth[i] - truth[j])) as u8 as f64;
                    games.push(Game { i, j, win });
                }
            }
        }
        let fit = BradleyTerryFit::fit(truth.len(), &games, &BtOptions { l2: 1e-6, ..Default::default() });
        assert!(fit.converged, "{fit:?}");
        for (s, t) in fit.strengths.iter().zip(truth) {
            assert!((s - (t - mean)).abs() < 0.12, "{:?} vs {truth:?}", fit.strengths);
        }
        assert_eq!(fit.ranking(), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn perfect_separation_stays_finite_and_ordered() {
        // 0 beats everyone, 1 beats 2 and 3, 2 beats 3: the unpenalised MLE diverges.
        let mut games = Vec::new();
        for i in 0..4 {
            for j in i + 1..4 {
                games.push(Game { i, j, win: 1.0 });
            }
        }
        let fit = BradleyTerryFit::fit(4, &games, &BtOptions::default());
        assert!(fit.strengths.iter().all(|s| s.is_finite()));
        assert_eq!(fit.ranking(), vec![0, 1, 2, 3]);
        assert!(fit.strengths.iter().sum::<f64>().abs() < 1e-9);
    }

    #[test]
    fn soft_outcomes_fit_their_probability() {
        let games = vec![Game { i: 0, j: 1, win: 0.8 }; 10];
        let fit = BradleyTerryFit::fit(2, &games, &BtOptions { l2: 1e-9, ..Default::default() });
        assert!((fit.prob(0, 1) - 0.8).abs() < 1e-4, "{}", fit.prob(0, 1));
    }
}
