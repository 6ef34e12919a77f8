//! f32 matrix products for every op that multiplies matrices (linear layers forward and
//! backward, the fused attention, LoRA): through MKL or OpenBLAS loaded at run time, or through
//! the `gemm` crate (candle's own GEMM) called directly.
//!
//! Which is fastest depends on the CPU, measured: on the 2-core Xeon of the first benchmarks MKL's
//! and OpenBLAS's sgemm ran at about twice the `gemm` crate's speed per core; on the 2-core AMD
//! EPYC (Zen 4) of later ones MKL takes its AVX2 path (it keeps AVX-512 for Intel) and the `gemm`
//! crate's AVX-512 kernels are the faster (BENCHMARKS.md, `gramrr bench engine --skip
//! score,decode`). Nothing is linked at build time: a library is opened with `dlopen` on first
//! use, so the build, the tests and machines without one are unaffected. `GRAMRR_BLAS` chooses:
//! - unset: on an AMD CPU with AVX-512, the `gemm` crate; elsewhere MKL, then OpenBLAS, then the
//!   `gemm` crate;
//! - `gemm`: the `gemm` crate; `mkl`, `openblas`: that library (searched as above);
//! - a path: the library at that path, which must export `cblas_sgemm`;
//! - `off`: none of this: candle's own matmul ops (the composed path, kept as a reference).
//!
//! [`describe`] names the choice (logged once, and in `gramrr bench engine`).
//!
//! The product always runs single-threaded; the calling rayon pool splits the work. A BLAS with
//! its own thread pool beside rayon's would put four busy threads on two cores, and the trainer's
//! data-parallel workers each need a GEMM that stays on their one core.

use std::cell::Cell;
use std::sync::OnceLock;

use rayon::prelude::*;

type SgemmFn = unsafe extern "C" fn(
    layout: i32,
    trans_a: i32,
    trans_b: i32,
    m: i32,
    n: i32,
    k: i32,
    alpha: f32,
    a: *const f32,
    lda: i32,
    b: *const f32,
    ldb: i32,
    beta: f32,
    c: *mut f32,
    ldc: i32,
);

const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;
const TRANS: i32 = 112;

/// Where the products are computed.
enum Kernel {
    /// `cblas_sgemm` of a library opened at run time.
    Cblas {
        sgemm: SgemmFn,
        // Keeps the library mapped for as long as `sgemm` may be called (the whole process).
        _lib: libloading::Library,
    },
    /// The `gemm` crate, single-threaded.
    GemmCrate,
}

/// The GEMM in use: its kernel and what it is, for logs and benchmark output.
pub struct Blas {
    kernel: Kernel,
    pub name: String,
}

static BLAS: OnceLock<Option<Blas>> = OnceLock::new();

