//! Integer matmuls on GGUF blocks for a few input rows (decoding): our own kernels.
//!
//! candle's quantized matmul only has fast x86 kernels for rows that are a multiple of 256
//! values and for Q4_K/Q6_K/Q8_0; SmolLM2's 576-wide rows and the Q5_0/Q4_1 blocks that
//! llama.cpp writes for them fall to scalar code there. These kernels cover Q4_0, Q4_1, Q5_0,
//! Q5_1, Q8_0, Q4_K and Q6_K at any row length, read the weights straight from the GGUF block
//! bytes (candle's CPU storage is those bytes), and reuse each decoded weight block for every
//! input row, which is what makes batch 8 cheaper per token than batch 1. Where candle's
//! AVX512-VNNI tiles do apply they are faster, and `qlinear` sends those products there.
//!
//! Activations: each input row is quantized once per matmul to 8-bit chunks of 32 values
//! (`x ≈ dx·q`, `q` in -127..=127, `dx = max|x|/127`), with the sum of `q` kept per 16 values
//! (times `dx`). Every supported block type splits into 32-value chunks whose weights are
//! `wv·u + c`, with `u` a small unsigned integer and `wv`, `c` per chunk or per 16 values:
//!
//! | type | chunk of 32 | u | wv | c |
//! |---|---|---|---|---|
//! | Q4_0 | block: f16 d, 16 B nibbles | nibble | d | -8d |
//! | Q4_1 | block: f16 d, f16 m, 16 B nibbles | nibble | d | m |
//! | Q5_0 | block: f16 d, u32 high bits, 16 B nibbles | 5 bits | d | -16d |
//! | Q5_1 | block: f16 d, f16 m, u32 high bits, 16 B nibbles | 5 bits | d | m |
//! | Q8_0 | block: f16 d, 32 i8 | i8 (signed) | d | 0 |
//! | Q4_K | 1/8 of 256: f16 d, f16 dmin, 12 B 6-bit scales and mins, 128 B nibbles | nibble | d·sc | -dmin·m |
//! | Q6_K | 1/8 of 256: 128 B low nibbles, 64 B high 2 bits, 16 i8 scales, f16 d | 6 bits | d·sc per 16 | -32·d·sc per 16 |
//!
//! so a chunk's contribution to a dot product is `dx·wv·Σ u·q + c·dx·Σ q`: one integer dot
//! product of 32 u8×i8 pairs (`vpdpbusd` with AVX512-VNNI, `vpmaddubsw`+`vpmaddwd` with AVX2)
//! and a few float operations. Q8_0's weights are signed; they go through the same unsigned
//! instruction as `|w|·sign(q, w)` (AVX2's `vpmaddubsw` would saturate on `(w+128)·q`).
//! The SIMD kernels treat Q4_0 and Q5_0 the same way, as signed `u − 8` and `u − 16` with no
//! `c` term.
//! The SIMD kernels take 4 weight rows at a time (the activation chunk is loaded once for
//! them, and their accumulators are independent dependency chains) against up to 4 input rows
//! (2 with AVX2's 16 registers), and rayon splits the weight rows into tasks.
//!
//! The 8-bit rounding of the activations is the only difference from the f32 product of the
//! dequantized weights (llama.cpp does the same). A scalar version of the same arithmetic runs
//! on other CPUs and is the tests' oracle.

use std::sync::OnceLock;

use candle_core::quantized::GgmlDType;
use rayon::prelude::*;

/// Values per activation chunk (and per legacy block).
const QK: usize = 32;

/// Which instruction set the kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX512-VNNI on 256-bit vectors (`vpdpbusd`), AVX512-BW/VL masks, AVX2, FMA and F16C.
    Vnni,
    /// AVX2 `vpmaddubsw`, FMA, F16C.
    Avx2,
    Scalar,
}

/// The best instruction set this CPU has (checked once).
pub fn detected_isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
            let avx512 = is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl") && is_x86_feature_detected!("avx512bw");
            if avx2 && avx512 && is_x86_feature_detected!("avx512vnni") {
                return Isa::Vnni;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    })
}

/// Whether these kernels handle `dtype`.
pub fn supports(dtype: GgmlDType) -> bool {
    block_bytes(dtype).is_some()
}

/// (values, bytes) of one block.
fn block_bytes(dtype: GgmlDType) -> Option<(usize, usize)> {
    Some(match dtype {
        GgmlDType::Q4_0 => (32, 18),
        GgmlDType::Q4_1 => (32, 20),
        GgmlDType::Q5_0 => (32, 22),
        GgmlDType::Q5_1 => (32, 24),
        GgmlDType::Q8_0 => (32, 34),
        GgmlDType::Q4K => (256, 144),
        GgmlDType::Q6K => (256, 210),
        _ => return None,
    })
}

