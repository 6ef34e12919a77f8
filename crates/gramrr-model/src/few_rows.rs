//! `x Wᵀ` for a handful of rows of x: one decoding step of a small batch.
//!
//! The `gemm` crate that candle calls packs the whole of W into a scratch layout on every call.
//! For a prefill that cost is spread over thousands of rows; for a decoding step of one to a
//! few rows it is most of the work (on a Xeon with AVX-512, 67% of a batch-8 decoding profile was
//! that packing). Here W is read once, in place, row after row, and each of its rows is dotted
//! with every row of x, which stays in L1. Decoding is then bound by reading W from memory, as it
//! should be.

use rayon::prelude::*;

/// Up to this many rows of x, [`matmul_few_rows`] is used instead of gemm. Measured on a 2-core
/// Xeon (AVX-512): at 8 rows it takes 0.9 ms for a 3072×1024 weight where gemm takes 2.0 ms; at
/// 32 rows gemm is ahead again.
pub const FEW_ROWS: usize = 16;

/// Rows of W per parallel task: large enough that a task's start-up cost is small, small enough
/// that two threads share a 3072-row weight evenly.
const W_ROWS_PER_TASK: usize = 64;

/// y (m, n) = x (m, k) · wᵀ, w (n, k) row-major; all contiguous.
pub fn matmul_few_rows(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "x is not (m, k)");
    assert_eq!(w.len(), n * k, "w is not (n, k)");
    let mut yt = vec![0f32; n * m]; // (n, m): each task writes the rows of its block of W
    yt.par_chunks_mut(W_ROWS_PER_TASK * m)
        .zip(w.par_chunks(W_ROWS_PER_TASK * k))
        .for_each(|(out, wb)| block(x, wb, m, k, out));
    let mut y = vec![0f32; m * n];
    for (j, row) in yt.chunks_exact(m).enumerate() {
        for (i, v) in row.iter().enumerate() {
            y[i * n + j] = *v;
        }
    }
    y
}

/// out (rows of wb, m) = wb · xᵀ
fn block(x: &[f32], wb: &[f32], m: usize, k: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F; the kernel reads only inside x and wb (checked lengths).
        unsafe { avx512::block(x, wb, m, k, out) };
        return;
    }
    block_portable(x, wb, m, k, out)
}

/// The same product without explicit SIMD (the compiler vectorises the dot product).
pub(crate) fn block_portable(x: &[f32], wb: &[f32], m: usize, k: usize, out: &mut [f32]) {
    for (j, wr) in wb.chunks_exact(k).enumerate() {
        for i in 0..m {
            out[j * m + i] = dot(&x[i * k..(i + 1) * k], wr);
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 16;
    let mut acc = [0f32; L];
    let n = a.len() / L * L;
    for (ca, cb) in a[..n].chunks_exact(L).zip(b[..n].chunks_exact(L)) {
        for l in 0..L {
            acc[l] += ca[l] * cb[l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in n..a.len() {
        s += a[i] * b[i];
    }
    s
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Rows of W per register tile; with up to 4 rows of x that is 16 accumulators.
    const R: usize = 4;

    /// # Safety
    /// The CPU must have AVX-512F; `x` is (m, k), `wb` is (rows, k), `out` is (rows, m).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn block(x: &[f32], wb: &[f32], m: usize, k: usize, out: &mut [f32]) {
        let rows = wb.len() / k;
        let mut j = 0;
        while j < rows {
            // A short last tile repeats its last row; the repeats are computed and dropped.
            let w: [*const f32; R] = std::array::from_fn(|r| wb.as_ptr().add((j + r).min(rows - 1) * k));
            let valid = (rows - j).min(R);
            let mut i = 0;
            while i < m {
                let xi = x.as_ptr().add(i * k);
                let c = (m - i).min(4);
                let t = match c {
                    1 => tile::<1>(xi, k, w),
                    2 => tile::<2>(xi, k, w),
                    3 => tile::<3>(xi, k, w),
                    _ => tile::<4>(xi, k, w),
                };
                for (r, tr) in t.iter().enumerate().take(valid) {
                    for (cc, v) in tr.iter().enumerate().take(c) {
                        out[(j + r) * m + i + cc] = *v;
                    }
                }
                i += c;
            }
            j += R;
        }
    }

    /// Dots of R rows of W with C rows of x (x rows k apart).
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const C: usize>(x: *const f32, k: usize, w: [*const f32; R]) -> [[f32; 4]; R] {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let kv = k / 16 * 16;
        let mut p = 0;
        while p < kv {
            let mut wv = [_mm512_setzero_ps(); R];
            for r in 0..R {
                wv[r] = _mm512_loadu_ps(w[r].add(p));
            }
            for c in 0..C {
                let xv = _mm512_loadu_ps(x.add(c * k + p));
                for r in 0..R {
                    acc[r][c] = _mm512_fmadd_ps(xv, wv[r], acc[r][c]);
                }
            }
            p += 16;
        }
        let mut out = [[0f32; 4]; R];
        for r in 0..R {
            for c in 0..C {
                let mut s = _mm512_reduce_add_ps(acc[r][c]);
                for q in kv..k {
                    s += *x.add(c * k + q) * *w[r].add(q);
                }
                out[r][c] = s;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
        let mut y = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                y[i * n + j] = (0..k).map(|q| x[i * k + q] as f64 * w[j * k + q] as f64).sum();
            }
        }
        y
    }

    fn data(len: usize, salt: usize) -> Vec<f32> {
        (0..len).map(|i| (((i * 7919 + salt * 104_729) % 2001) as f32 - 1000.0) / 1000.0).collect()
    }

    #[test]
    fn matches_a_float64_product_on_every_tail_shape() {
        // k below, at and off the 16-lane width; n off the 4-row tile and the task block; m
        // through every tile width.
        for &(n, k) in &[(1usize, 3usize), (5, 16), (7, 37), (130, 64), (67, 200)] {
            for m in 1..=FEW_ROWS {
                let (x, w) = (data(m * k, m), data(n * k, n + 1));
                let want = reference(&x, &w, m, n, k);
                let got = matmul_few_rows(&x, &w, m, n, k);
                let mut portable = vec![0f32; n * m];
                block_portable(&x, &w, m, k, &mut portable);
                for i in 0..m {
                    for j in 0..n {
                        let e = want[i * n + j];
                        let tol = 1e-5 * (1.0 + e.abs()) * (k as f64).sqrt();
                        assert!((got[i * n + j] as f64 - e).abs() < tol, "m={m} n={n} k={k} ({i},{j}): {} vs {e}", got[i * n + j]);
                        assert!((portable[j * m + i] as f64 - e).abs() < tol, "portable m={m} n={n} k={k} ({i},{j})");
                    }
                }
            }
        }
    }
}
