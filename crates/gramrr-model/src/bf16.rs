//! `y = x Wᵀ` on bf16 weights: bf16 products with f32 accumulation (`--dtype bf16`).
//!
//! The weight W (N, K) stays row-major bf16 (half the bytes of f32; the embedding lookup and
//! exports read it as it is). Each call rounds the f32 activations x (M, K) to bf16 once
//! (round to nearest even, as torch's `.to(torch.bfloat16)` does), then:
//!
//! - with AVX512-BF16, `vdpbf16ps` takes 32 bf16 pairs into 16 f32 sums per instruction. A
//!   product of two bf16 values is exact in f32, so the only roundings are the activations'
//!   and the f32 sums'. Few rows (decoding, M < [`GEMM_MIN_ROWS`]) are dot products along K:
//!   4 weight rows against up to 4 input rows, so each weight vector read from memory serves
//!   every input row. Many rows (prompt processing, scoring) are a GEMM: x is repacked as K/2
//!   pairs of 16 rows, so that one register holds 16 rows' pair `k` and a broadcast of one
//!   weight row's pair `k` multiplies all of them; 12 weight rows × 32 input rows keep 24
//!   accumulators in registers, and the loops are blocked over rows and K so the x block sits
//!   in L2 and the weight block in L1 while they are reused.
//! - with AVX2 (no BF16 instructions), bf16 widens to f32 with a shift and the dot products
//!   run on FMA, on the same bf16-rounded activations.
//! - otherwise a scalar loop of the same arithmetic, which is also the tests' oracle.
//!
//! Threads split the weight rows (N); each writes its own columns of y.
//!
//! `vdpbf16ps` treats bf16 subnormals (below 1.2e-38) as zero; nothing in a model lives there.

use std::sync::OnceLock;

use rayon::prelude::*;

/// From this many input rows on, the AVX512-BF16 path runs the packed GEMM.
pub const GEMM_MIN_ROWS: usize = 16;

/// Which instructions the kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX512-BF16 `vdpbf16ps` (with AVX512F/BW).
    Avx512Bf16,
    /// AVX2 and FMA on bf16 widened to f32.
    Avx2,
    Scalar,
}

/// The best instruction set this CPU has (checked once).
pub fn detected_isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            if avx2
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512bf16")
            {
                return Isa::Avx512Bf16;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    })
}

/// Whether this CPU can run `isa`.
pub fn available(isa: Isa) -> bool {
    matches!(
        (isa, detected_isa()),
        (Isa::Scalar, _) | (Isa::Avx2, Isa::Avx2 | Isa::Avx512Bf16) | (Isa::Avx512Bf16, Isa::Avx512Bf16)
    )
}

/// The instruction set the model uses: the detected one, capped by `GRAMRR_BF16_KERNEL=avx2`
/// or `=scalar` (to compare, or to check a fallback on a machine that has more).
pub fn chosen_isa() -> Isa {
    static CHOICE: OnceLock<Isa> = OnceLock::new();
    *CHOICE.get_or_init(|| {
        let best = detected_isa();
        match std::env::var("GRAMRR_BF16_KERNEL").unwrap_or_default().as_str() {
            "scalar" => Isa::Scalar,
            "avx2" if best != Isa::Scalar => Isa::Avx2,
            _ => best,
        }
    })
}

/// f32 → bf16 bits, round to nearest even (torch's conversion; NaN stays NaN).
#[inline]
pub fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    let round = 0x7fff + ((b >> 16) & 1);
    ((b + round) >> 16) as u16
}

/// bf16 bits → f32 (exact).
#[inline]
pub fn to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// `x Wᵀ`: x is (m, k) f32, w is (n, k) bf16 bits; returns (m, n) f32.
pub fn matmul(x: &[f32], m: usize, w: &[u16], n: usize, k: usize, isa: Isa) -> Vec<f32> {
    matmul_shared_input(x, m, &[(w, n)], k, isa).remove(0)
}

