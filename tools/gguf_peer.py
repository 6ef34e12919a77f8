#!/usr/bin/env python3
"""llama.cpp (llama-cpp-python) as the reference for gramrr's GGUF support.

  python3 tools/gguf_peer.py quantize SRC.gguf OUT.gguf q8_0|q4_k_m
      llama.cpp's own quantizer (llama_model_quantize).
  python3 tools/gguf_peer.py reference FILE.gguf OUT.json
      What llama.cpp computes on FILE: token ids of TEXTS, 32 greedy tokens after PROMPTS
      (with the top-2 logit gap at each step), and per-token log-probs of SCORED.
  python3 tools/gguf_peer.py direct FILE.gguf < REQUESTS.json
      llama.cpp answering token-id requests directly (no server), JSON on stdout:
      {"texts": [str]} -> tokens of each (special tokens parsed, no BOS added);
      {"greedy": [{"ids", "max_tokens"}]} -> argmax continuation, stopped at an end-of-generation
      token as llama.cpp's server stops; {"score": [{"ids", "from"}]} -> log-probs of ids[from:] ("whole": one pass;
      "stepwise": the prompt, then one token per pass);
      {"next": [{"ids" or "text", "cands"}]} -> log-probs of each candidate as the next token
      (a text tokenized by llama.cpp).
      crates/gramrr-remote/tests/llamacpp_server.rs compares gramrr through llama.cpp's server
      with these.
  python3 tools/gguf_peer.py bench FILE.gguf THREADS
      Prompt processing (512 tokens) and decoding (batch 1, 128 tokens), tokens/s, as JSON.

The Rust test crates/gramrr-model/tests/gguf_peers.rs compares gramrr with the JSON files.
"""
import json, sys, time, ctypes

TEXTS = [
    "Hello world, the quick brown fox jumps over the lazy dog.",
    "  numbers 12345 and 3.14159,   spaces\nnew lines\n\n\ttabs",
    "Ünïcödé café — naïve 🦀 日本語のテキスト",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "def f(x):\n    return x ** 2  # square\n",
]
PROMPTS = [
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "The capital of France is",
    "Once upon a time, there was a little robot who",
    "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
]
SCORED = [
    ("The capital of France is", " Paris. It is known for the Eiffel Tower and the Louvre."),
    ("<|im_start|>user\nWhich answer is better, A or B?<|im_end|>\n<|im_start|>assistant\n",
     "Answer A is better because it is correct and concise."),
    # Long enough (over 100 tokens) that gramrr scores it on the many-row path (the GEMM on
    # dequantized weights), not the decoding kernels the two above take.
    ("<|im_start|>system\nYou are a careful judge of answers.<|im_end|>\n<|im_start|>user\n"
     "Question: A train leaves at 3 pm and travels 120 km at 60 km per hour. When does it arrive?\n"
     "Answer A: It arrives at 5 pm, since 120 km at 60 km per hour takes two hours.\n"
     "Answer B: It arrives at 4 pm.\nWhich answer is better?<|im_end|>\n<|im_start|>assistant\n",
     "Answer A is better: the trip takes 120 / 60 = 2 hours, so the train arrives at 5 pm, and A explains why."),
]


def load(path, n_ctx=1024, threads=2):
    from llama_cpp import Llama
    return Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, n_batch=512,
                 logits_all=True, verbose=False)


def tok(llm, text):
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)


def log_softmax(row):
    import numpy as np
    row = np.asarray(row, dtype=np.float64)
    m = row.max()
    return row - (m + np.log(np.exp(row - m).sum()))