/// Input rows quantized to 8 bits, chunk by chunk (see the module doc).
pub struct QuantizedRows {
    k: usize,
    m: usize,
    /// (m, k)
    qs: Vec<i8>,
    /// (m, k/32): the chunk scales `dx`.
    d: Vec<f32>,
    /// (m, k/16): `dx·Σq` over each 16 values.
    ds16: Vec<f32>,
    /// (m, k/32): `dx·Σq` over each chunk, for types whose `c` is one per chunk.
    ds32: Vec<f32>,
}

impl QuantizedRows {
    /// Quantizes `x` (m rows of k values, k a multiple of 32).
    pub fn new(x: &[f32], k: usize) -> Self {
        assert!(k.is_multiple_of(QK) && x.len().is_multiple_of(k), "rows of {k} values in {} values", x.len());
        let m = x.len() / k;
        let mut qs = vec![0i8; m * k];
        let mut d = vec![0f32; m * k / QK];
        let mut ds16 = vec![0f32; m * k / 16];
        let mut ds32 = vec![0f32; m * k / QK];
        for (c, xs) in x.chunks_exact(QK).enumerate() {
            let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
            let dx = amax / 127.0;
            let id = if dx > 0.0 { 1.0 / dx } else { 0.0 };
            let q = &mut qs[c * QK..(c + 1) * QK];
            // Ties to even, as llama.cpp's SIMD quantizer rounds (`_mm256_round_ps`, nearest).
            // Adding and taking away 1.5·2²³ rounds |v| < 2²² that way in f32 arithmetic, and
            // vectorises, where `round_ties_even` became a call to `rintf` per value (perf).
            const ROUND: f32 = 12_582_912.0;
            for (q, v) in q.iter_mut().zip(xs) {
                *q = ((v * id + ROUND) - ROUND) as i8;
            }
            d[c] = dx;
            let mut both = 0;
            for h in 0..2 {
                let s: i32 = q[16 * h..16 * h + 16].iter().map(|&v| v as i32).sum();
                ds16[2 * c + h] = dx * s as f32;
                both += s;
            }
            ds32[c] = dx * both as f32;
        }
        Self { k, m, qs, d, ds16, ds32 }
    }

    pub fn rows(&self) -> usize {
        self.m
    }
}

/// Whether this CPU can run `isa`.
pub fn available(isa: Isa) -> bool {
    matches!((isa, detected_isa()), (Isa::Scalar, _) | (Isa::Avx2, Isa::Avx2 | Isa::Vnni) | (Isa::Vnni, Isa::Vnni))
}

/// `out[n·m + r] = Σ_k W[n, k]·x[r, k]` for the `rows` weight rows in `w` (GGUF block bytes of
/// `dtype`, rows of `xq.k` values): the product transposed, (rows, m). Threads over weight
/// rows with rayon.
pub fn matmul_t(dtype: GgmlDType, w: &[u8], rows: usize, xq: &QuantizedRows, out: &mut [f32], isa: Isa) {
    matmul_t_many(&mut [WeightRows { dtype, w, rows, out }], xq, isa);
}

/// One weight's rows and where its product goes, for [`matmul_t_many`].
pub struct WeightRows<'a> {
    pub dtype: GgmlDType,
    pub w: &'a [u8],
    pub rows: usize,
    /// (rows, m)
    pub out: &'a mut [f32],
}

/// [`matmul_t`] for several weights that share the input (a layer's q, k and v; gate and up),
/// in one parallel region: a decoding step pays rayon's hand-over once for them, not per
/// weight.
pub fn matmul_t_many(weights: &mut [WeightRows], xq: &QuantizedRows, isa: Isa) {
    assert!(available(isa), "{isa:?} kernels on a CPU without them");
    let (k, m) = (xq.k, xq.m);
    let total: usize = weights.iter().map(|w| w.rows).sum();
    // A few tasks per thread balance the load; each must stay long against rayon's overhead.
    let per_task = (total / (rayon::current_num_threads() * 4)).clamp(16, 256);
    let mut tasks = Vec::new();
    for wr in weights.iter_mut() {
        let (bv, bb) = block_bytes(wr.dtype).expect("supported dtype");
        assert_eq!(k % bv, 0, "{:?} rows of {k} values", wr.dtype);
        let row_bytes = k / bv * bb;
        assert_eq!(wr.w.len(), wr.rows * row_bytes, "{:?} weight bytes for {} rows of {k}", wr.dtype, wr.rows);
        assert_eq!(wr.out.len(), wr.rows * m);
        let (dtype, w) = (wr.dtype, wr.w);
        for (t, out) in wr.out.chunks_mut(per_task * m).enumerate() {
            let n0 = t * per_task;
            let count = out.len() / m;
            tasks.push((dtype, &w[n0 * row_bytes..(n0 + count) * row_bytes], row_bytes, out));
        }
    }
    tasks.into_par_iter().for_each(|(dtype, w, row_bytes, out)| row_dots(dtype, w, row_bytes, xq, out, isa));
}