/// `x Wᵢᵀ` for several weights `(wᵢ, nᵢ)` that share x (a layer's q, k and v; gate and up):
/// x is rounded to bf16, and packed for the GEMM, once for all of them.
pub fn matmul_shared_input(x: &[f32], m: usize, weights: &[(&[u16], usize)], k: usize, isa: Isa) -> Vec<Vec<f32>> {
    assert_eq!(x.len(), m * k, "bf16 matmul: x holds {} values, not {m}x{k}", x.len());
    for &(w, n) in weights {
        assert_eq!(w.len(), n * k, "bf16 matmul: w holds {} values, not {n}x{k}", w.len());
    }
    assert!(available(isa), "bf16 matmul: this CPU cannot run {isa:?}");
    let gemm = isa == Isa::Avx512Bf16 && m >= GEMM_MIN_ROWS && k.is_multiple_of(2);
    // The GEMM reads x packed (rounded on the way); the dot products read it rounded, in rows.
    let (xp, xb) = if m == 0 {
        (Vec::new(), Vec::new())
    } else if gemm {
        (gemm_tile::pack(x, m, k), Vec::new())
    } else {
        (Vec::new(), x.iter().map(|&v| to_bf16(v)).collect::<Vec<u16>>())
    };
    weights
        .iter()
        .map(|&(w, n)| {
            if m == 0 || n == 0 {
                return vec![0f32; m * n];
            }
            // Not zeroed: every element is written below, and zeroing y cost a scoring pass
            // 1.7 GB of memset (the lm_head's chunks alone are 256 × vocabulary floats each).
            let mut y: Vec<f32> = Vec::with_capacity(m * n);
            let out = SharedOut(y.as_mut_ptr());
            // Tasks are whole tiles of weight rows, up to four per thread so that an uneven
            // core finishes with the others, in a multiple of the thread count so they share
            // out evenly. Each is worth at least MIN_TASK_MACS: handing a task to another
            // thread costs microseconds, more than a decoding step's small projections
            // compute; those run here.
            const MIN_TASK_MACS: usize = 1 << 18;
            let tile = if gemm { gemm_tile::NR } else { 4 };
            let threads = rayon::current_num_threads().max(1);
            let rounds = (m * n * k / (MIN_TASK_MACS * threads)).min(4);
            let tasks = if rounds == 0 { 1 } else { rounds * threads };
            let per = n.div_ceil(tasks).div_ceil(tile) * tile;
            let ranges: Vec<(usize, usize)> = (0..n).step_by(per).map(|a| (a, (a + per).min(n))).collect();
            let task = |&(a, b): &(usize, usize)| {
                // SAFETY: the ISA was checked above; each task writes only columns a..b of y.
                unsafe {
                    if gemm {
                        gemm_tile::run(&xp, k / 2, m, w.as_ptr(), k / 2, n, k / 2, a, b, out, false)
                    } else {
                        dot_rows(&xb, m, w, n, k, a, b, out, isa)
                    }
                }
            };
            if ranges.len() == 1 {
                task(&ranges[0]);
            } else {
                ranges.par_iter().for_each(task);
            }
            // SAFETY: the ranges cover columns 0..n, and each task writes every row of its
            // columns before anything reads them: `dot_rows` puts each (row, column) once, and
            // the GEMM's first K block assigns (later blocks add) every row of every tile.
            unsafe { y.set_len(m * n) };
            y
        })
        .collect()
}

/// Attention's two products in bf16 (f32 sums), built on the packed GEMM with its output
/// transposed, so that the operand packed for the GEMM is the one shared by every query head
/// of a KV head and every block of query rows: K as the scores' x, Vᵀ as the output's.
pub(crate) mod attention_products {
    use super::{gemm_tile, SharedOut};

    /// K (s keys × d) packed as the GEMM's x, and V (s × d) packed transposed (d rows of
    /// keys, taken in pairs), both rounded to bf16. Rows are read through `row(i)`.
    pub struct PackedKv {
        k: Vec<u32>,
        vt: Vec<u32>,
        s: usize,
        d: usize,
    }

    impl PackedKv {
        pub fn new<'a>(k_row: impl Fn(usize) -> &'a [f32], v_row: impl Fn(usize) -> &'a [f32], s: usize, d: usize) -> Self {
            let mut k = Vec::new();
            gemm_tile::pack_rows(k_row, s, d, &mut k);
            let vt = gemm_tile::pack_columns(v_row, s, d);
            PackedKv { k, vt, s, d }
        }

