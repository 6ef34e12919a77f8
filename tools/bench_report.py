#!/usr/bin/env python3
"""Merge gramrr and PyTorch benchmark JSON into a section of BENCHMARKS.md, as ratios.

    python3 tools/bench_report.py engine gramrr.json torch.json BENCHMARKS.md
    python3 tools/bench_report.py demo-rows "seed 0=out/demo-seed0:time.log" ...   (prints rows)
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
    gg, tg = g["gemm"]["gflops_per_second"], t["gemm"]["gflops_per_second"]
    # The machine's matmul peak: the faster of the measured prefill-shaped GEMMs.
    peak = max(gg, tg, g["gemm"].get("candle_gflops_per_second", 0))
    sg = g["score"]["gflops_per_second"]
    candle_row = ""
    if "candle_gflops_per_second" in g["gemm"]:
        candle_row = f"| f32 GEMM 2048×1024×3072, candle's own gemm (the fallback) | {g['gemm']['candle_gflops_per_second']:.0f} GFLOP/s | | | |\n"
    body = f"""
Written by `bash tools/bench_engine.sh` on {datetime.date.today()}: random checkpoint with
Qwen3-0.6B's shape (hidden 1024, 28 layers, 16 heads, 8 KV heads, head_dim 128, intermediate
3072, vocab 151936, {g['parameters']:,} parameters, f32), {g['threads']} threads, {cpu_name()}.
gramrr release build (f32 matmuls: {g.get('matmul', 'candle gemm')}) vs transformers {t.get('transformers')} + torch {t.get('torch')}
(sdpa attention), same weights.
Ratios are gramrr / PyTorch (higher is better for gramrr).

| measure | gramrr | PyTorch | ratio | target |
|---|---|---|---|---|
{chr(10).join(rows)}
| peak RSS while scoring / f32 weight size ({gw/2**30:.2f} GiB) | {g_rss:.2f}× | {t_rss:.2f}× | | ≤ 1.3× |
| f32 GEMM 2048×1024×3072 | {gg:.0f} GFLOP/s | {tg:.0f} GFLOP/s | {gg/tg:.2f}× | |
{candle_row}| scoring prefill FLOP/s, fraction of the machine's measured matmul peak ({peak:.0f} GFLOP/s) | {sg:.0f} GFLOP/s ({100*sg/peak:.0f}%) | {t['score']['tokens_per_second'] * sg / g['score']['tokens_per_second']:.0f} GFLOP/s ({100*t['score']['tokens_per_second'] * sg / g['score']['tokens_per_second']/peak:.0f}%) | | |
"""
    replace_section(out, "Engine", body)


def train(g_paths, t_paths, out):
    """g_paths / t_paths: comma-separated JSON files, one per configuration, in the same order."""
    rows = []
    for gp, tp in zip(g_paths.split(","), t_paths.split(",")):
        g, t = json.load(open(gp)), json.load(open(tp))
        o = g["options"]
        what = "LoRA r=%d, all linear layers" % o["lora_rank"] if g["mode"] == "lora" else "full fine-tuning"
        if o["seq_len"] != 512:
            what = f"demo-sized model (hidden 128, 4 layers, 8 heads of 16), seq {o['seq_len']}, batch {o['batch_size']}, {what}, {o.get('workers', 1)} data-parallel workers"
        rows.append(
            f"| {what} | {g['tokens_per_sec']:,.0f} tok/s | {t['tokens_per_sec']:,.0f} tok/s | **{g['tokens_per_sec']/t['tokens_per_sec']:.2f}×** | ≥ 1.0× |"
        )
        rows.append(
            f"| {what}: peak RSS | {g['peak_rss_mib']:,.0f} MiB | {t['peak_rss_mib']:,.0f} MiB | **{t['peak_rss_mib']/g['peak_rss_mib']:.2f}×** | ≤ PyTorch's |"
        )
    o = json.load(open(g_paths.split(",")[0]))["options"]
    body = f"""
Written by `bash tools/bench_train.sh` on {datetime.date.today()}: the random Qwen3-0.6B-shaped
checkpoint, f32, sequence {o['seq_len']}, batch {o['batch_size']}, {o['steps']} timed step(s) after {o['warmup']} untimed
warm-up step(s), random tokens (loss on the second half), AdamW, clipping at 1.0, {g['threads']} threads,
{cpu_name()}. gramrr (f32 matmuls: {json.load(open(g_paths.split(",")[0])).get('matmul') or 'candle gemm'}) vs {t['framework'].split(' +')[0]} (+ PEFT for LoRA; {t.get('attn_implementation', 'sdpa')} attention), one
configuration per process. Ratios: tokens/s gramrr / PyTorch, memory PyTorch / gramrr (higher
is better for gramrr in both).