thread_local! {
    static DISABLED_HERE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the BLAS path off on this thread (ops issued from it use candle's GEMM), so a
/// test can compare both paths in one process.
pub fn without_blas<T>(f: impl FnOnce() -> T) -> T {
    let before = DISABLED_HERE.with(|d| d.replace(true));
    let out = f();
    DISABLED_HERE.with(|d| d.set(before));
    out
}

/// The BLAS to use from this thread, if one is loaded and not turned off here.
pub fn get() -> Option<&'static Blas> {
    if DISABLED_HERE.with(|d| d.get()) {
        return None;
    }
    BLAS.get_or_init(load).as_ref()
}

/// Loads the library now. Call it at start (`tune_threads` does), before other threads exist:
/// on first load it may set OpenBLAS's environment variables, which must not race with readers.
pub fn init() {
    BLAS.get_or_init(|| {
        prepare_openblas_env();
        load()
    });
}

/// Which GEMM f32 matmuls use on this thread, e.g. `"mkl (libmkl_rt.so.3)"`, `"gemm crate
/// (AVX-512, AMD CPU)"` or `"candle matmul (GRAMRR_BLAS=off)"`.
pub fn describe() -> String {
    match get() {
        Some(b) => b.name.clone(),
        None => match LOAD_NOTE.get() {
            Some(note) => format!("candle matmul ({note})"),
            None => "candle matmul".into(),
        },
    }
}

/// OpenBLAS 0.3.21 (Debian 12) does not know recent Xeon models and falls back to generic
/// kernels at a sixth of the speed; it also starts a thread per core at load. Both are set
/// through the environment it reads when loaded, and only when the user has not set them.
fn prepare_openblas_env() {
    if std::env::var_os("OPENBLAS_NUM_THREADS").is_none() {
        std::env::set_var("OPENBLAS_NUM_THREADS", "1");
    }
    #[cfg(target_arch = "x86_64")]
    if std::env::var_os("OPENBLAS_CORETYPE").is_none()
        && std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512dq")
    {
        std::env::set_var("OPENBLAS_CORETYPE", "SKYLAKEX");
    }
}

fn candidates() -> Vec<String> {
    let mut v = Vec::new();
    // MKL as `pip install mkl` puts it (a virtualenv, a conda env, `--user`, the system
    // Python), or oneAPI. Other Python prefixes need GRAMRR_BLAS (tools/bench_*.sh set it).
    let mut roots: Vec<std::path::PathBuf> =
        ["MKLROOT", "VIRTUAL_ENV", "CONDA_PREFIX"].iter().filter_map(std::env::var_os).map(Into::into).collect();
    if let Some(home) = std::env::var_os("HOME") {
        roots.push(std::path::Path::new(&home).join(".local"));
    }
    roots.push("/usr/local".into());
    for root in roots {
        for so in ["libmkl_rt.so.3", "libmkl_rt.so.2"] {
            v.push(root.join("lib").join(so).display().to_string());
        }
    }
    // Then whatever the dynamic loader finds on its path.
    for so in ["libmkl_rt.so.3", "libmkl_rt.so.2", "libmkl_rt.so", "libopenblas.so.0", "libopenblas.so"] {
        v.push(so.to_string());
    }
    v
}

/// Why the BLAS path is off, when it was asked for and could not be had.
static LOAD_NOTE: OnceLock<String> = OnceLock::new();

fn load() -> Option<Blas> {
    let choice = std::env::var("GRAMRR_BLAS").unwrap_or_default();
    let search = |names: &[&str]| candidates().into_iter().filter(|c| names.iter().any(|n| c.contains(n))).find_map(|c| open(&c).ok());
    match choice.as_str() {
        "off" | "none" | "0" | "candle" => {
            let _ = LOAD_NOTE.set("GRAMRR_BLAS=off".into());
            None
        }
        "gemm" => Some(gemm_crate("GRAMRR_BLAS=gemm")),
        "" if prefers_gemm_crate() => Some(gemm_crate("AVX-512, AMD CPU")),
        "" => Some(search(&["mkl", "openblas"]).unwrap_or_else(|| gemm_crate("no MKL or OpenBLAS found"))),
        "mkl" | "openblas" => Some(search(&[choice.as_str()]).unwrap_or_else(|| gemm_crate(&format!("GRAMRR_BLAS={choice}: not found")))),
        path => Some(open(path).unwrap_or_else(|e| gemm_crate(&format!("GRAMRR_BLAS={path}: {e}")))),
    }
}

fn gemm_crate(why: &str) -> Blas {
    Blas { kernel: Kernel::GemmCrate, name: format!("gemm crate ({why})") }
}

/// MKL runs its AVX2 kernels on AMD CPUs, and Debian's OpenBLAS 0.3.21 does not know Zen 4/5
/// (its generic fallback, or Haswell where `OPENBLAS_CORETYPE` says so, is AVX2 as well): there
/// the `gemm` crate's AVX-512 kernels are the fastest of the three.
fn prefers_gemm_crate() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let id = std::arch::x86_64::__cpuid(0);
        let vendor: Vec<u8> = [id.ebx, id.edx, id.ecx].iter().flat_map(|r| r.to_le_bytes()).collect();
        vendor == b"AuthenticAMD" && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn open(path: &str) -> Result<Blas, String> {
    // SAFETY: loading a shared library runs its initialisers; MKL and OpenBLAS are ordinary C
    // libraries whose initialisers only set up their own state.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| e.to_string())?;
    // SAFETY: the symbol is the standard CBLAS entry point with the signature of `SgemmFn`
    // (LP64: 32-bit ints, which is what libmkl_rt and Debian's libopenblas export by default).
    let sgemm: SgemmFn = unsafe { *lib.get::<SgemmFn>(b"cblas_sgemm\0").map_err(|e| e.to_string())? };
    let file = std::path::Path::new(path).file_name().map_or(path.to_string(), |f| f.to_string_lossy().into_owned());
    let name;
    // SAFETY (each call below): documented service functions of the respective library, called
    // with plain integer arguments before any computation.
    unsafe {
        if let Ok(set_layer) = lib.get::<unsafe extern "C" fn(i32) -> i32>(b"MKL_Set_Threading_Layer\0") {
            // Sequential MKL: the caller's rayon pool does the threading.
            set_layer(1);
            // Results independent of buffer alignment, so that a resumed training run
            // reproduces an uninterrupted one bit for bit (AUTO | STRICT).
            if let Ok(cbwr) = lib.get::<unsafe extern "C" fn(i32) -> i32>(b"MKL_CBWR_Set\0") {
                if cbwr(0x10002) != 0 {
                    cbwr(2);
                }
            }
            name = format!("mkl ({file})");
        } else if let Ok(set_threads) = lib.get::<unsafe extern "C" fn(i32)>(b"openblas_set_num_threads\0") {
            set_threads(1);
            let core = lib
                .get::<unsafe extern "C" fn() -> *const std::ffi::c_char>(b"openblas_get_corename\0")
                .ok()
                .map(|f| std::ffi::CStr::from_ptr(f()).to_string_lossy().into_owned())
                .unwrap_or_default();
            name = format!("openblas ({file}, {core})");
        } else {
            name = format!("blas ({file})");
        }
    }
    Ok(Blas { kernel: Kernel::Cblas { sgemm, _lib: lib }, name })
}

/// How one operand's last two dimensions sit in memory, in BLAS terms.
#[derive(Clone, Copy, Debug)]
struct MatView {
    trans: bool,
    ld: usize,
}

/// `rows × cols` with the given element strides: row-major (`ld` = row stride) or transposed
/// (column-major, `ld` = column stride); `None` when neither dimension is unit-stride.
fn mat_view(rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> Option<MatView> {
    if col_stride == 1 || cols == 1 {
        let ld = if rows == 1 { cols.max(1) } else { row_stride };
        return (ld >= cols.max(1)).then_some(MatView { trans: false, ld });
    }
    if row_stride == 1 || rows == 1 {
        let ld = if cols == 1 { rows.max(1) } else { col_stride };
        return (ld >= rows.max(1)).then_some(MatView { trans: true, ld });
    }
    None
}

/// Element offsets of every matrix in a batch: `dims`/`strides` of the leading (batch) dims.
fn batch_offsets(start: usize, dims: &[usize], strides: &[usize]) -> Vec<usize> {
    let mut offs = vec![start];
    for (&d, &s) in dims.iter().zip(strides) {
        offs = offs.iter().flat_map(|&o| (0..d).map(move |i| o + i * s)).collect();
    }
    offs
}

/// One operand: its buffer, element offset of each batch matrix, and layout.
pub struct Operand<'a> {
    pub data: &'a [f32],
    pub offsets: Vec<usize>,
    view: MatView,
}

impl<'a> Operand<'a> {
    /// From a candle layout of a rank ≥ 2 tensor: `None` when its last two dimensions have no
    /// unit stride (the caller then copies it to contiguous).
    pub fn new(data: &'a [f32], layout: &candle_core::Layout) -> Option<Self> {
        let dims = layout.dims();
        let st = layout.stride();
        let r = dims.len();
        if r < 2 {
            return None;
        }
        let view = mat_view(dims[r - 2], dims[r - 1], st[r - 2], st[r - 1])?;
        let offsets = batch_offsets(layout.start_offset(), &dims[..r - 2], &st[..r - 2]);
        Some(Self { data, offsets, view })
    }
}

#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: shared only between tasks that write disjoint parts of the buffer (each use says
// which part).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// Below this many multiply-adds a product runs on the calling thread: splitting costs more.
const PAR_MIN_MACS: usize = 1 << 21;

impl Blas {
    /// One row-major product `C = alpha · op(A) · op(B) + beta · C` on raw pointers, on the
    /// calling thread.
    ///
    /// # Safety
    /// The pointers with their leading dimensions must describe matrices inside live buffers
    /// (A: m × k, or k × m when `ta`; B: k × n, or n × k when `tb`; C: m × n), and no other
    /// thread may write the elements of C meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn sgemm(
        &self,
        ta: bool,
        tb: bool,
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        (a, lda): (*const f32, usize),
        (b, ldb): (*const f32, usize),
        beta: f32,
        (c, ldc): (*mut f32, usize),
    ) {
        match &self.kernel {
            Kernel::Cblas { sgemm, .. } => {
                let t = |x: bool| if x { TRANS } else { NO_TRANS };
                sgemm(ROW_MAJOR, t(ta), t(tb), m as i32, n as i32, k as i32, alpha, a, lda as i32, b, ldb as i32, beta, c, ldc as i32);
            }
            Kernel::GemmCrate => {
                // Element (i, j) of a row-major matrix with leading dimension ld sits at
                // i·ld + j; a transposed operand swaps the two strides.
                let strides = |trans: bool, ld: usize| if trans { (ld as isize, 1) } else { (1, ld as isize) }; // (col, row)
                let (a_cs, a_rs) = strides(ta, lda);
                let (b_cs, b_rs) = strides(tb, ldb);
                // gemm computes dst = alpha·dst + beta·lhs·rhs, reading dst only when asked.
                gemm::gemm(
                    m, n, k, c, 1, ldc as isize, beta != 0.0, a, a_cs, a_rs, b, b_cs, b_rs, beta, alpha, false, false, false,
                    gemm::Parallelism::None,
                );
            }
        }
    }

    /// C[i] (m × n, row-major, contiguous) = A[i] (m × k) · B[i] (k × n) for every batch
    /// matrix i, split over the current rayon pool.
    pub fn sgemm_batched(&self, a: &Operand, b: &Operand, m: usize, n: usize, k: usize) -> Vec<f32> {
        let batch = a.offsets.len();
        assert_eq!(batch, b.offsets.len(), "batch sizes differ");
        if m == 0 || n == 0 || k == 0 {
            return vec![0f32; batch * m * n];
        }
        // With beta = 0 the BLAS writes every element of C without reading it: no need to
        // zero 100+ MB of logits first.
        let mut c: Vec<f32> = Vec::with_capacity(batch * m * n);
        let threads = rayon::current_num_threads();
        let macs = batch * m * n * k;
        let cp = SendPtr(c.as_mut_ptr());
        // One task: batch matrix `i`, output columns [j0, j1).
        let task = |i: usize, j0: usize, j1: usize| {
            let cp = cp;
            // SAFETY: offsets and leading dimensions come from candle layouts of these buffers,
            // so every element BLAS reads lies inside them; the task writes rows 0..m, columns
            // j0..j1 of matrix i of `c`, which no other task touches.
            unsafe {
                let ap = a.data.as_ptr().add(a.offsets[i]);
                let bcol = if b.view.trans { j0 * b.view.ld } else { j0 };
                let bp = b.data.as_ptr().add(b.offsets[i] + bcol);
                let cptr = cp.0.add(i * m * n + j0);
                self.sgemm(a.view.trans, b.view.trans, (m, j1 - j0, k), 1.0, (ap, a.view.ld), (bp, b.view.ld), 0.0, (cptr, n));
            }
        };
        if threads <= 1 || macs < PAR_MIN_MACS {
            (0..batch).for_each(|i| task(i, 0, n));
        } else if batch >= threads {
            (0..batch).into_par_iter().for_each(|i| task(i, 0, n));
        } else {
            // Few large matrices: split each one's columns, in multiples of 64 so every block
            // keeps full-width kernels.
            let per = n.div_ceil(threads).div_ceil(64) * 64;
            let blocks: Vec<(usize, usize, usize)> =
                (0..batch).flat_map(|i| (0..n).step_by(per).map(move |j| (i, j, (j + per).min(n)))).collect();
            blocks.into_par_iter().for_each(|(i, j0, j1)| task(i, j0, j1));
        }
        // SAFETY: the tasks above wrote all batch·m·n elements (every matrix, every column).
        unsafe { c.set_len(batch * m * n) };
        c
    }
}