        /// Scores `Q Kᵀ` of `rows` query rows (`q_rs` apart) against the first `nk` keys, into
        /// `p` (rows `ld` apart); `qb` is scratch.
        ///
        /// # Safety
        /// The CPU must have AVX512-BF16; q must span the rows given; nk ≤ s, ld ≥ nk.
        #[allow(clippy::too_many_arguments)]
        pub unsafe fn scores(&self, q: *const f32, q_rs: usize, rows: usize, nk: usize, p: &mut [f32], ld: usize, qb: &mut Vec<u16>) {
            debug_assert!(nk <= self.s && ld >= nk && p.len() >= rows * ld && self.d.is_multiple_of(2));
            let d = self.d;
            qb.resize(rows * d, 0);
            for r in 0..rows {
                super::round_row(std::slice::from_raw_parts(q.add(r * q_rs), d), &mut qb[r * d..(r + 1) * d]);
            }
            gemm_tile::run(&self.k, d / 2, nk, qb.as_ptr(), d / 2, ld, d / 2, 0, rows, SharedOut(p.as_mut_ptr()), true);
        }

        /// Output `P V` of `rows` probability rows (`ld` apart, `ld` even, zero past the keys
        /// they see) into `out` (rows `o_rs` apart, d values each); `pb` is scratch.
        ///
        /// # Safety
        /// The CPU must have AVX512-BF16; out must span the rows given and no other thread may
        /// write them; ld ≤ s rounded up to even.
        pub unsafe fn output(&self, p: &[f32], rows: usize, ld: usize, out: *mut f32, o_rs: usize, pb: &mut Vec<u16>) {
            debug_assert!(ld.is_multiple_of(2) && ld <= self.s.next_multiple_of(2) && p.len() >= rows * ld);
            pb.resize(rows * ld, 0);
            for r in 0..rows {
                super::round_row(&p[r * ld..(r + 1) * ld], &mut pb[r * ld..(r + 1) * ld]);
            }
            let sp = self.s.next_multiple_of(2);
            gemm_tile::run(&self.vt, sp / 2, self.d, pb.as_ptr(), ld / 2, o_rs, ld / 2, 0, rows, SharedOut(out), true);
        }
    }
}

/// Each value of `src` rounded to bf16 ([`to_bf16`], bit for bit), into `dst`.
fn round_row(src: &[f32], dst: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512bw") {
        // SAFETY: AVX512F/BW were just detected.
        return unsafe { avx512::round_row(src, dst) };
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = to_bf16(s);
    }
}

/// Runs `iters` rounds of 24 independent `vdpbf16ps` (512-bit) on registers only, and returns
/// the flops done (64 per instruction: 32 bf16 pairs, a multiply and an add each), or None
/// without AVX512-BF16. Timed on every thread, it gives the instruction's sustained throughput
/// on this machine: the peak that `gramrr bench engine` measures GEMMs against.
pub fn peak_probe(iters: usize) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if detected_isa() == Isa::Avx512Bf16 {
        // SAFETY: the ISA was just checked.
        unsafe { probe(iters) };
        return Some(iters.div_ceil(256) as f64 * 256.0 * 24.0 * 64.0);
    }
    let _ = iters;
    None
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn probe(iters: usize) {
    use std::arch::x86_64::*;
    let a: __m512bh = std::mem::transmute(_mm512_set1_epi16(0x3f80)); // bf16 1.0
    let b: __m512bh = std::mem::transmute(_mm512_set1_epi16(0x3c00)); // bf16 2^-7
    let mut acc = [_mm512_setzero_ps(); 24];
    for _ in 0..iters.div_ceil(256) {
        for _ in 0..256 {
            for v in acc.iter_mut() {
                *v = _mm512_dpbf16_ps(*v, a, b);
            }
        }
        acc = std::hint::black_box(acc);
    }
    std::hint::black_box(acc);
}

/// y's buffer, shared by tasks that write disjoint columns.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint elements (their own weight rows' columns) and the buffer
// outlives the parallel loop that uses it.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

/// Columns a..b of y by dot products along K.
///
/// # Safety
/// `isa` must be available; no other thread may write columns a..b of `out`, an (m, n) buffer.
#[allow(clippy::too_many_arguments)]
unsafe fn dot_rows(xb: &[u16], m: usize, w: &[u16], n: usize, k: usize, a: usize, b: usize, out: SharedOut, isa: Isa) {
    let put = |r: usize, j: usize, v: f32| unsafe { *out.0.add(r * n + j) = v };
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Bf16 => unsafe { avx512::dot_rows(xb, m, w, n, k, a, b, put) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::dot_rows(xb, m, w, k, a, b, put) },
        _ => {
            for j in a..b {
                let wr = &w[j * k..(j + 1) * k];
                for r in 0..m {
                    put(r, j, scalar_dot(wr, &xb[r * k..(r + 1) * k]));
                }
            }
        }
    }
}

