#!/usr/bin/env python3
"""transformers' dequantized f32 load of a GGUF as a reference for gramrr's `--dequantize` load.

  python3 tools/gguf_transformers.py FILE.gguf OUT.json

transformers (with the `gguf` package) reads the file's config, tokenizer and tensors and
dequantizes every tensor to f32: AutoModelForCausalLM.from_pretrained(dir, gguf_file=name).
For each (prompt, completion) of SCORED it writes the token ids (prompt and completion
tokenized apart, no special tokens added: SmolLM2's GGUF adds no BOS) and the completion's
per-token log-probs (log_softmax of the f32 logits, in f64), plus 16 greedy tokens after each
prompt with the top-2 logit gap at each step.

crates/gramrr-model/tests/gguf_transformers.rs runs this and compares gramrr with it.
"""
import json, os, sys

SCORED = [
    ("The capital of France is", " Paris. It is known for the Eiffel Tower and the Louvre."),
    ("<|im_start|>user\nWhich answer is better, A or B?<|im_end|>\n<|im_start|>assistant\n",
     "Answer A is better because it is correct and concise."),
    ("def f(x):\n", "    return x ** 2  # square\n"),
    ("Ünïcödé café — naïve", " 🦀 日本語のテキスト"),
]


def main(path, out):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    d, name = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32).eval()
    res = {"file": os.path.abspath(path), "transformers": __import__("transformers").__version__,
           "dtype": str(next(model.parameters()).dtype), "scored": []}
    with torch.no_grad():
        for p, c in SCORED:
            pi = tok(p, add_special_tokens=False)["input_ids"]
            ci = tok(c, add_special_tokens=False)["input_ids"]
            logits = model(torch.tensor([pi + ci])).logits[0].double()
            lp = torch.log_softmax(logits, dim=-1)
            token_lp = [float(lp[len(pi) + j - 1, t]) for j, t in enumerate(ci)]
            ids, gen, gaps = list(pi), [], []
            for _ in range(16):
                row = model(torch.tensor([ids])).logits[0, -1].double()
                top2 = torch.topk(row, 2).values
                nxt = int(row.argmax())
                gen.append(nxt)
                gaps.append(float(top2[0] - top2[1]))
                ids.append(nxt)
            res["scored"].append({"prompt": p, "completion": c, "prompt_ids": pi, "completion_ids": ci,
                                  "token_logprobs": token_lp, "greedy": gen, "top2_gaps": gaps})
    with open(out, "w") as f:
        json.dump(res, f)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
