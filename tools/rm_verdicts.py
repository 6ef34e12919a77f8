#!/usr/bin/env python3
"""Where a demo reward model's test rationales go wrong, step by step.

For one evaluated stage of a demo run (`OUT/run/eval/STAGE/predictions.jsonl` against
`OUT/data/test.jsonl`):
- verdicts: of the `A x vs c yes/no` steps, how often "yes" follows equal numbers and "no"
  different ones (the equality skill the verdicts rest on);
- carries: how often the stated sum is right, and the label right, on questions that need a
  carry or borrow and on those that do not (does the RM share a careless policy's habit?).

Usage: python3 tools/rm_verdicts.py OUT STAGE [STAGE ...]    (STAGE: baseline, rm, iter1, final, ...)
"""
import json
import re
import sys

STEP = re.compile(r"so (\d+)\. A (\d+) vs (\d+) (yes|no)\. B (\d+) vs (\d+) (yes|no)\.")


def question(q):
    a, op, b = re.match(r"(\d+)([+-])(\d+)\?", q).groups()
    a, b = int(a), int(b)
    answer = a + b if op == "+" else a - b
    carry = (a % 10 + b % 10 >= 10) if op == "+" else (a % 10 < b % 10)
    return answer, carry


def pct(k, n):
    return f"{100 * k / n:.1f}%" if n else "—"


def stage_report(out, stage, test):
    eq = {"yes": 0, "no": 0}
    ne = {"yes": 0, "no": 0}
    unparsed = 0
    by_carry = {True: [0, 0, 0], False: [0, 0, 0]}  # pairs, sum right, label right
    for line in open(f"{out}/run/eval/{stage}/predictions.jsonl"):
        r = json.loads(line)
        answer, carry = question(test[r["id"]]["prompt"])
        row = by_carry[carry]
        row[0] += 1
        row[2] += r["label"] == r["truth"]
        m = STEP.search(r["text"])
        if not m:
            unparsed += 1
            continue
        result, va, ca, ya, vb, cb, yb = m.groups()
        row[1] += int(result) == answer
        for v, c, said in ((va, ca, ya), (vb, cb, yb)):
            (eq if v == c else ne)[said] += 1
    n_eq, n_ne = sum(eq.values()), sum(ne.values())
    print(f"{out} {stage}: says yes for {pct(eq['yes'], n_eq)} of equal pairs ({n_eq}), "
          f"no for {pct(ne['no'], n_ne)} of different ones ({n_ne}); {unparsed} rationales unparsed")
    for carry, (n, right, label) in by_carry.items():
        print(f"  {'with' if carry else 'without'} a carry or borrow: sum right {pct(right, n)}, label right {pct(label, n)} (n={n})")


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out = sys.argv[1]
    test = {}
    for line in open(f"{out}/data/test.jsonl"):
        r = json.loads(line)
        test[r["id"]] = r
    for stage in sys.argv[2:]:
        stage_report(out, stage, test)


if __name__ == "__main__":
    main()