/// One dot product in order, each exact bf16 product added to an f32 sum.
fn scalar_dot(w: &[u16], x: &[u16]) -> f32 {
    w.iter().zip(x).fold(0f32, |s, (&a, &b)| s + to_f32(a) * to_f32(b))
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    const NW: usize = 4;
    const MX: usize = 4;

    /// Sixteen f32 (as bits) → their bf16 bits in the low half of each lane: the integer
    /// rounding of [`super::to_bf16`], NaN kept quiet, bit for bit.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn round_lanes(b: __m512i) -> __m512i {
        let odd = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
        let rounded = _mm512_srli_epi32(_mm512_add_epi32(b, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))), 16);
        let nan = _mm512_cmp_ps_mask(_mm512_castsi512_ps(b), _mm512_castsi512_ps(b), _CMP_UNORD_Q);
        let quiet = _mm512_or_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(0x40));
        _mm512_mask_mov_epi32(rounded, nan, quiet)
    }

    /// [`super::round_row`] sixteen values at a time.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn round_row(src: &[f32], dst: &mut [u16]) {
        let n = src.len().min(dst.len());
        let body = n / 16 * 16;
        for c in (0..body).step_by(16) {
            let h = round_lanes(_mm512_loadu_si512(src.as_ptr().add(c) as *const __m512i));
            _mm256_storeu_si256(dst.as_mut_ptr().add(c) as *mut __m256i, _mm512_cvtepi32_epi16(h));
        }
        for c in body..n {
            dst[c] = super::to_bf16(src[c]);
        }
    }

    /// # Safety
    /// AVX512F/BW and AVX512-BF16 must be available.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16,avx2,fma")]
    pub(super) unsafe fn dot_rows(xb: &[u16], m: usize, w: &[u16], _n: usize, k: usize, a: usize, b: usize, put: impl Fn(usize, usize, f32)) {
        let mut j = a;
        while j < b {
            let nw = (b - j).min(NW);
            let mut r = 0;
            while r < m {
                let mx = (m - r).min(MX);
                let wp: [*const u16; NW] = std::array::from_fn(|i| w.as_ptr().add((j + i.min(nw - 1)) * k));
                let xp: [*const u16; MX] = std::array::from_fn(|i| xb.as_ptr().add((r + i.min(mx - 1)) * k));
                // Tails reuse the last row (a valid address) and drop its results.
                let res = match mx {
                    1 => widen::<1>(tile::<1>(wp, [xp[0]], k)),
                    2 => widen::<2>(tile::<2>(wp, [xp[0], xp[1]], k)),
                    3 => widen::<3>(tile::<3>(wp, [xp[0], xp[1], xp[2]], k)),
                    _ => tile::<MX>(wp, xp, k),
                };
                for (i, row) in res.iter().enumerate().take(nw) {
                    for (q, &v) in row.iter().enumerate().take(mx) {
                        put(r + q, j + i, v);
                    }
                }
                r += mx;
            }
            j += nw;
        }
    }

    fn widen<const R: usize>(t: [[f32; R]; NW]) -> [[f32; MX]; NW] {
        std::array::from_fn(|i| std::array::from_fn(|q| if q < R { t[i][q] } else { 0.0 }))
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn load(p: *const u16, rest: usize) -> __m512bh {
        let v = if rest >= 32 {
            _mm512_loadu_si512(p as *const __m512i)
        } else {
            _mm512_maskz_loadu_epi16(((1u64 << rest) - 1) as __mmask32, p as *const i16)
        };
        std::mem::transmute::<__m512i, __m512bh>(v)
    }

    /// NW weight rows · R input rows over all of K.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn tile<const R: usize>(w: [*const u16; NW], x: [*const u16; R], k: usize) -> [[f32; R]; NW] {
        let mut acc = [[_mm512_setzero_ps(); R]; NW];
        let mut i = 0;
        while i < k {
            let rest = k - i;
            let xv: [__m512bh; R] = std::array::from_fn(|q| load(x[q].add(i), rest));
            for (wi, accs) in w.iter().zip(acc.iter_mut()) {
                let wv = load(wi.add(i), rest);
                for (a, &xq) in accs.iter_mut().zip(xv.iter()) {
                    *a = _mm512_dpbf16_ps(*a, wv, xq);
                }
            }
            i += 32;
        }
        std::array::from_fn(|wi| std::array::from_fn(|q| _mm512_reduce_add_ps(acc[wi][q])))
    }
}

