#!/usr/bin/env python3
"""Merge gramrr and PyTorch benchmark JSON into a section of BENCHMARKS.md, as ratios.

    python3 tools/bench_report.py engine gramrr.json torch.json BENCHMARKS.md
"""
import json, os, platform, re, subprocess, sys, datetime


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def replace_section(path, title, body):
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n\nEvery figure here is written by a script in `tools/`; rerun it to check.\n"
    block = f"## {title}\n{body.rstrip()}\n"
    pat = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pat.search(text):
        text = pat.sub(block + "\n", text)
    else:
        text = text.rstrip() + "\n\n" + block
    open(path, "w").write(text.rstrip() + "\n")


def engine(g, t, out):
    gw = g["weight_bytes_f32"]
    rows = []
    def row(what, gv, tv, unit, higher_better=True, target=None):
        ratio = gv / tv if higher_better else tv / gv
        rows.append(f"| {what} | {gv:,.1f} {unit} | {tv:,.1f} {unit} | **{ratio:.2f}×** | {target or ''} |")
    row("scoring, batch 4 × 512 tokens", g["score"]["tokens_per_second"], t["score"]["tokens_per_second"], "tok/s", target="≥ 1.0×")
    for k in sorted(g.get("decode", {})):
        gd, td = g["decode"][k], t["decode"][k]
        row(f"greedy decoding, prompt 128 + 128 new, batch {gd['batch']}", gd["tokens_per_second"], td["tokens_per_second"], "tok/s", target="≥ 1.0×")
    g_rss = g["peak_rss_kib"] * 1024 / gw
    t_rss = t["peak_rss_kib"] * 1024 / gw
    body = f"""
Written by `bash tools/bench_engine.sh` on {datetime.date.today()}: random checkpoint with
Qwen3-0.6B's shape (hidden 1024, 28 layers, 16 heads, 8 KV heads, head_dim 128, intermediate
3072, vocab 151936, {g['parameters']:,} parameters, f32), {g['threads']} threads, {cpu_name()}.
gramrr release build vs transformers {t.get('transformers')} + torch {t.get('torch')} (sdpa attention), same weights.
Ratios are gramrr / PyTorch (higher is better for gramrr).

| measure | gramrr | PyTorch | ratio | target |
|---|---|---|---|---|
{chr(10).join(rows)}
| peak RSS while scoring / f32 weight size ({gw/2**30:.2f} GiB) | {g_rss:.2f}× | {t_rss:.2f}× | | ≤ 1.3× |
| f32 GEMM 2048×1024×3072 | {g['gemm']['gflops_per_second']:.0f} GFLOP/s | {t['gemm']['gflops_per_second']:.0f} GFLOP/s | {g['gemm']['gflops_per_second']/t['gemm']['gflops_per_second']:.2f}× | |
| scoring prefill FLOP/s, fraction of gramrr's GEMM peak | {g['score']['gflops_per_second']:.0f} GFLOP/s ({100*g['score']['fraction_of_gemm_peak']:.0f}%) | | | |
"""
    replace_section(out, "Engine", body)


if __name__ == "__main__":
    kind, gpath, tpath, out = sys.argv[1:5]
    g, t = json.load(open(gpath)), json.load(open(tpath))
    {"engine": engine}[kind](g, t, out)
    print(f"updated {out}")