/// `a · b` of two f32 CPU storages with candle layouts (…, m, k) and (…, k, n), equal batch
/// dims, through the BLAS when one is in use; `None` otherwise, or when an operand's last two
/// dims have no unit stride (the caller then uses candle's matmul). Returns C and its dims.
pub fn matmul_f32(a: &[f32], al: &candle_core::Layout, b: &[f32], bl: &candle_core::Layout) -> Option<(Vec<f32>, Vec<usize>)> {
    let blas = get()?;
    let (ad, bd) = (al.dims(), bl.dims());
    let r = ad.len();
    if r < 2 || bd.len() != r || ad[..r - 2] != bd[..r - 2] || ad[r - 1] != bd[r - 2] {
        return None;
    }
    let (m, k, n) = (ad[r - 2], ad[r - 1], bd[r - 1]);
    if [m, n, k].iter().any(|&d| d > i32::MAX as usize) {
        return None;
    }
    let (oa, ob) = (Operand::new(a, al)?, Operand::new(b, bl)?);
    let c = blas.sgemm_batched(&oa, &ob, m, n, k);
    let mut dims = ad[..r - 2].to_vec();
    dims.extend([m, n]);
    Some((c, dims))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel this machine has (the `gemm` crate always; MKL and OpenBLAS when the loader
    /// finds them) computes op(A)·op(B) with every transpose, leading dimension and beta.
    #[test]
    fn every_available_kernel_matches_a_naive_product() {
        let mut kernels = vec![gemm_crate("test")];
        kernels.extend(candidates().iter().filter_map(|c| open(c).ok()));
        eprintln!("kernels: {:?}", kernels.iter().map(|k| k.name.as_str()).collect::<Vec<_>>());
        let (m, n, k) = (37usize, 29usize, 70usize);
        let val = |i: usize| ((i * 7919) % 23) as f32 / 7.0 - 1.5;
        for kern in &kernels {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                // Stored with padding beyond each row (ld > logical width).
                let (ar, ac) = if ta { (k, m) } else { (m, k) };
                let (br, bc) = if tb { (n, k) } else { (k, n) };
                let (lda, ldb, ldc) = (ac + 3, bc + 5, n + 2);
                let a: Vec<f32> = (0..ar * lda).map(val).collect();
                let b: Vec<f32> = (0..br * ldb).map(|i| val(i + 11)).collect();
                let at = |i: usize, p: usize| if ta { a[p * lda + i] } else { a[i * lda + p] };
                let bt = |p: usize, j: usize| if tb { b[j * ldb + p] } else { b[p * ldb + j] };
                for beta in [0.0f32, 0.5] {
                    let c0: Vec<f32> = (0..m * ldc).map(|i| val(i + 5)).collect();
                    let mut c = c0.clone();
                    // SAFETY: the buffers hold the matrices with the leading dimensions given.
                    unsafe { kern.sgemm(ta, tb, (m, n, k), 2.0, (a.as_ptr(), lda), (b.as_ptr(), ldb), beta, (c.as_mut_ptr(), ldc)) };
                    for i in 0..m {
                        for j in 0..n {
                            let want = 2.0 * (0..k).map(|p| at(i, p) * bt(p, j)).sum::<f32>() + beta * c0[i * ldc + j];
                            let got = c[i * ldc + j];
                            assert!((got - want).abs() < 1e-3, "{} ta={ta} tb={tb} beta={beta} ({i},{j}): {got} vs {want}", kern.name);
                        }
                        // Padding beyond column n is never written.
                        assert_eq!(&c[i * ldc + n..(i + 1) * ldc], &c0[i * ldc + n..(i + 1) * ldc], "{}", kern.name);
                    }
                }
            }
        }
    }

    #[test]
    fn layouts_map_to_blas_views() {
        assert!(matches!(mat_view(4, 3, 3, 1), Some(MatView { trans: false, ld: 3 })));
        assert!(matches!(mat_view(4, 3, 1, 4), Some(MatView { trans: true, ld: 4 })));
        // A narrowed row-major view keeps its parent's row stride.
        assert!(matches!(mat_view(4, 3, 8, 1), Some(MatView { trans: false, ld: 8 })));
        assert!(mat_view(4, 3, 6, 2).is_none());
        assert_eq!(batch_offsets(5, &[2, 3], &[100, 10]), vec![5, 15, 25, 105, 115, 125]);
    }
}