/// The packed GEMM (AVX512-BF16, many rows).
mod gemm_tile {
    use super::SharedOut;

    /// Weight rows per register tile.
    pub const NR: usize = 12;
    /// Input rows per register (16 f32 lanes) and registers per tile (2: 32 rows).
    const MR: usize = 16;
    const MT: usize = 2;
    /// Input-row groups of 16 per block (128 rows), and K pairs per block (1536 values): the
    /// x block (384 KiB) stays in L2, a 12-row weight block (36 KiB) about in L1. Each K block
    /// ends in a scalar pass that adds the tile into y; with 512-value blocks those passes cost
    /// 4–12% of the GEMM (examples/bf16_gemm_bench.rs, 2 Zen 4 cores: 512×576 by 1536×576
    /// 350 → 378 GFLOP/s, 2048×1024 by 3072×1024 353 → 398). 384-pair blocks were slower than
    /// both (263 GFLOP/s at K = 1536), for a reason not found.
    const MC_GROUPS: usize = 8;
    const KC_PAIRS: usize = 768;

    /// x (m, k) f32, rounded to bf16 → groups of 16 rows, each K/2 pairs of 16 rows'
    /// `(x[2p], x[2p+1])` as one u32 (low half the even element, as `vdpbf16ps` pairs them).
    /// Rows past m are 0.
    pub fn pack(x: &[f32], m: usize, k: usize) -> Vec<u32> {
        let mut xp = Vec::new();
        pack_rows(|r| &x[r * k..(r + 1) * k], m, k, &mut xp);
        xp
    }

