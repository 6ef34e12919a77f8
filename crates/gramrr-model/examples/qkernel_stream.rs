//! Quantized matvec throughput when the weights stream from memory, as in decoding: each
//! matrix is used once per pass over ~200 MB of copies (`COPIES=1` keeps one in cache).
//! gramrr's kernels against candle's, both on a rayon worker as the engine calls them.
//! `cargo run --release -p gramrr-model --example qkernel_stream [ROWS_OF_INPUT]`.
//! Threads: RAYON_NUM_THREADS.
use std::time::Instant;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use gramrr_model::qkernels::{self, QuantizedRows};

/// GB/s of weights over the best of a few passes through `copies`, on a rayon worker.
fn stream(bytes_per_copy: usize, copies: usize, mut f: impl FnMut(usize) + Send) -> f64 {
    let passes = (600 / copies).clamp(3, 50);
    let mut t = f64::MAX;
    rayon::scope(|_| {
        for _ in 0..passes {
            let s = Instant::now();
            for c in 0..copies {
                f(c);
            }
            t = t.min(s.elapsed().as_secs_f64());
        }
    });
    (bytes_per_copy * copies) as f64 / 1e9 / t
}

fn main() -> anyhow::Result<()> {
    let m: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(1);
    let isa = qkernels::detected_isa();
    println!("isa {isa:?}, {} threads, {m} input rows; GB/s of weights", rayon::current_num_threads());
    for (n, k) in [(1536usize, 576usize), (576, 1536)] {
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu)?;
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q4K, GgmlDType::Q6K] {
            if k % dtype.block_size() != 0 {
                continue;
            }
            let q = QTensor::quantize(&w, dtype)?;
            let bytes = q.data()?.into_owned();
            let mut line = format!("{n:>5}x{k:<5} {dtype:?}:");
            for copies in [1, (200usize << 20).div_ceil(bytes.len())] {
                let all: Vec<Vec<u8>> = (0..copies).map(|_| bytes.clone()).collect();
                let mut out = vec![0f32; n * m];
                let ours = stream(bytes.len(), copies, |c| {
                    let xq = QuantizedRows::new(&xs, k);
                    qkernels::matmul_t(dtype, &all[c], n, &xq, &mut out, isa);
                });
                drop(all);
                let qms: Vec<QMatMul> = (0..copies).map(|_| QMatMul::from_qtensor(QTensor::quantize(&w, dtype).unwrap()).unwrap()).collect();
                let theirs = stream(bytes.len(), copies, |c| {
                    qms[c].forward(&x).unwrap();
                });
                let place = if copies == 1 { "cached" } else { "streamed" };
                line += &format!("  {place}: gramrr {ours:5.1} candle {theirs:5.1}");
            }
            println!("{line}");
        }
    }
    Ok(())
}
