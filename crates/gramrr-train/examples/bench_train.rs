//! Training throughput and peak memory of gramrr on one configuration, as JSON on stdout.
//!
//!     gramrr init-model --out /tmp/qwen3-0.6b --preset qwen3-0-6b
//!     cargo run --release -p gramrr-train --example bench_train -- --model /tmp/qwen3-0.6b --lora-rank 16
//!     cargo run --release -p gramrr-train --example bench_train -- --model /tmp/qwen3-0.6b
//!
//! Flags: --model DIR (required), --lora-rank R (omit for full fine-tuning), --seq-len 512,
//! --batch-size 2, --steps 3, --warmup 1, --workers 1 (data-parallel CPU workers). Run one configuration per process: peak memory is
//! the process's.

fn main() {
    gramrr_model::tune_threads();
    gramrr_model::tune_allocator();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let num = |flag: &str, default: usize| get(flag).map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{flag}: not a number")));
    let Some(model) = get("--model") else {
        eprintln!("usage: bench_train --model DIR [--lora-rank R] [--seq-len 512] [--batch-size 2] [--steps 3] [--warmup 1]");
        std::process::exit(2);
    };
    let opts = gramrr_train::bench::BenchTrainOptions {
        lora_rank: get("--lora-rank").map(|v| v.parse().expect("--lora-rank: not a number")),
        seq_len: num("--seq-len", 512),
        batch_size: num("--batch-size", 2),
        steps: num("--steps", 3),
        warmup: num("--warmup", 1),
        workers: num("--workers", 1),
    };
    match gramrr_train::bench::bench_train(std::path::Path::new(&model), &opts) {
        Ok(r) => println!("{}", serde_json::to_string(&r).expect("result serializes")),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