    /// [`pack`] into `xp`, row r of x given by `row(r)` (k values). An odd k packs a zero as
    /// the last pair's second value.
    pub fn pack_rows<'a>(row: impl Fn(usize) -> &'a [f32], m: usize, k: usize, xp: &mut Vec<u32>) {
        let kp = k.div_ceil(2);
        let groups = m.div_ceil(MR);
        xp.clear();
        xp.resize(groups * kp * MR, 0);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512bw") {
            // SAFETY: AVX512F/BW were just detected.
            return unsafe { pack_rows_avx512(&row, m, k, xp) };
        }
        pack_rows_scalar(&row, m, k, xp)
    }

    /// The portable [`pack_rows`], and the oracle its vector form is tested against.
    pub fn pack_rows_scalar<'a>(row: &impl Fn(usize) -> &'a [f32], m: usize, k: usize, xp: &mut [u32]) {
        let kp = k.div_ceil(2);
        for r in 0..m {
            let (g, lane) = (r / MR, r % MR);
            let row = row(r);
            let base = g * kp * MR + lane;
            for p in 0..k / 2 {
                xp[base + p * MR] = super::to_bf16(row[2 * p]) as u32 | (super::to_bf16(row[2 * p + 1]) as u32) << 16;
            }
            if !k.is_multiple_of(2) {
                xp[base + (kp - 1) * MR] = super::to_bf16(row[k - 1]) as u32;
            }
        }
    }

    /// [`pack_rows`] sixteen rows at a time: each row rounded in registers (the same integer
    /// rounding as [`super::to_bf16`], bit for bit) into a row of pairs, then the group's pairs
    /// gathered column by column. The scalar loop cost 3.7% of a bf16 scoring pass (perf).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn pack_rows_avx512<'a>(row: &impl Fn(usize) -> &'a [f32], m: usize, k: usize, xp: &mut [u32]) {
        use std::arch::x86_64::*;
        let kp = k.div_ceil(2);
        let mut rows = vec![0u16; MR * kp * 2];
        let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let idx = _mm512_mullo_epi32(lanes, _mm512_set1_epi32(kp as i32));
        for g in 0..m.div_ceil(MR) {
            let live = (m - g * MR).min(MR);
            for lane in 0..MR {
                let dst = &mut rows[lane * kp * 2..(lane + 1) * kp * 2];
                if lane >= live {
                    dst.fill(0);
                    continue;
                }
                super::avx512::round_row(row(g * MR + lane), &mut dst[..k]);
                if !k.is_multiple_of(2) {
                    dst[k] = 0;
                }
            }
            let pairs = rows.as_ptr() as *const i32;
            let out = xp.as_mut_ptr().add(g * kp * MR);
            for p in 0..kp {
                let v = _mm512_i32gather_epi32::<4>(idx, pairs.add(p));
                _mm512_storeu_si512(out.add(p * MR) as *mut __m512i, v);
            }
        }
    }

    /// A matrix v (s rows × d) packed as the GEMM's x for `vᵀ`: groups of 16 columns, each
    /// s/2 pairs (rounded up) of `(v[2p][c], v[2p+1][c])` over its 16 columns c, rounded to bf16;
    /// a missing last row and columns past d are 0.
    pub fn pack_columns<'a>(row: impl Fn(usize) -> &'a [f32], s: usize, d: usize) -> Vec<u32> {
        let kp = s.div_ceil(2);
        let groups = d.div_ceil(MR);
        let mut xp = vec![0u32; groups * kp * MR];
        let zero = vec![0f32; d];
        let mut pair = [vec![0u16; groups * MR], vec![0u16; groups * MR]];
        for p in 0..kp {
            for (h, half) in pair.iter_mut().enumerate() {
                let r = 2 * p + h;
                super::round_row(if r < s { row(r) } else { &zero }, &mut half[..d]);
            }
            for g in 0..groups {
                let out = &mut xp[(g * kp + p) * MR..][..MR];
                for (lane, o) in out.iter_mut().enumerate() {
                    let c = g * MR + lane;
                    *o = pair[0][c] as u32 | (pair[1][c] as u32) << 16;
                }
            }
        }
        xp
    }

    /// Columns a..b of y (m rows, n apart) from the first kp pairs of x packed by [`pack`]
    /// (`xgs` pairs per group of rows) and of the weight's rows, `ldw` pairs (2·ldw bf16 values)
    /// apart. `transposed`: write yᵀ instead (rows a..b of it, n apart, m values each), with
    /// one vector store per register where y takes a scalar pass.
    ///
    /// # Safety
    /// AVX512F/BW and AVX512-BF16 must be available; w must hold rows 0..b; no other thread may
    /// write columns a..b.
    #[allow(clippy::too_many_arguments)]
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16,avx2,fma")]
    pub unsafe fn run(xp: &[u32], xgs: usize, m: usize, w: *const u16, ldw: usize, n: usize, kp: usize, a: usize, b: usize, out: SharedOut, transposed: bool) {
        use std::arch::x86_64::*;
        let groups = m.div_ceil(MR);
        // The weight as u32 pairs. u16 data is 2-aligned, so unaligned reads.
        let w32 = w as *const u32;
        for g0 in (0..groups).step_by(MC_GROUPS) {
            let g1 = (g0 + MC_GROUPS).min(groups);
            for p0 in (0..kp).step_by(KC_PAIRS) {
                let pn = (p0 + KC_PAIRS).min(kp) - p0;
                let first = p0 == 0;
                let mut j = a;
                while j < b {
                    let nw = (b - j).min(NR);
                    let mut g = g0;
                    while g < g1 {
                        let mt = (g1 - g).min(MT);
                        let x0 = xp.as_ptr().add((g * xgs + p0) * MR);
                        let x1 = if mt == 2 { xp.as_ptr().add(((g + 1) * xgs + p0) * MR) } else { x0 };
                        let wrow = |i: usize| w32.add((j + i.min(nw - 1)) * ldw + p0);
                        let mut acc = [[_mm512_setzero_ps(); MT]; NR];
                        let wp: [*const u32; NR] = std::array::from_fn(wrow);
                        for p in 0..pn {
                            let xv0: __m512bh = std::mem::transmute(_mm512_loadu_si512(x0.add(p * MR) as *const __m512i));
                            let xv1: __m512bh = std::mem::transmute(_mm512_loadu_si512(x1.add(p * MR) as *const __m512i));
                            for (accs, wi) in acc.iter_mut().zip(wp.iter()) {
                                let bw: __m512bh = std::mem::transmute(_mm512_set1_epi32(wi.add(p).read_unaligned() as i32));
                                accs[0] = _mm512_dpbf16_ps(accs[0], xv0, bw);
                                accs[1] = _mm512_dpbf16_ps(accs[1], xv1, bw);
                            }
                        }
                        if transposed {
                            // Registers → yᵀ: each holds 16 consecutive values of one row.
                            for (i, accs) in acc.iter().enumerate().take(nw) {
                                let yrow = out.0.add((j + i) * n + g * MR);
                                for (r, v) in accs.iter().enumerate().take(mt) {
                                    let live = (m - (g + r) * MR).min(MR);
                                    let mask: __mmask16 = if live == MR { 0xffff } else { (1u16 << live) - 1 };
                                    let y = yrow.add(r * MR);
                                    let v = if first { *v } else { _mm512_add_ps(*v, _mm512_maskz_loadu_ps(mask, y)) };
                                    _mm512_mask_storeu_ps(y, mask, v);
                                }
                            }
                            g += mt;
                            continue;
                        }
                        // Registers → y: 16 rows per register, one weight row per accumulator.
                        let mut tmp = [[0f32; MR * MT]; NR];
                        for (t, accs) in tmp.iter_mut().zip(acc.iter()) {
                            _mm512_storeu_ps(t.as_mut_ptr(), accs[0]);
                            _mm512_storeu_ps(t.as_mut_ptr().add(MR), accs[1]);
                        }
                        let rows = (m - g * MR).min(mt * MR);
                        for q in 0..rows {
                            let yrow = out.0.add((g * MR + q) * n + j);
                            for (i, t) in tmp.iter().enumerate().take(nw) {
                                let y = yrow.add(i);
                                *y = if first { t[q] } else { *y + t[q] };
                            }
                        }
                        g += mt;
                    }
                    j += nw;
                }
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run(_: &[u32], _: usize, _: usize, _: *const u16, _: usize, _: usize, _: usize, _: usize, _: usize, _: SharedOut, _: bool) {
        unreachable!("the bf16 GEMM needs AVX512-BF16")
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    const NW: usize = 4;

    /// # Safety
    /// AVX2 and FMA must be available.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_rows(xb: &[u16], m: usize, w: &[u16], k: usize, a: usize, b: usize, put: impl Fn(usize, usize, f32)) {
        let body = k / 8 * 8;
        let mut j = a;
        while j < b {
            let nw = (b - j).min(NW);
            let wp: [*const u16; NW] = std::array::from_fn(|i| w.as_ptr().add((j + i.min(nw - 1)) * k));
            for r in 0..m {
                let x = xb.as_ptr().add(r * k);
                let mut acc = [_mm256_setzero_ps(); NW];
                let mut i = 0;
                while i < body {
                    let xv = widen(x.add(i));
                    for (s, wi) in acc.iter_mut().zip(wp.iter()) {
                        *s = _mm256_fmadd_ps(widen(wi.add(i)), xv, *s);
                    }
                    i += 8;
                }
                for (q, (s, wi)) in acc.iter().zip(wp.iter()).enumerate().take(nw) {
                    let mut v = hsum(*s);
                    for t in body..k {
                        v += super::to_f32(*wi.add(t)) * super::to_f32(*x.add(t));
                    }
                    put(r, j + q, v);
                }
            }
            j += nw;
        }
    }

    /// 8 bf16 → 8 f32.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn widen(p: *const u16) -> __m256 {
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, rng: &mut rand_chacha::ChaCha8Rng) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0f32..1.0) * if rng.random_bool(0.05) { 30.0 } else { 1.0 }).collect()
    }

    #[test]
    fn rounding_is_to_nearest_even_as_torch_does() {
        // 1 + 2^-8 is halfway between bf16 1 and 1 + 2^-7: even (1) wins; 1 + 3·2^-8 goes up.
        assert_eq!(to_bf16(1.0 + 2f32.powi(-8)), to_bf16(1.0));
        assert_eq!(to_bf16(1.0 + 3.0 * 2f32.powi(-8)), to_bf16(1.0 + 2f32.powi(-6)));
        assert_eq!(to_f32(to_bf16(-2.5)), -2.5);
        assert!(to_f32(to_bf16(f32::NAN)).is_nan());
        assert_eq!(to_f32(to_bf16(f32::INFINITY)), f32::INFINITY);
        // Agrees with `half` (also round to nearest even) on awkward values.
        for v in [3.14159f32, -1e-30, 65504.0, 1.0e38, 0.1, -7.77e-3] {
            assert_eq!(to_bf16(v), half::bf16::from_f32(v).to_bits(), "{v}");
        }
    }

    /// The vector packing rounds and places every value as the scalar one, bit for bit:
    /// odd K, a partial last group of rows, NaN, infinities, subnormals and rounding ties.
    #[test]
    fn vector_packing_equals_the_scalar_packing() {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512bw") {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
            let specials = [f32::NAN, f32::INFINITY, -f32::INFINITY, 1e-40, -3e-39, 1.0 + 2f32.powi(-8), 0.0, -0.0];
            for &(m, k) in &[(1, 64), (5, 33), (16, 576), (37, 17), (40, 1)] {
                let mut x = random(m * k, &mut rng);
                for (i, v) in specials.iter().enumerate() {
                    let j = (i * 7919) % x.len();
                    x[j] = *v;
                }
                let row = |r: usize| &x[r * k..(r + 1) * k];
                let len = m.div_ceil(16) * k.div_ceil(2) * 16;
                let (mut a, mut b) = (vec![7u32; len], vec![0u32; len]);
                gemm_tile::pack_rows_scalar(&row, m, k, &mut b);
                // SAFETY: AVX512F/BW were just detected.
                unsafe { gemm_tile::pack_rows_avx512(&row, m, k, &mut a) };
                assert_eq!(a, b, "m {m} k {k}");
            }
        }
    }

    /// Every ISA this CPU has, every path (dot products and the packed GEMM), shapes with
    /// tails in every dimension: the same sums as the scalar oracle up to f32 summation order,
    /// and within the bf16 activation-rounding bound of the exact f32 product.
    #[test]
    fn kernels_match_the_scalar_oracle_and_the_f32_product_within_the_rounding_bound() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for &(m, n, k) in &[(1, 5, 64), (3, 13, 576), (4, 12, 70), (7, 30, 33), (16, 25, 96), (37, 29, 1026), (130, 50, 600)] {
            let x = random(m * k, &mut rng);
            let wf = random(n * k, &mut rng);
            let w: Vec<u16> = wf.iter().map(|&v| to_bf16(v)).collect();
            let oracle = matmul(&x, m, &w, n, k, Isa::Scalar);
            for r in 0..m {
                for j in 0..n {
                    // Against the f64 product of the bf16 weights and the unrounded x:
                    // rounding x to bf16 moves each term by at most |w||x|·2^-9, and the f32
                    // sums add at most k·2^-24·Σ|w||x|; 2^-8·Σ|w||x| covers both for k < 2^15.
                    let (mut exact, mut mag) = (0f64, 0f64);
                    for t in 0..k {
                        let p = to_f32(w[j * k + t]) as f64 * x[r * k + t] as f64;
                        exact += p;
                        mag += p.abs();
                    }
                    let got = oracle[r * n + j] as f64;
                    assert!((got - exact).abs() <= mag * 2f64.powi(-8), "m={m} n={n} k={k} [{r},{j}]: {got} vs {exact} (Σ|wx| {mag})");
                }
            }
            for isa in [Isa::Avx2, Isa::Avx512Bf16].into_iter().filter(|&i| available(i)) {
                let got = matmul(&x, m, &w, n, k, isa);
                for (i, (a, b)) in got.iter().zip(&oracle).enumerate() {
                    // Same exact products, other summation order: f32 sums of k terms differ
                    // by at most k·2^-24·Σ|w x|, bounded here by the largest row's magnitude.
                    let (r, j) = (i / n, i % n);
                    let mag: f32 = (0..k).map(|t| (to_f32(w[j * k + t]) * to_f32(to_bf16(x[r * k + t]))).abs()).sum();
                    assert!((a - b).abs() <= mag * k as f32 * 2f32.powi(-24), "{isa:?} m={m} n={n} k={k} [{r},{j}]: {a} vs scalar {b}");
                }
            }
        }
    }

    /// A single nonzero term: no summation order to differ, so every ISA gives the exact
    /// product of the bf16 values, bit for bit (and a misplaced row or column would show).
    #[test]
    fn one_term_products_are_exact_on_every_isa() {
        let (m, n, k) = (40, 26, 64);
        let mut x = vec![0f32; m * k];
        let mut wf = vec![0f32; n * k];
        for r in 0..m {
            x[r * k + (r * 7) % k] = 1.0 + r as f32 / 3.0;
        }
        for j in 0..n {
            for t in 0..k {
                wf[j * k + t] = (j as f32 + 1.0) * if t % 2 == 0 { 0.5 } else { -0.25 };
            }
        }
        let w: Vec<u16> = wf.iter().map(|&v| to_bf16(v)).collect();
        for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512Bf16].into_iter().filter(|&i| available(i)) {
            for rows in [1, 5, m] {
                let got = matmul(&x[..rows * k], rows, &w, n, k, isa);
                for r in 0..rows {
                    let t = (r * 7) % k;
                    for j in 0..n {
                        let want = to_f32(to_bf16(x[r * k + t])) * to_f32(w[j * k + t]);
                        assert_eq!(got[r * n + j], want, "{isa:?} rows={rows} [{r},{j}]");
                    }
                }
            }
        }
    }
}