/// Weight rows the SIMD kernels take together. One: each row is then read from start to end
/// before the next, a single sequential stream that the hardware prefetcher follows. With four
/// rows side by side (one activation load for four rows), a decoding matvec that streams its
/// weight from memory ran at half the rate even with software prefetching
/// (examples/qkernel_stream.rs: Q8_0 10–15 GB/s against 17–23 on one Zen 4 core).
const WROWS: usize = 1;

/// Consecutive weight rows (`row_bytes` each) against every input row.
fn row_dots(dtype: GgmlDType, rows: &[u8], row_bytes: usize, xq: &QuantizedRows, out: &mut [f32], isa: Isa) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Vnni => {
            // SAFETY: `matmul_t_many` checked that the CPU has these features, and the row
            // lengths against the block count.
            unsafe { vnni::row_dots(dtype, rows, row_bytes, xq, out) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            // SAFETY: as above, for AVX2/FMA/F16C.
            unsafe { avx2::row_dots(dtype, rows, row_bytes, xq, out) }
        }
        _ => {
            for (row, o) in rows.chunks_exact(row_bytes).zip(out.chunks_exact_mut(xq.m)) {
                scalar_row_dots(dtype, row, xq, o);
            }
        }
    }
}

/// One 32-value chunk of weights as `wv·u + c` (per 16 values).
struct Chunk {
    u: [i32; QK],
    wv: [f32; 2],
    c: [f32; 2],
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Decodes chunk `c` (0-based, in value order) of a weight row.
fn decode_chunk(dtype: GgmlDType, row: &[u8], c: usize) -> Chunk {
    let mut u = [0i32; QK];
    let nibbles = |u: &mut [i32; QK], qs: &[u8]| {
        for j in 0..16 {
            u[j] = (qs[j] & 0xF) as i32;
            u[j + 16] = (qs[j] >> 4) as i32;
        }
    };
    let high5 = |u: &mut [i32; QK], qh: &[u8]| {
        let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
        for (j, u) in u.iter_mut().enumerate() {
            *u |= (((qh >> j) & 1) << 4) as i32;
        }
    };
    match dtype {
        GgmlDType::Q4_0 => {
            let b = &row[c * 18..];
            let d = f16_at(b, 0);
            nibbles(&mut u, &b[2..18]);
            Chunk { u, wv: [d; 2], c: [-8.0 * d; 2] }
        }
        GgmlDType::Q4_1 => {
            let b = &row[c * 20..];
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            nibbles(&mut u, &b[4..20]);
            Chunk { u, wv: [d; 2], c: [m; 2] }
        }
        GgmlDType::Q5_0 => {
            let b = &row[c * 22..];
            let d = f16_at(b, 0);
            nibbles(&mut u, &b[6..22]);
            high5(&mut u, &b[2..6]);
            Chunk { u, wv: [d; 2], c: [-16.0 * d; 2] }
        }
        GgmlDType::Q5_1 => {
            let b = &row[c * 24..];
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            nibbles(&mut u, &b[8..24]);
            high5(&mut u, &b[4..8]);
            Chunk { u, wv: [d; 2], c: [m; 2] }
        }
        GgmlDType::Q8_0 => {
            let b = &row[c * 34..];
            let d = f16_at(b, 0);
            for (j, u) in u.iter_mut().enumerate() {
                *u = b[2 + j] as i8 as i32;
            }
            Chunk { u, wv: [d; 2], c: [0.0; 2] }
        }
        GgmlDType::Q4K => {
            let b = &row[c / 8 * 144..];
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let j = c % 8;
            let (sc, m) = scale_min_k4(j, &b[4..16]);
            let qs = &b[16 + 32 * (j / 2)..16 + 32 * (j / 2) + 32];
            for (u, q) in u.iter_mut().zip(qs) {
                *u = if j.is_multiple_of(2) { q & 0xF } else { q >> 4 } as i32;
            }
            Chunk { u, wv: [d * sc as f32; 2], c: [-dmin * m as f32; 2] }
        }
        GgmlDType::Q6K => {
            let b = &row[c / 8 * 210..];
            let d = f16_at(b, 208);
            let (n, w) = (c % 8 / 4, c % 4);
            let ql = &b[64 * n + 32 * (w & 1)..];
            let qh = &b[128 + 32 * n..];
            for l in 0..QK {
                let lo = if w < 2 { ql[l] & 0xF } else { ql[l] >> 4 };
                u[l] = (lo | (((qh[l] >> (2 * w)) & 3) << 4)) as i32;
            }
            let sc = |h: usize| d * (b[192 + 8 * n + 2 * w + h] as i8) as f32;
            Chunk { u, wv: [sc(0), sc(1)], c: [-32.0 * sc(0), -32.0 * sc(1)] }
        }
        other => unreachable!("{other:?} is not supported by qkernels"),
    }
}

/// The 6-bit scale and min of sub-block `j` of a Q4_K block (ggml's `get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

fn scalar_row_dots(dtype: GgmlDType, row: &[u8], xq: &QuantizedRows, out: &mut [f32]) {
    let nc = xq.k / QK;
    out.fill(0.0);
    for c in 0..nc {
        let ch = decode_chunk(dtype, row, c);
        for (r, o) in out.iter_mut().enumerate() {
            let x = &xq.qs[r * xq.k + c * QK..r * xq.k + (c + 1) * QK];
            let dx = xq.d[r * nc + c];
            for h in 0..2 {
                let dot: i32 = (16 * h..16 * h + 16).map(|l| ch.u[l] * x[l] as i32).sum();
                *o += ch.wv[h] * dx * dot as f32 + ch.c[h] * xq.ds16[r * 2 * nc + 2 * c + h];
            }
        }
    }
}

/// The SIMD kernels, compiled once per instruction set: `$dot` is the only difference.
/// A kernel for legacy blocks: one 32-value chunk per block of `$bytes`, decoded by `$decode`
/// into a `Ch` (inside `simd_kernels`).
#[cfg(target_arch = "x86_64")]
macro_rules! legacy_kernel {
    ($features:literal, $name:ident, $bytes:expr, $signed:expr, |$b:ident| $decode:expr) => {
        #[target_feature(enable = $features)]
        unsafe fn $name<const R: usize>(w: [*const u8; NW], xq: &QuantizedRows, r0: usize) -> Acc<R> {
            let mut acc = Acc::<R>::new();
            let mut ch = [Ch::ZERO; NW];
            for c in 0..xq.k / QK {
                for i in 0..NW {
                    let $b = w[i].add(c * $bytes);
                    ch[i] = $decode;
                }
                acc.add::<{ $signed }, false>(xq, r0, c, &ch);
            }
            acc
        }
    };
}

#[cfg(target_arch = "x86_64")]
macro_rules! simd_kernels {
    ($name:ident, $features:literal, $xtile:expr, $dot:item, $high_bits:item) => {
        mod $name {
            use super::{QuantizedRows, QK};
            use candle_core::quantized::GgmlDType;
            use std::arch::x86_64::*;

            $dot

            $high_bits

            /// Input rows taken together (their accumulators must fit in the registers).
            const XTILE: usize = $xtile;

            use super::WROWS as NW;

            /// `rows` holds weight rows of `row_bytes`, taken NW at a time; `out` is (rows, m).
            #[target_feature(enable = $features)]
            pub(super) unsafe fn row_dots(dtype: GgmlDType, rows: &[u8], row_bytes: usize, xq: &QuantizedRows, out: &mut [f32]) {
                let m = xq.m;
                for (g, out) in rows.chunks(NW * row_bytes).zip(out.chunks_mut(NW * m)) {
                    let count = g.len() / row_bytes;
                    // Missing rows repeat the last one; their results are dropped.
                    let mut w = [g.as_ptr(); NW];
                    for (i, w) in w.iter_mut().enumerate() {
                        *w = g.as_ptr().add(i.min(count - 1) * row_bytes);
                    }
                    let mut r0 = 0;
                    while r0 < m {
                        let take = (m - r0).min(XTILE);
                        let mut res = [[0f32; XTILE]; NW];
                        match take {
                            1 => tile::<1>(dtype, w, xq, r0, &mut res),
                            2 => tile::<2>(dtype, w, xq, r0, &mut res),
                            3 => tile::<3>(dtype, w, xq, r0, &mut res),
                            _ => tile::<XTILE>(dtype, w, xq, r0, &mut res),
                        }
                        for i in 0..count {
                            out[i * m + r0..i * m + r0 + take].copy_from_slice(&res[i][..take]);
                        }
                        r0 += take;
                    }
                }
            }

            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn tile<const R: usize>(dtype: GgmlDType, w: [*const u8; NW], xq: &QuantizedRows, r0: usize, res: &mut [[f32; XTILE]; NW]) {
                let acc = match dtype {
                    GgmlDType::Q4_0 => q4_0::<R>(w, xq, r0),
                    GgmlDType::Q4_1 => q4_1::<R>(w, xq, r0),
                    GgmlDType::Q5_0 => q5_0::<R>(w, xq, r0),
                    GgmlDType::Q5_1 => q5_1::<R>(w, xq, r0),
                    GgmlDType::Q8_0 => q8_0::<R>(w, xq, r0),
                    GgmlDType::Q4K => q4k::<R>(w, xq, r0),
                    GgmlDType::Q6K => q6k::<R>(w, xq, r0),
                    other => unreachable!("{other:?} is not supported by qkernels"),
                };
                for i in 0..NW {
                    res[i][..R].copy_from_slice(&acc.finish(i));
                }
            }

            /// One weight row's chunk: `wv·u + (ca | cb)` per 16 values.
            #[derive(Clone, Copy)]
            struct Ch {
                u: __m256i,
                wv: __m256,
                ca: f32,
                cb: f32,
            }

            impl Ch {
                const ZERO: Ch = Ch { u: unsafe { std::mem::transmute::<[u8; 32], __m256i>([0; 32]) }, wv: unsafe { std::mem::transmute::<[f32; 8], __m256>([0.0; 8]) }, ca: 0.0, cb: 0.0 };
            }

            /// Accumulators of NW weight rows × R input rows; the `ca`/`cb` terms of the NW
            /// weight rows go in the lanes of one 128-bit vector per input row.
            struct Acc<const R: usize> {
                v: [[__m256; R]; NW],
                c: [__m128; R],
            }

            const _: () = assert!(NW <= 4, "the corrections use one f32 lane per weight row");

            impl<const R: usize> Acc<R> {
                #[target_feature(enable = $features)]
                #[inline]
                unsafe fn new() -> Self {
                    Self { v: [[_mm256_setzero_ps(); R]; NW], c: [_mm_setzero_ps(); R] }
                }

                /// Adds chunk `c` of every input row: `dx·wv·Σu·q + ca·dx·Σq` (per 16 values).
                /// With `SIGNED`, `u` holds signed weights and the dot is `|u|·sign(q, u)`, and
                /// there is no `c` term. Without `HALVES`, `ca == cb` (one `c` per chunk: one
                /// product with the chunk's `dx·Σq` instead of two).
                #[target_feature(enable = $features)]
                #[inline]
                unsafe fn add<const SIGNED: bool, const HALVES: bool>(&mut self, xq: &QuantizedRows, r0: usize, c: usize, ch: &[Ch; NW]) {
                    let nc = xq.k / QK;
                    let ca = lanes(|i| ch[i].ca);
                    for r in 0..R {
                        let row = r0 + r;
                        let x = _mm256_loadu_si256(xq.qs.as_ptr().add(row * xq.k + c * QK) as *const __m256i);
                        let dx = _mm256_set1_ps(*xq.d.get_unchecked(row * nc + c));
                        for i in 0..NW {
                            let p = if SIGNED {
                                dot(_mm256_sign_epi8(ch[i].u, ch[i].u), _mm256_sign_epi8(x, ch[i].u))
                            } else {
                                dot(ch[i].u, x)
                            };
                            self.v[i][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(ch[i].wv, dx), self.v[i][r]);
                        }
                        if !SIGNED && HALVES {
                            let cb = lanes(|i| ch[i].cb);
                            let s = xq.ds16.as_ptr().add(row * 2 * nc + 2 * c);
                            self.c[r] = _mm_fmadd_ps(ca, _mm_set1_ps(*s), self.c[r]);
                            self.c[r] = _mm_fmadd_ps(cb, _mm_set1_ps(*s.add(1)), self.c[r]);
                        } else if !SIGNED {
                            self.c[r] = _mm_fmadd_ps(ca, _mm_set1_ps(*xq.ds32.get_unchecked(row * nc + c)), self.c[r]);
                        }
                    }
                }

                #[target_feature(enable = $features)]
                #[inline]
                unsafe fn finish(&self, i: usize) -> [f32; R] {
                    let mut out = [0f32; R];
                    for r in 0..R {
                        let v = self.v[i][r];
                        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
                        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
                        let mut c = [0f32; 4];
                        _mm_storeu_ps(c.as_mut_ptr(), self.c[r]);
                        out[r] = _mm_cvtss_f32(s) + c[i];
                    }
                    out
                }
            }

            /// One f32 lane per weight row (the rest zero).
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn lanes(f: impl Fn(usize) -> f32) -> __m128 {
                let mut v = [0f32; 4];
                for (i, v) in v.iter_mut().enumerate().take(NW) {
                    *v = f(i);
                }
                _mm_loadu_ps(v.as_ptr())
            }

            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn f16(p: *const u8) -> f32 {
                // In assembly because LLVM, seeing that only lane 0 is used, loaded the half
                // with `vpinsrw` into whatever register it liked, and it liked the accumulator:
                // every chunk's scale then waited for the previous chunk's FMA, and a Q8_0
                // decoding matvec ran at 12 GB/s from L2 where the same loop without that
                // dependency runs at ~30 (examples/qkernel_stream.rs).
                let v: __m128;
                std::arch::asm!(
                    "vpbroadcastw {v}, word ptr [{p}]",
                    "vcvtph2ps {v}, {v}",
                    p = in(reg) p,
                    v = out(xmm_reg) v,
                    options(pure, readonly, nostack, preserves_flags),
                );
                _mm_cvtss_f32(v)
            }

            /// 16 bytes of nibbles → 32 values (low nibbles first), as ggml orders them.
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn nibbles(p: *const u8) -> __m256i {
                let q = _mm_loadu_si128(p as *const __m128i);
                let m = _mm_set1_epi8(0xF);
                _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), m), _mm_and_si128(q, m))
            }

