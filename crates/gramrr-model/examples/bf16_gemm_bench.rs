//! Times the bf16 kernels (AVX512-BF16 and AVX2 where the CPU has them) against the f32
//! product on model-shaped matmuls, for tuning; `gramrr bench engine --dtype bf16` and
//! tools/bench_bf16.sh give the figures in BENCHMARKS.md.
//!     cargo run --release -p gramrr-model --example bf16_gemm_bench
use std::time::Instant;

use gramrr_model::bf16::{self, Isa};

fn best(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps).map(|_| { let t = Instant::now(); f(); t.elapsed().as_secs_f64() }).fold(f64::INFINITY, f64::min)
}

fn main() {
    for &(m, n, k) in &[(1usize, 48usize, 576usize), (1, 384, 576), (1, 1536, 576), (8, 1536, 576), (512, 1536, 576), (512, 576, 1536), (2048, 3072, 1024)] {
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let w: Vec<u16> = (0..n * k).map(|i| bf16::to_bf16(((i * 104729) % 1000) as f32 / 1000.0 - 0.5)).collect();
        let flops = 2.0 * (m * n * k) as f64;
        let reps = if m * n * k > 100_000_000 { 3 } else { 50 };
        let mut line = format!("m={m} n={n} k={k}:");
        for isa in [Isa::Avx512Bf16, Isa::Avx2].into_iter().filter(|&i| bf16::available(i)) {
            let s = best(reps, || { std::hint::black_box(bf16::matmul(&x, m, &w, n, k, isa)); });
            line += &format!(" {isa:?} {:.1} GFLOP/s ({:.0} us)", flops / s / 1e9, s * 1e6);
        }
        let xt = candle_core::Tensor::from_vec(x.clone(), (m, k), &candle_core::Device::Cpu).unwrap();
        let wt = candle_core::Tensor::from_vec(w.iter().map(|&h| bf16::to_f32(h)).collect::<Vec<_>>(), (n, k), &candle_core::Device::Cpu).unwrap();
        let s = best(reps, || { std::hint::black_box(gramrr_model::ops::linear(&xt, &wt).unwrap()); });
        line += &format!(" f32 {:.1} GFLOP/s", flops / s / 1e9);
        println!("{line}");
    }
}