| configuration | gramrr | PyTorch | ratio | target |
|---|---|---|---|---|
{chr(10).join(rows)}
"""
    replace_section(out, "Training", body)


def serve(g_path, _unused, out):
    runs = [json.loads(l) for l in open(g_path) if l.strip()]
    rows = []
    for r in runs:
        lat = r["latency_ms"]
        st = ", ".join(f"{k}: {v}" for k, v in r["statuses"].items())
        rows.append(
            f"| `{r['path']}` | {r['requests']} | {r['clients']} | {r['requests_per_s']:.1f} | {lat['p50']:.0f} | {lat['p90']:.0f} | {lat['p99']:.0f} | {st} |"
        )
    meta = runs[0].get("meta", {})
    body = f"""
Written by `bash tools/bench_serve.sh` on {datetime.date.today()}: `gramrr serve` with {meta.get('model', 'the demo RM')}
(`--template compact`, reason mode, one order, greedy), {meta.get('server_flags', '')}, loaded by
`crates/gramrr-serve/examples/load_test.rs` from the same machine ({cpu_name()}, {os.cpu_count()} cores shared by
server and client). Each request is one item; the server batches across requests.

| endpoint | requests | concurrent clients | requests/s | p50 ms | p90 ms | p99 ms | statuses |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}
"""
    replace_section(out, "Reward server", body)


def demo(dirs, _unused, out):
    """dirs: comma-separated demo output directories (one per seed)."""
    reps = [json.load(open(os.path.join(d, "report.json"))) for d in dirs.split(",")]
    def stat(xs):
        m = sum(xs) / len(xs)
        sd = (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0
        return f"{m:.1f} ± {sd:.1f}", xs
    def line(name, xs, fmt="{:.1f}"):
        s, xs = stat(xs)
        return f"| {name} | {' | '.join(fmt.format(x) for x in xs)} | {s} |"
    acc = lambda k: [r["accuracy"][k] for r in reps]
    m = len(reps[0]["accuracy"]["gram_rr_self_training"])
    rows = [
        line("backbone works the test sums out right", [r.get("backbone_arithmetic", float("nan")) for r in reps]),
        line("vanilla RM (seed rationales only)", acc("vanilla_rm")),
        line("GRAM-R² initial (seed + synthesized proofs)", acc("gram_rr_initial")),
    ]
    for i in range(m):
        rows.append(line(f"GRAM-R² after self-training iteration {i + 1}", [r["accuracy"]["gram_rr_self_training"][i] for r in reps]))
    rows += [
        line("GRAM-R² final (after the human-rationale fine-tune)", acc("gram_rr_final")),
        line("compute-matched control", acc("control_extra_steps")),
    ]
    for i in range(m):
        rows.append(line(f"pseudo-labels, iteration {i + 1}: accuracy of all majority labels", [r["pseudo_labels"][i]["accuracy_all"] for r in reps]))
        rows.append(line(f"pseudo-labels, iteration {i + 1}: accuracy of the kept ones", [r["pseudo_labels"][i]["accuracy_kept"] for r in reps]))
        rows.append(line(f"pseudo-labels, iteration {i + 1}: pairs kept", [r["pseudo_labels"][i]["kept"] for r in reps], "{:.0f}"))
    # Step by step: is the reward model's computation right, and do its verdicts match it?
    for model in ["GRAM-R² initial", f"self-training {m}", "control (extra steps)"]:
        q = [next((x for x in r.get("rationale_quality", []) if x["model"] == model), None) for r in reps]
        if all(q):
            rows.append(line(f"{model}: test rationales with the computation right", [x["computation_correct"] for x in q]))
            rows.append(line(f"{model}: test rationales whose verdicts match their own result", [x["verdicts_consistent"] for x in q]))
    rows += [
        line("proof selection: Eq. 5 pick has the right computation (%)", [r["proof_selection"]["eq5"] for r in reps]),
        line("proof selection: random pick has the right computation (%)", [r["proof_selection"]["random"] for r in reps]),
        # Summed stage times, so that a resumed run reports its stages' work, not the resume.
        line("recorded stage work (s)", [r.get("stage_seconds", r["seconds"]) for r in reps], "{:.0f}"),
    ]
    targets = {}
    for r in reps:
        for t in r["targets"]:
            targets.setdefault(t["name"], []).append(("met" if t["met"] else "**not met**") + f" ({t['detail']})")
    # The last act (OUT/rl/report.json), where every seed has one.
    rl_paths = [os.path.join(d, "rl", "report.json") for d in dirs.split(",")]
    rl_text = ""
    if all(os.path.exists(p) for p in rl_paths):
        acts = [json.load(open(p)) for p in rl_paths]
        rl_rows = [line("starting policy: gold accuracy (%)", [a["runs"][0]["gold_before"] for a in acts])]
        for k, run in enumerate(acts[0]["runs"]):
            rl_rows.append(line(f"after GRPO with {run['reward']}: gold accuracy (%)", [a["runs"][k]["gold_after"] for a in acts]))
        for k, b in enumerate(acts[0]["best_of_n"]):
            rl_rows.append(line(f"best-of-16 picked by {b['selector']}: gold accuracy (%)", [a["best_of_n"][k]["accuracy"][-1][1] for a in acts]))
        rl_rows.append(line("last act wall time (s)", [a["seconds"] for a in acts], "{:.0f}"))
        for a in acts:
            for name, met, detail in a["targets"]:
                targets.setdefault(name, []).append(("met" if met else "**not met**") + f" ({detail})")
        rl_text = f"""
