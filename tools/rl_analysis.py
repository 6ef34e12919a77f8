#!/usr/bin/env python3
"""What the rewards of the demo's last act did, recomputed from the runs' own files.

    python3 tools/rl_analysis.py OUT [OUT ...]            # from samples.jsonl and metrics.jsonl
    python3 tools/rl_analysis.py OUT ... --judge           # also the RMs' pairwise accuracy (runs gramrr judge)
    python3 tools/rl_analysis.py OUT ... --judge --gram-stage iter3/rm   # the same pairs, another stage's RM

OUT is a `gramrr demo --rl` output directory. Each GRPO run of the act, OUT/rl/<reward>/, holds
samples.jsonl (every sampled response: step, prompt_id, response, reward) and metrics.jsonl (per
step: reward_mean, ...). For each seed it prints a Markdown table with one row per reward:

- mean reward of the right and of the wrong samples, and the gap: does the reward tell them apart?
- groups (one prompt's samples in one step) with at least one right sample: where GRPO has
  something right to push towards;
- within the groups that hold both, how often a right sample got a higher reward than a wrong one
  (ties count half): the ordering GRPO's advantages actually saw;
- gold accuracy of the samples and the proxy reward in the first and last quarter of the steps
  (quarters as the act's report.md cuts them): a proxy that rises while gold falls is
  over-optimisation;
- with --solve-first, the same pairs judged with a worked result written into the RM's rationale
  before it goes on: the backbone's (worked out from the bare question, no answers shown), so
  the verdicts are measured apart from the RM's own arithmetic; and how often the RM itself works
  the bare question out right;
- with --judge, the RM's pairwise accuracy on right-vs-wrong pairs drawn from the samples
  (`gramrr judge` with the act's judging settings: compact template, reasoning mode, greedy,
  72-token rationales, one order per pair), how often the result the RM works out in its
  rationale is right, and how often a wrong one is one of the two answers it was shown.

The samples carry no gold flag: "right" is recomputed here exactly as the act does it
(`computation_correct` in crates/gramrr-pipeline/src/demo/domain.rs, applied to the bare question
the way rl_act.rs does for its per-step gold accuracy). Nothing is written into OUT; the judge's
files go to a temporary directory. Standard library only.
"""

import argparse
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile

THINK = "<think>"
# The act's reward runs, in the order its report lists them, and the stage whose model rewarded
# each (the oracle is the verifier itself: nothing to judge).
RUNS = [("gram-rr", "final"), ("vanilla", "baseline"), ("oracle", None)]
# Rust's u32 parse: an optional '+' then ASCII digits (Python's int() would also take '_' and spaces).
U32 = re.compile(r"\+?[0-9]+")


def reversed_digits(n):
    return str(n)[::-1]


def question_of(prompt):
    """`Q: 63-15? ` -> `63-15?`, as rl_act.rs's question_of."""
    p = prompt.strip()
    return p[2:].strip() if p.startswith("Q:") else p


def parse_question(question):
    """`63-15?` -> (63, '-', 15, 48), as domain.rs's Problem::parse and answer; None where it
    does not parse or the answer would be negative (the domain asks a-b with a > b only; Rust's
    u32 would not get there either)."""
    if not question.endswith("?"):
        return None
    q = question[:-1]
    # The operator is the first '+' or '-' after the first character (Problem::parse).
    i = next((k for k, c in enumerate(q) if k > 0 and c in "+-"), None)
    if i is None or not U32.fullmatch(q[:i]) or not U32.fullmatch(q[i + 1:]):
        return None
    a, op, b = int(q[:i]), q[i], int(q[i + 1:])
    c = a + b if op == "+" else a - b
    return None if c < 0 else (a, op, b, c)


def computation_correct(question, text):
    """Port of domain.rs: the text's worked steps after <think> are exactly the right ones.

    `63-15?` wants `<think>36-51=84 so 48.` (operands and result written in reversed digits).
    """
    parsed = parse_question(question)
    if parsed is None:
        return False
    a, op, b, c = parsed
    start = text.find(THINK)
    if start < 0:
        return False
    want = f"{reversed_digits(a)}{op}{reversed_digits(b)}={reversed_digits(c)} so {c}."
    return text[start + len(THINK):].startswith(want)


def stated_answer(text):
    """What a response states as its result (`so 48.` -> `It is 48.`), as rl_act.rs's
    stated_answer: the RMs judge this, not the worked steps."""
    i = text.find(" so ")
    if i >= 0:
        n = re.match(r"[0-9]*", text[i + 4:]).group(0)
        if n:
            return f"It is {n}."
    return text[:40]