            // Q4_0 and Q5_0 subtract a fixed offset (8, 16): as signed weights `u − offset`, like
            // Q8_0's, they need none of the per-chunk correction terms, which packing and
            // adding cost a fifth of a Q5_0 decoding step's instructions.
            legacy_kernel!($features, q4_0, 18, true, |b| {
                Ch { u: _mm256_sub_epi8(nibbles(b.add(2)), _mm256_set1_epi8(8)), wv: _mm256_set1_ps(f16(b)), ca: 0.0, cb: 0.0 }
            });
            legacy_kernel!($features, q4_1, 20, false, |b| {
                let (d, m) = (f16(b), f16(b.add(2)));
                Ch { u: nibbles(b.add(4)), wv: _mm256_set1_ps(d), ca: m, cb: m }
            });
            legacy_kernel!($features, q5_0, 22, true, |b| {
                let u = _mm256_or_si256(nibbles(b.add(6)), high_bits(b.add(2)));
                Ch { u: _mm256_sub_epi8(u, _mm256_set1_epi8(16)), wv: _mm256_set1_ps(f16(b)), ca: 0.0, cb: 0.0 }
            });
            legacy_kernel!($features, q5_1, 24, false, |b| {
                let (d, m) = (f16(b), f16(b.add(2)));
                let u = _mm256_or_si256(nibbles(b.add(8)), high_bits(b.add(4)));
                Ch { u, wv: _mm256_set1_ps(d), ca: m, cb: m }
            });
            legacy_kernel!($features, q8_0, 34, true, |b| {
                Ch { u: _mm256_loadu_si256(b.add(2) as *const __m256i), wv: _mm256_set1_ps(f16(b)), ca: 0.0, cb: 0.0 }
            });