The last act (`OUT/rl/report.json`; GRPO from a policy with a careless habit, {acts[0]['config']['steps']} steps ×
{acts[0]['config']['prompts_per_step']} prompts × {acts[0]['config']['group_size']} samples, gold accuracy greedy on
{acts[0]['config']['eval_questions']} held-out questions, best-of-n on {acts[0]['config']['best_of_n_questions']}):

| measure | {' | '.join(f'seed {r["seed"]}' for r in reps)} | mean ± sd |
|---|{'---|' * len(reps)}---|
{chr(10).join(rl_rows)}
"""
    trows = [f"| {name} | {' | '.join(v)} |" for name, v in targets.items()]
    seeds = [r["seed"] for r in reps]
    body = f"""
Written by `bash tools/bench_demo.sh` on {datetime.date.today()}: `gramrr demo --seed S` (full size) for
seeds {', '.join(map(str, seeds))}, {cpu_name()}, {os.cpu_count()} cores. Accuracies are
pairwise accuracy (%) on the {reps[0]['test_pairs']} held-out test pairs; mean ± sample standard deviation.

| measure | {' | '.join(f'seed {s}' for s in seeds)} | mean ± sd |
|---|{'---|' * len(seeds)}---|
{chr(10).join(rows)}
{rl_text}
Targets of issues 5 and 19, per seed:

| target | {' | '.join(f'seed {s}' for s in seeds)} |
|---|{'---|' * len(seeds)}
{chr(10).join(trows)}
"""
    replace_section(out, "Demo", body)


def demo_rows(runs):
    """One summary row per finished demo run, printed (for before/after tables written by hand).

    runs: LABEL=DIR or LABEL=DIR:LOG, LOG the output of `/usr/bin/time -v gramrr demo ...`
    (its wall clock goes in the row; without it the column says –)."""
    print("| run | wall (s) | vanilla | initial | self-training | final | control | policy with GRAM-R² (gold, %) "
          "| above vanilla RM's policy | best-of-16 GRAM-R² vs vanilla | targets met |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for arg in runs:
        label, rest = arg.split("=", 1)
        d, _, log = rest.partition(":")
        r = json.load(open(os.path.join(d, "report.json")))
        act = json.load(open(os.path.join(d, "rl", "report.json")))
        a = r["accuracy"]
        by_reward = {x["reward"]: x for x in act["runs"]}
        g, v = by_reward["GRAM-R² final"], by_reward["vanilla RM"]
        best16 = {x["selector"]: dict(x["accuracy"])[16] for x in act["best_of_n"]}
        met = sum(t["met"] for t in r["targets"]) + sum(t[1] for t in act["targets"])
        total = len(r["targets"]) + len(act["targets"])
        wall = "–"
        if log:
            m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):(\d+\.\d+)", open(log, errors="replace").read())
            if m:
                wall = f"{int(m.group(1) or 0) * 3600 + int(m.group(2)) * 60 + float(m.group(3)):.0f}"
        print(f"| {label} | {wall} | {a['vanilla_rm']:.1f} | {a['gram_rr_initial']:.1f} | {a['gram_rr_self_training'][-1]:.1f} "
              f"| {a['gram_rr_final']:.1f} | {a['control_extra_steps']:.1f} "
              f"| {g['gold_before']:.1f} → {g['gold_after']:.1f} ({g['gold_after'] - g['gold_before']:+.1f}) "
              f"| {g['gold_after'] - v['gold_after']:+.1f} | {best16['GRAM-R² final']:.0f} vs {best16['vanilla RM']:.0f} | {met} of {total} |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["demo-rows"]:
        demo_rows(sys.argv[2:])
        sys.exit(0)
    kind, gpath, tpath, out = sys.argv[1:5]
    if kind == "engine":
        engine(json.load(open(gpath)), json.load(open(tpath)), out)
    elif kind == "train":
        train(gpath, tpath, out)
    elif kind == "serve":
        serve(gpath, tpath, out)
    elif kind == "demo":
        demo(gpath, tpath, out)
    else:
        sys.exit(f"unknown kind {kind}: engine, train, serve or demo")
    print(f"updated {out}")
