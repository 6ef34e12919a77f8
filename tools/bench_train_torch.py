#!/usr/bin/env python3
"""Training throughput and peak memory of PyTorch (+ PEFT) on the configuration that
`cargo run --release -p gramrr-train --example bench_train` measures, as JSON on stdout.

    python3 tools/bench_train_torch.py --model /tmp/qwen3-0.6b --lora-rank 16
    python3 tools/bench_train_torch.py --model /tmp/qwen3-0.6b

Same work as the Rust side: f32, random token sequences of --seq-len tokens (the first half is
prompt, masked with -100; the loss is on the second half), batch --batch-size, AdamW lr 1e-5
(f32 moments), gradient clipping at 1.0, LoRA on q,k,v,o,gate,up,down with alpha = 2·rank.
Threads: torch.set_num_threads(--threads, default: all cores, as rayon uses). One
configuration per process, so ru_maxrss is that configuration's peak.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import torch
from transformers import AutoModelForCausalLM


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--lora-rank", type=int, default=None)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--attn", default="sdpa", help="attn_implementation: sdpa (default) or eager")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation=a.attn)
    load_seconds = time.perf_counter() - t0
    model.train()
    mode = "full"
    if a.lora_rank:
        from peft import LoraConfig, get_peft_model

        mode = "lora"
        cfg = LoraConfig(r=a.lora_rank, lora_alpha=2 * a.lora_rank, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
        model = get_peft_model(model, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.0}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-5)
    vocab = model.config.vocab_size
    half = a.seq_len // 2
    times, cpu = [], []
    for step in range(a.warmup + a.steps):
        ids = torch.randint(0, vocab, (a.batch_size, a.seq_len))
        labels = ids.clone()
        labels[:, :half] = -100
        t, c = time.perf_counter(), time.process_time()
        out = model(input_ids=ids, labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t
        times.append(dt)
        cpu.append(time.process_time() - c)
        print(f"step {step + 1}: {dt:.2f} s, loss {out.loss.item():.4f}", file=os.sys.stderr, flush=True)
    timed = times[a.warmup:]
    tokens = len(timed) * a.batch_size * a.seq_len
    print(json.dumps(dict(
        framework=f"torch {torch.__version__.split('+')[0]}" + (" + peft" if a.lora_rank else ""),
        mode=mode,
        options=dict(lora_rank=a.lora_rank, seq_len=a.seq_len, batch_size=a.batch_size, steps=a.steps, warmup=a.warmup),
        threads=torch.get_num_threads(),
        attn_implementation=a.attn,
        trainable_params=sum(p.numel() for p in params),
        tokens_per_sec=tokens / sum(timed),
        tokens_per_sec_cpu=tokens / (sum(cpu[a.warmup:]) / torch.get_num_threads()),
        step_seconds=times,
        step_cpu_seconds=cpu,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        load_seconds=load_seconds,
    )))


if __name__ == "__main__":
    main()
