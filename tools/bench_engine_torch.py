#!/usr/bin/env python3
"""Time transformers + torch on the same work as `gramrr bench engine`, same weights, same threads.

    python3 tools/bench_engine_torch.py --model DIR --threads 2 --output torch.json

Scoring: batch 4 x 512 tokens, log-softmax of the logits at every position and the gathered
target log-probs (what scoring completions needs). Decoding: greedy, prompt 128, exactly 128 new
tokens (EOS ignored via min_new_tokens), batch 1 and 8. Peak RSS is ru_maxrss after scoring.
With --dtype bfloat16 the model is loaded and run in bf16 (`from_pretrained(dtype=torch.bfloat16)`),
and the GEMMs are timed in bf16 too, on the same shapes as `gramrr bench engine`'s `gemm_bf16`
(the f32 benchmark's 2048x1024x3072, and the model's MLP at score_len, 8 and 1 rows), with the
oneDNN kernel that runs them (from ONEDNN_VERBOSE in a child process).
"""
import argparse, json, os, resource, subprocess, sys, time

import torch
import transformers


def best_of(reps, f):
    f()
    best = float("inf")
    for _ in range(max(1, reps)):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best


def onednn_kernel(threads):
    """The oneDNN implementation that runs a bf16 linear here, as ONEDNN_VERBOSE names it."""
    code = ("import torch; torch.set_num_threads(%d); "
            "torch.nn.functional.linear(torch.randn(512, 576, dtype=torch.bfloat16), torch.randn(1536, 576, dtype=torch.bfloat16))" % threads)
    env = dict(os.environ, ONEDNN_VERBOSE="1")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    lines = [l for l in res.stdout.splitlines() if ",exec," in l and "matmul" in l]
    return lines[0].split(",")[6] if lines else "not reported (no oneDNN matmul ran)"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--score-batch", type=int, default=4)
    ap.add_argument("--score-len", type=int, default=512)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--decode-batches", default="1,8")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--skip", default="")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--output")
    a = ap.parse_args()
    dtype = getattr(torch, a.dtype)
    torch.set_num_threads(a.threads)
    skip = set(s for s in a.skip.split(",") if s)
    t0 = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype, attn_implementation="sdpa")
    model.eval()
    load_s = time.perf_counter() - t0
    tok = transformers.AutoTokenizer.from_pretrained(a.model)
    vocab = len(tok)
    g = torch.Generator().manual_seed(0)
    out = {"model": a.model, "threads": torch.get_num_threads(), "torch": torch.__version__,
           "transformers": transformers.__version__, "load_seconds": load_s,
           "parameters": sum(p.numel() for p in model.parameters()), "dtype": a.dtype}

    if "score" not in skip:
        ids = torch.randint(4, vocab - 4, (a.score_batch, a.score_len), generator=g)

        def score():
            with torch.inference_mode():
                logits = model(ids).logits[:, :-1]
                lp = torch.log_softmax(logits.float(), -1)
                return lp.gather(-1, ids[:, 1:, None])

        secs = best_of(a.reps, score)
        out["score"] = {"batch": a.score_batch, "seq_len": a.score_len, "seconds": secs,
                        "tokens_per_second": a.score_batch * a.score_len / secs}
        out["peak_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    if "decode" not in skip:
        dec = {}
        for bs in [int(x) for x in a.decode_batches.split(",")]:
            ids = torch.randint(4, vocab - 4, (bs, a.prompt_len), generator=g)
            mask = torch.ones_like(ids)
            n = {}

            def gen():
                with torch.inference_mode():
                    o = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                       max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens,
                                       pad_token_id=tok.pad_token_id)
                n["tokens"] = (o.shape[1] - a.prompt_len) * bs

            secs = best_of(a.reps, gen)
            dec[f"batch_{bs}"] = {"batch": bs, "prompt_len": a.prompt_len, "new_tokens": a.new_tokens,
                                   "seconds": secs, "generated_tokens": n["tokens"],
                                   "tokens_per_second": n["tokens"] / secs}
        out["decode"] = dec

    if "gemm" not in skip:
        x = torch.randn(2048, 1024, dtype=dtype)
        w = torch.randn(3072, 1024, dtype=dtype)
        secs = best_of(max(3, a.reps), lambda: x @ w.T)
        out["gemm"] = {"m": 2048, "k": 1024, "n": 3072, "gflops_per_second": 2 * 2048 * 1024 * 3072 / secs / 1e9}
        if dtype == torch.bfloat16:
            c, f = model.config.hidden_size, model.config.intermediate_size
            shapes = []
            for m, k, n in [(2048, 1024, 3072), (a.score_len, c, f), (a.score_len, f, c), (8, c, f), (1, c, f)]:
                x = torch.randn(m, k, dtype=dtype)
                w = torch.randn(n, k, dtype=dtype)
                flops = 2 * m * k * n
                calls = max(1, min(1000, int(2e9 / flops)))

                def run():
                    with torch.inference_mode():
                        for _ in range(calls):
                            torch.nn.functional.linear(x, w)

                secs = best_of(max(3, a.reps), run) / calls
                shapes.append({"m": m, "k": k, "n": n, "gflops_per_second": flops / secs / 1e9})
            out["gemm_bf16"] = {"shapes": shapes, "kernel": onednn_kernel(a.threads)}

    text = json.dumps(out, indent=2)
    print(text)
    if a.output:
        open(a.output, "w").write(text + "\n")


if __name__ == "__main__":
    main()