def write_jsonl(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


def quarters(n):
    """Step ranges (1-based, inclusive) of the quarters as RlActReport::to_markdown cuts them:
    chunks of ceil(n/4) steps."""
    q = max(1, math.ceil(n / 4))
    return [(s + 1, min(s + q, n)) for s in range(0, n, q)]


def analyse_run(run_dir):
    samples = read_jsonl(os.path.join(run_dir, "samples.jsonl"))
    for s in samples:
        s["gold"] = computation_correct(question_of(s["prompt_id"]), s["response"])
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    metrics = read_jsonl(metrics_path) if os.path.exists(metrics_path) else []
    steps = max(s["step"] for s in samples)
    groups = {}
    for s in samples:
        groups.setdefault((s["step"], s["prompt_id"]), []).append(s)
    right = [s["reward"] for s in samples if s["gold"]]
    wrong = [s["reward"] for s in samples if not s["gold"]]
    # Within mixed groups: every (right, wrong) pair, right above wrong counts 1, a tie 1/2.
    wins, pairs = 0.0, 0
    for g in groups.values():
        for r in (s["reward"] for s in g if s["gold"]):
            for w in (s["reward"] for s in g if not s["gold"]):
                wins += 1.0 if r > w else 0.5 if r == w else 0.0
                pairs += 1
    proxy_by_step = {m["step"]: m["reward_mean"] for m in metrics}
    qs = quarters(steps)

    def quarter(lo, hi):
        inq = [s for s in samples if lo <= s["step"] <= hi]
        # metrics.jsonl's reward_mean is what the act's report plots; the samples' mean is the same
        # number and stands in when metrics.jsonl is missing.
        proxy = [proxy_by_step[k] for k in range(lo, hi + 1) if k in proxy_by_step]
        return 100.0 * mean([s["gold"] for s in inq]), mean(proxy) if proxy else mean([s["reward"] for s in inq])

    # The act's own per-step gold accuracy (report.json, computed by the Rust verifier) pins this
    # port of it down: they must agree on every step.
    per_step = [100.0 * mean([s["gold"] for s in samples if s["step"] == k]) for k in range(1, steps + 1)]
    return {
        "per_step_gold": per_step,
        "samples": samples,
        "groups": groups,
        "n": len(samples),
        "steps": steps,
        "right_share": 100.0 * len(right) / len(samples),
        "mean_right": mean(right),
        "mean_wrong": mean(wrong),
        "groups_with_right": 100.0 * sum(any(s["gold"] for s in g) for g in groups.values()) / len(groups),
        "mixed_groups": sum(any(s["gold"] for s in g) and not all(s["gold"] for s in g) for g in groups.values()),
        "ordered": 100.0 * wins / pairs if pairs else float("nan"),
        "first": quarter(*qs[0]),
        "last": quarter(*qs[-1]),
    }


def judge_pairs(groups, limit, seed):
    """One right-vs-wrong pair per group whose right and wrong samples state different answers
    (identical stated answers are a tie the act never puts to the judge), at most `limit`,
    drawn with `seed`; A/B placement at random."""
    rng = random.Random(seed)
    pairs = []
    for (step, pid), g in sorted(groups.items()):
        rights = [s for s in g if s["gold"]]
        wrongs = [s for s in g if not s["gold"]]
        rng.shuffle(rights)
        rng.shuffle(wrongs)
        pick = next(((r, w) for r in rights for w in wrongs if stated_answer(r["response"]) != stated_answer(w["response"])), None)
        if pick is None:
            continue
        r, w = (stated_answer(x["response"]) for x in pick)
        a_right = rng.random() < 0.5
        pairs.append({
            "id": f"step{step}-{pid}",
            "prompt": question_of(pid),
            "response_a": r if a_right else w,
            "response_b": w if a_right else r,
            "label": "A" if a_right else "B",
        })
    rng.shuffle(pairs)
    return pairs[:limit]


def run_judge(gramrr, model, pairs, tmp, tag, both_orders=False):
    inp, outp, summ = (os.path.join(tmp, f"{tag}.{x}") for x in ("pairs.jsonl", "verdicts.jsonl", "summary.json"))
    write_jsonl(inp, pairs)
    cmd = [gramrr, "judge", "--model", model, "--input", inp, "--output", outp, "--summary", summ,
           "--template", "compact", "--mode", "reason", "--max-new-tokens", "72"] + ([] if both_orders else ["--one-order"])
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    verdicts = read_jsonl(outp)
    # A verdict that failed to parse has no label: it counts as not right. With both orders,
    # orders that disagree (`consistent: false`, no label) are a tie, which a Bradley-Terry
    # reward scores 1/2.
    right = sum(1 for v in verdicts if v.get("correct") is True)
    ties = sum(1 for v in verdicts if v.get("label") is None and v.get("consistent") is False)
    failed = sum(1 for v in verdicts if v.get("label") is None) - ties
    return 100.0 * right / len(verdicts), len(verdicts), failed, 100.0 * ties / len(verdicts)


# The judge's worked steps in the demo's compact form: `<think>WORK so RESULT. A x vs RESULT …`.
RESULT = re.compile(r"<think>[^<]*? so (\d+)\.")


def sums(pairs, verdicts_path):
    """Of the judged pairs whose rationale states a result: how often that result is the right
    answer, and how often a wrong result is one of the two answers shown to the judge (the RM
    copying an answer it was shown instead of working the sum out)."""
    by_id = {p["id"]: p for p in pairs}
    n = right = wrong = copied = 0
    for v in read_jsonl(verdicts_path):
        p = by_id[v["id"]]
        answer = parse_question(p["prompt"])[3]
        shown = {stated_value(p["response_a"]), stated_value(p["response_b"])}
        for j in v.get("judgments", []):
            m = RESULT.search(j.get("rationale", ""))
            if not m:
                continue
            c = int(m.group(1))
            n += 1
            right += c == answer
            wrong += c != answer
            copied += c != answer and c in shown
    return n, right, wrong, copied


def generate(gramrr, model, prompts, tmp, tag, max_new_tokens):
    """Greedy `gramrr generate` of raw prompts; the texts in order."""
    inp, outp = (os.path.join(tmp, f"{tag}.{x}") for x in ("gen-in.jsonl", "gen-out.jsonl"))
    write_jsonl(inp, ({"prompt": p} for p in prompts))
    subprocess.run([gramrr, "generate", "--model", model, "--input", inp, "--output", outp, "--batch-size", "256",
                    "--max-new-tokens", str(max_new_tokens)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return [r["text"] for r in read_jsonl(outp)]


def judge_prompt(p):
    """The compact judge template (JudgeTemplate::compact), responses in the pair's order."""
    return f"A: {p['response_a']}\nB: {p['response_b']}\nQ: {p['prompt']} "


VERDICT = re.compile(r"<answer>([AB])</answer>")


def solve_first(gramrr, out, stage, pairs, tmp, tag):
    """(pairs judged right with the backbone's worked result written in, the backbone's results
    right, the RM's own results right on the bare question). The backbone answers `Q: 63-15? `
    as in its pretraining text; its `<think>WORK so RESULT.` starts the RM's rationale, and the RM
    writes the rest (verdicts, label) greedily, as the act judges."""
    backbone, rm = (os.path.join(out, "run", s, "model") for s in ("backbone", stage))
    bare = [f"Q: {p['prompt']} " for p in pairs]
    answers = [parse_question(p["prompt"])[3] for p in pairs]

    def results_right(texts):
        return 100.0 * sum(1 for t, c in zip(texts, answers) if (m := RESULT.search(t)) and int(m.group(1)) == c) / len(pairs)

    worked = [(m.group(0) if (m := RESULT.search(t)) else THINK) for t in generate(gramrr, backbone, bare, tmp, tag + ".backbone", 24)]
    own = results_right(generate(gramrr, rm, bare, tmp, tag + ".own", 24))
    rest = generate(gramrr, rm, [judge_prompt(p) + w for p, w in zip(pairs, worked)], tmp, tag + ".rest", 72)
    right = sum(1 for p, w, r in zip(pairs, worked, rest) if (m := VERDICT.search(w + r)) and m.group(1) == p["label"])
    return 100.0 * right / len(pairs), results_right(worked), own


def stated_value(answer):
    digits = "".join(ch for ch in answer if ch.isdigit())
    return int(digits) if digits else None


def fmt(x, spec):
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="+", help="demo output directories (each with rl/<reward>/samples.jsonl)")
    ap.add_argument("--judge", action="store_true", help="also run `gramrr judge` on right-vs-wrong pairs from the samples")
    ap.add_argument("--gramrr", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "gramrr"),
                    help="the gramrr binary for --judge [default: target/release/gramrr]")
    ap.add_argument("--both-orders", action="store_true",
                    help="with --judge: judge the same pairs again in both orders (a tie where they disagree), "
                         "to see whether position-swapped judging would make a better reward")
    ap.add_argument("--solve-first", action="store_true",
                    help="with --judge: the same pairs judged with the backbone's worked result written into the RM's "
                         "rationale (its verdicts apart from its arithmetic), and the RM's own result on the bare question")
    ap.add_argument("--gram-stage", default="final",
                    help="with --judge: the stage whose model judges the GRAM-R² run's pairs, e.g. iter3/rm for the "
                         "self-trained RM before the final fine-tune [default: final, the act's reward]")
    ap.add_argument("--pairs", type=int, default=300, help="most pairs judged per run [default: 300]")
    ap.add_argument("--seed", type=int, default=0, help="seed of the pair draw [default: 0]")
    args = ap.parse_args()

    checked, mismatched = 0, []
    print("Right/wrong by the world's gold verifier, recomputed from each response (the samples carry no gold flag).\n")
    for out in args.out:
        report = os.path.join(out, "rl", "report.json")
        act = json.load(open(report)) if os.path.exists(report) else {}
        seed = act.get("seed", "?")
        print(f"### seed {seed} (`{out}`)\n")
        head = "| reward | samples | right | mean reward, right samples | mean reward, wrong samples | gap | groups with a right sample | right above wrong within a group | gold of samples, first → last quarter | proxy reward, first → last quarter |"
        if args.judge:
            head += " RM on right-vs-wrong pairs (n) | RM's own result right | wrong results equal to a shown answer |"
            if args.both_orders:
                head += " same pairs, both orders: right + ties → right + ties/2 |"
            if args.solve_first:
                head += " same pairs, the backbone's worked result written in (its results right) | RM's own result on the bare question |"
        print(head)
        print("|" + "---|" * head.count(" |"))
        for slug, stage in RUNS:
            if slug == "gram-rr":
                stage = args.gram_stage
            run_dir = os.path.join(out, "rl", slug)
            if not os.path.exists(os.path.join(run_dir, "samples.jsonl")):
                continue
            a = analyse_run(run_dir)
            name = slug
            rep = os.path.join(run_dir, "grpo_report.json")
            if os.path.exists(rep):
                name = json.load(open(rep)).get("reward", slug)
            row = (f"| {name} | {a['n']} | {a['right_share']:.1f}% | {a['mean_right']:.3f} | {a['mean_wrong']:.3f} | "
                   f"{a['mean_right'] - a['mean_wrong']:+.3f} | {a['groups_with_right']:.1f}% | "
                   f"{fmt(a['ordered'], '.1f')}% of pairs in {a['mixed_groups']} groups | "
                   f"{a['first'][0]:.1f}% → {a['last'][0]:.1f}% | {a['first'][1]:.3f} → {a['last'][1]:.3f} |")
            rust = next((r["sample_gold"] for r in act.get("runs", []) if r["reward"] == name), None)
            if rust is not None and (len(rust) != len(a["per_step_gold"]) or any(abs(x - y) > 1e-9 for x, y in zip(rust, a["per_step_gold"]))):
                mismatched.append(f"{out} {slug}")
            checked += rust is not None
            if args.judge:
                if stage is None:
                    row += " — | — | — |" + " — |" * args.both_orders + " — | — |" * args.solve_first
                else:
                    pairs = judge_pairs(a["groups"], args.pairs, args.seed)
                    with tempfile.TemporaryDirectory() as tmp:
                        acc, n, failed, _ = run_judge(args.gramrr, os.path.join(out, "run", stage, "model"), pairs, tmp, slug)
                        row += f" {acc:.1f}% ({n}{f', {failed} unparsed' if failed else ''}) |"
                        k, right, wrong, copied = sums(pairs, os.path.join(tmp, f"{slug}.verdicts.jsonl"))
                        row += f" {100.0 * right / k:.1f}% ({k}) | {100.0 * copied / wrong if wrong else float('nan'):.1f}% of {wrong} |"
                        if args.both_orders:
                            acc2, _, _, ties = run_judge(args.gramrr, os.path.join(out, "run", stage, "model"), pairs, tmp, slug + ".both", True)
                            row += f" {acc2:.1f}% + {ties:.1f}% ties → {acc2 + ties / 2:.1f}% |"
                        if args.solve_first:
                            acc3, backbone_right, own = solve_first(args.gramrr, out, stage, pairs, tmp, slug + ".solve")
                            row += f" {acc3:.1f}% ({backbone_right:.1f}%) | {own:.1f}% |"
            print(row)
        print()
    if mismatched:
        print(f"error: the gold flags recomputed here disagree with the act's report.json (sample_gold) in: {', '.join(mismatched)}", file=sys.stderr)
        return 1
    print(f"Gold flags checked against the act's own per-step gold accuracy (report.json) in {checked} runs: identical.")
    if args.judge:
        print(f"RM pairwise accuracy: at most {args.pairs} pairs per run, one per group with a right and a wrong sample "
              f"that state different answers (seed {args.seed}), the stated answers judged by the run's own RM"
              f"{'' if args.gram_stage == 'final' else f' (GRAM-R²: run/{args.gram_stage}/model)'} "
              "(`gramrr judge --template compact --mode reason --one-order --max-new-tokens 72`); unparsed verdicts count as wrong.")


if __name__ == "__main__":
    sys.exit(main())