def reference(path, out):
    import numpy as np
    llm = load(path)
    res = {"file": path, "texts": [], "greedy": [], "scored": []}
    for t in TEXTS:
        res["texts"].append({"text": t, "ids": tok(llm, t)})
    for p in PROMPTS:
        ids = tok(llm, p)
        llm.reset()
        llm.eval(ids)
        gen, gaps = [], []
        for _ in range(32):
            logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
            top2 = np.sort(logits)[-2:]
            nxt = int(logits.argmax())
            gen.append(nxt)
            gaps.append(float(top2[1] - top2[0]))
            llm.eval([nxt])
        res["greedy"].append({"prompt": p, "prompt_ids": ids, "ids": gen, "top2_gaps": gaps})
    for p, c in SCORED:
        pi, ci = tok(llm, p), tok(llm, c)
        llm.reset()
        llm.eval(pi + ci)
        lps = [float(log_softmax(llm.scores[len(pi) + j - 1])[t]) for j, t in enumerate(ci)]
        res["scored"].append({"prompt": p, "completion": c, "prompt_ids": pi, "completion_ids": ci, "token_logprobs": lps})
    with open(out, "w") as f:
        json.dump(res, f)
    print(f"wrote {out}")


def direct(path):
    import numpy as np
    import llama_cpp
    req = json.load(sys.stdin)
    llm = load(path, n_ctx=2048)
    out = {"texts": [tok(llm, t) for t in req.get("texts", [])], "greedy": [], "score": [], "next": []}
    for g in req.get("greedy", []):
        llm.reset()
        llm.eval(g["ids"])
        gen, finish = [], "length"
        for _ in range(g["max_tokens"]):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            if llama_cpp.llama_vocab_is_eog(llm._model.vocab, nxt):
                finish = "stop"
                break
            gen.append(nxt)
            llm.eval([nxt])
        out["greedy"].append({"ids": gen, "finish": finish, "text": llm.detokenize(gen, prev_tokens=g["ids"]).decode("utf-8", errors="ignore")})
    for s in req.get("score", []):
        ids, start = s["ids"], s["from"]
        # Two batchings of the same tokens: the whole sequence in one pass, and the prompt then
        # one token per pass (as a server scores token by token). llama.cpp's kernels differ
        # by batch size, so these differ a little: llama.cpp's own spread.
        llm.reset()
        llm.eval(ids)
        whole = [float(log_softmax(llm.scores[j - 1])[ids[j]]) for j in range(start, len(ids))]
        llm.reset()
        llm.eval(ids[:start])
        stepwise = []
        for j in range(start, len(ids)):
            stepwise.append(float(log_softmax(llm.scores[j - 1])[ids[j]]))
            llm.eval([ids[j]])
        out["score"].append({"whole": whole, "stepwise": stepwise})
    for n in req.get("next", []):
        ids = n["ids"] if "ids" in n else tok(llm, n["text"])
        llm.reset()
        llm.eval(ids)
        row = log_softmax(llm.scores[len(ids) - 1])
        out["next"].append([float(row[c]) for c in n["cands"]])
    json.dump(out, sys.stdout)


def quantize(src, dst, kind):
    import llama_cpp
    ftype = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}[kind]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    if rc != 0:
        sys.exit(f"llama_model_quantize failed ({rc})")
    print(f"wrote {dst}")


def bench(path, threads):
    threads = int(threads)
    llm = load(path, n_ctx=1024, threads=threads)
    vocab = llm.n_vocab()
    prompt = [(i * 2654435761 + 97) % (vocab - 8) + 4 for i in range(512)]
    out = {"file": path, "threads": threads}
    best = 1e9
    for _ in range(3):
        llm.reset()
        t = time.perf_counter()
        llm.eval(prompt)
        best = min(best, time.perf_counter() - t)
    out["prompt_512_tokens_per_second"] = 512 / best
    best = 1e9
    for _ in range(2):
        llm.reset()
        llm.eval(prompt[:128])
        t = time.perf_counter()
        for i in range(128):
            llm.eval([prompt[i]])
        best = min(best, time.perf_counter() - t)
    out["decode_batch1_tokens_per_second"] = 128 / best
    print(json.dumps(out))


if __name__ == "__main__":
    cmd = sys.argv[1]
    {"reference": reference, "quantize": quantize, "bench": bench, "direct": direct}[cmd](*sys.argv[2:])