            #[target_feature(enable = $features)]
            unsafe fn q4k<const R: usize>(w: [*const u8; NW], xq: &QuantizedRows, r0: usize) -> Acc<R> {
                let mut acc = Acc::<R>::new();
                let m4 = _mm256_set1_epi8(0xF);
                let mut b = [w[0]; NW];
                // Per weight row: the 8 sub-block scales and mins, times d and -dmin.
                let mut sc = [[0f32; 8]; NW];
                let mut mn = [[0f32; 8]; NW];
                let (mut lo, mut hi) = ([Ch::ZERO; NW], [Ch::ZERO; NW]);
                for s in 0..xq.k / 256 {
                    for i in 0..NW {
                        b[i] = w[i].add(s * 144);
                        let (d, dmin) = (f16(b[i]), f16(b[i].add(2)));
                        let scales = std::slice::from_raw_parts(b[i].add(4), 12);
                        for j in 0..8 {
                            let (s, m) = super::scale_min_k4(j, scales);
                            sc[i][j] = d * s as f32;
                            mn[i][j] = -dmin * m as f32;
                        }
                    }
                    for jj in 0..4 {
                        for i in 0..NW {
                            let q = _mm256_loadu_si256(b[i].add(16 + 32 * jj) as *const __m256i);
                            let (j0, j1) = (2 * jj, 2 * jj + 1);
                            lo[i] = Ch { u: _mm256_and_si256(q, m4), wv: _mm256_set1_ps(sc[i][j0]), ca: mn[i][j0], cb: mn[i][j0] };
                            let h = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                            hi[i] = Ch { u: h, wv: _mm256_set1_ps(sc[i][j1]), ca: mn[i][j1], cb: mn[i][j1] };
                        }
                        acc.add::<false, false>(xq, r0, 8 * s + 2 * jj, &lo);
                        acc.add::<false, false>(xq, r0, 8 * s + 2 * jj + 1, &hi);
                    }
                }
                acc
            }

