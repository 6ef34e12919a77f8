#!/usr/bin/env python3
"""WiSE-FT probe: a model whose weights are (1 - alpha) * PRE + alpha * FT, the other files copied
from FT (BENCHMARKS.md, "Fourth session of 2026-12-06").

    python3 tools/wise_ft.py PRE_DIR FT_DIR ALPHA OUT_DIR
    gramrr judge --model OUT_DIR --input RUN/data/test.jsonl --output v.jsonl --summary s.json \
        --template compact --mode reason --one-order --max-new-tokens 72

Needs the `safetensors` and `numpy` Python packages.
"""
import os
import shutil
import sys

from safetensors.numpy import load_file, save_file


def main():
    pre, ft, alpha, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    a = load_file(os.path.join(pre, "model.safetensors"))
    b = load_file(os.path.join(ft, "model.safetensors"))
    if a.keys() != b.keys():
        sys.exit(f"error: {pre} and {ft} hold different tensors")
    os.makedirs(out, exist_ok=True)
    for f in os.listdir(ft):
        if f != "model.safetensors":
            shutil.copy(os.path.join(ft, f), out)
    save_file({k: ((1 - alpha) * a[k] + alpha * b[k]).astype(b[k].dtype) for k in b}, os.path.join(out, "model.safetensors"))


if __name__ == "__main__":
    main()
