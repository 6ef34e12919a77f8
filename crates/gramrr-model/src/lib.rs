//! gramrr-model: loads Hugging Face decoder checkpoints (Llama 3.x, Qwen2, Qwen3) from an HF
//! directory or the offline HF cache and runs them on candle: teacher-forced scoring, batched
//! generation with a KV cache, and label-token probabilities. The rest of gramrr reaches it
//! only through the [`backend::Backend`] trait.

pub mod attention;
pub mod bf16;
/// The backend trait and its types live in `gramrr-backend` (no engine there); re-exported so
/// `gramrr_model::backend::*` keeps working.
pub use gramrr_backend as backend;
pub mod blas;
pub mod config;
pub mod engine;
pub mod error;
pub mod few_rows;
pub mod fsutil;
pub mod gguf;
pub mod hub;
pub mod init;
pub mod model;
pub mod ops;
pub mod qkernels;
pub mod qlinear;
pub mod sampling;
pub mod tokenizer;
pub mod weights;

pub use backend::{Backend, ChatMessage, Prompt};

/// Keeps freed tensor buffers in the process instead of returning them to the kernel.
///
/// candle allocates a fresh buffer for every op result; with glibc's defaults every buffer
/// over 128 KiB is a new `mmap`, and the kernel zeroes each page on first touch. Profiles of
/// training showed a fifth of the time in page clearing. Raising the mmap and trim thresholds
/// lets freed buffers be reused. glibc caps the mmap threshold at 32 MiB, and larger buffers
/// (logits, the embedding's gradient) were still fresh mappings each time: on the 2-core VM, a
/// quarter of a 0.6B full fine-tuning step was the kernel clearing their pages. With mmap off
/// they come from the heap and are reused as well (same peak RSS, 30% less CPU per step).
/// Idempotent; call it once at start.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; it is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// Turns off candle's spinning elementwise thread pool unless `CANDLE_NUM_THREADS` is set.
///
/// candle 0.11 runs elementwise kernels on its own barrier pool, whose threads spin while
/// waiting. Beside the GEMM's rayon threads, and above all beside the trainer's data-parallel
/// workers, they take cores from the real work: a demo-sized training step ran 1.9× faster
/// with two workers and the pool off than with it on. The GEMM keeps all rayon threads.
/// Call it first thing in `main`, before any thread or candle op exists.
pub fn tune_threads() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // At process start no other thread can be reading the environment.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    // Also before any thread: loading the BLAS may set its environment variables.
    blas::init();
}

/// One single-threaded rayon pool per data-parallel worker, so that each worker's kernels stay
/// on its own core; none when `n` ≤ 1 (the kernels then thread on the caller's pools). Shared by
/// the engine's batch workers and the trainer's gradient workers.
pub fn worker_pools(n: usize) -> std::result::Result<Vec<rayon::ThreadPool>, rayon::ThreadPoolBuildError> {
    if n <= 1 {
        return Ok(Vec::new());
    }
    (0..n).map(|_| rayon::ThreadPoolBuilder::new().num_threads(1).build()).collect()
}

pub use config::{Architecture, DecoderConfig};
pub use engine::{DeviceChoice, Engine, LoadOptions};
pub use error::{ModelError, Result};
pub use model::Decoder;
pub use weights::WeightDType;