            #[target_feature(enable = $features)]
            unsafe fn q6k<const R: usize>(w: [*const u8; NW], xq: &QuantizedRows, r0: usize) -> Acc<R> {
                let mut acc = Acc::<R>::new();
                let (m4, m2) = (_mm256_set1_epi8(0xF), _mm256_set1_epi8(3));
                let mut ch = [[Ch::ZERO; NW]; 4];
                for s in 0..xq.k / 256 {
                    for n in 0..2 {
                        for i in 0..NW {
                            let b = w[i].add(s * 210);
                            let d = f16(b.add(208));
                            let ql0 = _mm256_loadu_si256(b.add(64 * n) as *const __m256i);
                            let ql1 = _mm256_loadu_si256(b.add(64 * n + 32) as *const __m256i);
                            let qh = _mm256_loadu_si256(b.add(128 + 32 * n) as *const __m256i);
                            let u = [
                                _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4)),
                                _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4)),
                                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4)),
                                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4)),
                            ];
                            let sc = b.add(192 + 8 * n) as *const i8;
                            for wq in 0..4 {
                                let (sa, sb) = (d * *sc.add(2 * wq) as f32, d * *sc.add(2 * wq + 1) as f32);
                                let wv = _mm256_set_m128(_mm_set1_ps(sb), _mm_set1_ps(sa));
                                ch[wq][i] = Ch { u: u[wq], wv, ca: -32.0 * sa, cb: -32.0 * sb };
                            }
                        }
                        for wq in 0..4 {
                            acc.add::<false, true>(xq, r0, 8 * s + 4 * n + wq, &ch[wq]);
                        }
                    }
                }
                acc
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
simd_kernels!(
    vnni,
    "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni",
    4,
    /// Σ of 4 u8×i8 products per 32-bit lane, exact (no saturation).
    #[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn dot(u: __m256i, x: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, x)
    }
