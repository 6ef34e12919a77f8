#!/usr/bin/env python3
"""Cut a few records of every benchmark file in shared/benchdata into the tests' own data folder.

    python3 tools/make_benchsample.py [SRC=../shared/benchdata] [DST=crates/gramrr-data/tests/fixtures/benchsample]

JSONL lines are copied byte for byte; JSON-array files are re-serialised with the chosen records
only (json.dumps, ensure_ascii=False, indent=2); the gzip file is re-compressed. Records are chosen
by rule, not by hand: the shortest ones per category/subset, so the sample stays small and still
has every category, label and verdict kind (ties, missing verdicts) that the readers and scorers
treat differently. Writes benchsample.manifest.json beside the folder with the source file, the records kept and their count.
"""
import gzip, json, os, sys
from pathlib import Path

src = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/benchdata")
dst = Path(sys.argv[2] if len(sys.argv) > 2 else "crates/gramrr-data/tests/fixtures/benchsample")
manifest = {}

def write_json(rel, records, note):
    out = dst / rel
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    manifest[rel] = {"records": len(records), "kept": note}

def shortest(items, key, n):
    return sorted(items, key=lambda r: len(json.dumps(r, ensure_ascii=False)))[:n] if key is None else None

# RM-Bench: per file, the 2 shortest records of each subset (in file order).
for f in sorted((src / "rm-bench").glob("*.json")):
    recs = json.loads(f.read_text(encoding="utf-8"))
    keep = set()
    for sub in sorted({r["subset"] for r in recs}):
        of = [i for i, r in enumerate(recs) if r["subset"] == sub]
        keep |= set(sorted(of, key=lambda i: len(json.dumps(recs[i], ensure_ascii=False)))[:2])
    write_json(f"rm-bench/{f.name}", [recs[i] for i in sorted(keep)], "2 shortest per subset, file order")

# JudgeBench pairs: per file, the shortest pair of each source category; the output files keep
# the lines of those pairs, plus for each output file at least one pair whose judgments hold a tie
# and one with a missing verdict where the file has them.
CATS = ["mmlu-pro", "livebench-reasoning", "livebench-math", "livecodebench"]
outputs = sorted((src / "judgebench/outputs").glob("*.jsonl"))
for f in sorted((src / "judgebench").glob("dataset=*.jsonl")):
    lines = f.read_bytes().split(b"\n")
    lines = [l for l in lines if l.strip()]
    recs = [json.loads(l) for l in lines]
    model = recs[0]["response_model"]
    mine = [o for o in outputs if f"response_model={model}," in o.name]
    def kinds(pid):
        k = set()
        for o in mine:
            for l in o.read_bytes().split(b"\n"):
                if l.strip() and json.loads(l)["pair_id"] == pid:
                    for j in json.loads(l)["judgments"]:
                        k.add("none" if j is None or j.get("decision") is None else j["decision"])
        return k
    keep = set()
    for c in CATS:
        of = [i for i, r in enumerate(recs) if r["source"].startswith(c)]
        keep.add(min(of, key=lambda i: len(lines[i])))
    # Verdict kinds: add the shortest pair that shows a tie / a missing verdict in some output file.
    by_len = sorted(range(len(recs)), key=lambda i: len(lines[i]))
    have = set().union(*(kinds(recs[i]["pair_id"]) for i in keep))
    for want in ["A=B", "none"]:
        if want in have:
            continue
        for i in by_len[:120]:
            if want in kinds(recs[i]["pair_id"]):
                keep.add(i); have |= kinds(recs[i]["pair_id"]); break
    kept_ids = {recs[i]["pair_id"] for i in keep}
    out = dst / "judgebench" / f.name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(b"".join(lines[i] + b"\n" for i in sorted(keep)))
    manifest[f"judgebench/{f.name}"] = {"records": len(keep), "kept": "shortest pair per source category, plus pairs showing a tie and a missing verdict; lines byte-exact"}
    for o in mine:
        ol = [l for l in o.read_bytes().split(b"\n") if l.strip()]
        sel = [l for l in ol if json.loads(l)["pair_id"] in kept_ids]
        p = dst / "judgebench/outputs" / o.name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"".join(l + b"\n" for l in sel))
        manifest[f"judgebench/outputs/{o.name}"] = {"records": len(sel), "kept": "the lines of the kept pairs; byte-exact"}

# LLMBar: per set, the 2 shortest records with output 1 better and the 2 shortest with output 2.
for f in sorted((src / "llmbar").rglob("dataset.json")):
    recs = json.loads(f.read_text(encoding="utf-8"))
    keep = set()
    for lab in (1, 2):
        of = [i for i, r in enumerate(recs) if r["label"] == lab]
        keep |= set(sorted(of, key=lambda i: len(json.dumps(recs[i], ensure_ascii=False)))[:2])
    write_json(str(f.relative_to(src)), [recs[i] for i in sorted(keep)], "2 shortest per label, file order")

# HH-RLHF: the first 12 lines, byte-exact, re-gzipped.
f = src / "hh-rlhf/harmless-base/test.jsonl.gz"
lines = gzip.decompress(f.read_bytes()).split(b"\n")[:12]
out = dst / "hh-rlhf/harmless-base/test.jsonl.gz"
out.parent.mkdir(parents=True, exist_ok=True)
out.write_bytes(gzip.compress(b"".join(l + b"\n" for l in lines), mtime=0))
manifest["hh-rlhf/harmless-base/test.jsonl.gz"] = {"records": 12, "kept": "first 12 lines, byte-exact"}

# RMB: per file, the 3 shortest records.
for f in sorted((src / "rmb").rglob("*.json")):
    recs = json.loads(f.read_text(encoding="utf-8"))
    keep = sorted(sorted(range(len(recs)), key=lambda i: len(json.dumps(recs[i], ensure_ascii=False)))[:3])
    write_json(str(f.relative_to(src)), [recs[i] for i in keep], "3 shortest, file order")

(dst.parent / (dst.name + ".manifest.json")).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
print(f"wrote {len(manifest)} files under {dst}")