,
    /// Bit j of the 32-bit little-endian word at `p` → 0x10 in byte j: a byte mask.
    #[target_feature(enable = "avx2,avx512f,avx512vl,avx512bw")]
    #[inline]
    unsafe fn high_bits(p: *const u8) -> __m256i {
        let bits = u32::from_le_bytes([*p, *p.add(1), *p.add(2), *p.add(3)]);
        _mm256_maskz_mov_epi8(bits, _mm256_set1_epi8(0x10))
    }
);

#[cfg(target_arch = "x86_64")]
simd_kernels!(
    avx2,
    "avx2,fma,f16c",
    2,
    /// Σ of 4 u8×i8 products per 32-bit lane; the pairwise i16 sums cannot saturate because
    /// u ≤ 63 or (Q8_0) |w| ≤ 128 with |q| ≤ 127: 2·128·127 < 32768.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn dot(u: __m256i, x: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1))
    }
,
    /// Bit j of the 32-bit little-endian word at `p` → 0x10 in byte j (llama.cpp's
    /// `bytes_from_bits_32`: spread the 4 bytes over 8 lanes each, test one bit per lane).
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn high_bits(p: *const u8) -> __m256i {
        let bits = i32::from_le_bytes([*p, *p.add(1), *p.add(2), *p.add(3)]);
        let spread = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
        let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits), spread);
        let set = _mm256_cmpeq_epi8(_mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe)), _mm256_set1_epi64x(-1));
        _mm256_and_si256(set, _mm256_set1_epi8(0x10))
    }
);

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};
    use rand::{Rng, SeedableRng};

    const TYPES: [GgmlDType; 7] =
        [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q5_1, GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q6K];

    fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        // Some rows with a large outlier, as real activations have.
        (0..len).map(|i| rng.random_range(-1.0f32..1.0) * if i % 97 == 5 { 8.0 } else { 1.0 }).collect()
    }

    fn isas() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Vnni].into_iter().filter(|&i| available(i)).collect()
    }

    /// Every kernel against the f32 product of the dequantized weights, within the bound the
    /// 8-bit activations allow, and the SIMD kernels against the scalar one.
    #[test]
    fn kernels_match_dequantized_product_within_activation_rounding() {
        for dtype in TYPES {
            let (bv, _) = block_bytes(dtype).unwrap();
            let ks: Vec<usize> = if bv == 256 { vec![256, 768] } else { vec![576, 256, 96] };
            for k in ks {
                let n = 37;
                let wf = random(n * k, 1 + k as u64);
                let q = QTensor::quantize(&Tensor::from_vec(wf, (n, k), &Device::Cpu).unwrap(), dtype).unwrap();
                let wd = q.dequantize(&Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
                let bytes = q.data().unwrap();
                for m in 1..=9 {
                    let x = random(m * k, 100 + m as u64);
                    let xq = QuantizedRows::new(&x, k);
                    let mut oracle = vec![0f32; n * m];
                    matmul_t(dtype, &bytes, n, &xq, &mut oracle, Isa::Scalar);
                    for i in 0..n {
                        for r in 0..m {
                            let xr = &x[r * k..(r + 1) * k];
                            let exact: f64 = wd[i].iter().zip(xr).map(|(&a, &b)| a as f64 * b as f64).sum();
                            // |x - dx·q| ≤ dx/2 per value, so the product moves by at most
                            // Σ_chunks dx/2·Σ|w|; plus f32 rounding of the sums.
                            let bound: f64 = (0..k / QK)
                                .map(|c| {
                                    let amax = xr[c * QK..(c + 1) * QK].iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
                                    amax / 254.0 * wd[i][c * QK..(c + 1) * QK].iter().map(|w| w.abs() as f64).sum::<f64>()
                                })
                                .sum();
                            let got = oracle[i * m + r] as f64;
                            assert!(
                                (got - exact).abs() <= bound * 1.0001 + 1e-4,
                                "{dtype:?} k={k} m={m} row {i}/{r}: {got} vs {exact} (bound {bound})"
                            );
                        }
                    }
                    for isa in isas() {
                        let mut got = vec![0f32; n * m];
                        matmul_t(dtype, &bytes, n, &xq, &mut got, isa);
                        for (j, (a, b)) in got.iter().zip(&oracle).enumerate() {
                            // Same integers, float sums in another order.
                            let scale = wd[j / m].iter().map(|w| w.abs()).sum::<f32>() * 8.0;
                            assert!((a - b).abs() <= 1e-6 * scale, "{dtype:?} {isa:?} k={k} m={m} [{j}]: {a} vs scalar {b}");
                        }
                    }
                }
            }
        }
    }

    /// The quantizer rounds to nearest, ties to even, like `round_ties_even`.
    #[test]
    fn activation_quantization_rounds_ties_to_even() {
        // amax 127 gives dx = 1, so each value is its own q: 2.5 → 2, 3.5 → 4, -2.5 → -2.
        let mut x = vec![0f32; 32];
        x[..8].copy_from_slice(&[127.0, 2.5, 3.5, -2.5, -3.5, 0.49999997, 1.5000001, -126.6]);
        let xq = QuantizedRows::new(&x, 32);
        let want: Vec<i8> = x.iter().map(|v| v.round_ties_even() as i8).collect();
        assert_eq!(xq.qs, want);
        assert_eq!(&xq.qs[..5], &[127, 2, 4, -2, -4]);
    }

    #[test]
    fn activation_quantization_keeps_zero_rows_and_sums() {
        let mut x = random(64, 7);
        x[32..].fill(0.0);
        let xq = QuantizedRows::new(&x, 64);
        assert_eq!(xq.d[1], 0.0);
        assert!(xq.qs[32..].iter().all(|&q| q == 0));
        let s: i32 = xq.qs[..16].iter().map(|&q| q as i32).sum();
        assert_eq!(xq.ds16[0], xq.d[0] * s as f32);
        assert!(xq.qs.iter().all(|&q| q != -128));
    }
}
