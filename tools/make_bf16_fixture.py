#!/usr/bin/env python3
"""Make crates/gramrr-model/tests/fixtures/expected/bf16.safetensors: transformers' logits for the
parity fixtures' cases in two bf16 flavours, for `--dtype bf16` (tests/bf16.rs).

    python3 tools/make_bf16_fixture.py

For each model in tests/fixtures/models and each case of expected/<model>.json (same token ids):
- `<model>/case<k>/emulated`: float32 compute on the weights rounded to bf16, with the input of
  every nn.Linear (q/k/v/o, gate/up/down, lm_head) rounded to bf16 first and the product summed
  in f32: what gramrr's bf16 kernels compute, written in torch.
- `<model>/case<k>/torch_bf16`: the model loaded with dtype=torch.bfloat16 (everything in bf16:
  activations, norms, residual stream), as `from_pretrained(..., dtype=torch.bfloat16)` runs it.
- `<model>/case<k>/f32`: float32 compute on the bf16-rounded weights (the reference both are
  measured against).
Eager attention, one thread, no randomness: every run writes the same tensors (the metadata's
key order may differ).
"""
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import transformers
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "crates" / "gramrr-model" / "tests" / "fixtures"
MODELS = ["llama-gqa-rope3-tied", "llama-untied", "qwen2-bias", "qwen3-qknorm", "qwen3-bf16"]

torch.set_num_threads(1)
transformers.logging.set_verbosity_error()


def load(d, dtype):
    m = AutoModelForCausalLM.from_pretrained(str(d), dtype=dtype, attn_implementation="eager")
    m.eval()
    return m


def rounded_f32(d):
    m = load(d, torch.float32)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
    return m


def bf16_linear_inputs(model):
    """Rounds every nn.Linear's input to bf16; the product stays an f32 GEMM."""
    for mod in model.modules():
        if isinstance(mod, torch.nn.Linear):
            mod.forward = (lambda lin: lambda x: F.linear(x.to(torch.bfloat16).to(torch.float32), lin.weight, lin.bias))(mod)
    return model


@torch.no_grad()
def logits(model, ids):
    return model(input_ids=torch.tensor([ids])).logits[0].to(torch.float32).contiguous()


def main():
    out = {}
    for name in MODELS:
        d = FIX / "models" / name
        exp = json.loads((FIX / "expected" / f"{name}.json").read_text())
        f32 = rounded_f32(d)
        emu = bf16_linear_inputs(rounded_f32(d))
        bf = load(d, torch.bfloat16)
        for k, case in enumerate(exp["cases"]):
            ids = case["prompt_ids"] + case["completion_ids"]
            out[f"{name}/case{k}/f32"] = logits(f32, ids)
            out[f"{name}/case{k}/emulated"] = logits(emu, ids)
            out[f"{name}/case{k}/torch_bf16"] = logits(bf, ids)
            e = (out[f"{name}/case{k}/emulated"] - out[f"{name}/case{k}/f32"]).abs().max().item()
            b = (out[f"{name}/case{k}/torch_bf16"] - out[f"{name}/case{k}/f32"]).abs().max().item()
            print(f"{name} case{k}: max |emulated - f32| {e:.3g}, max |torch bf16 - f32| {b:.3g}")
    save_file(out, str(FIX / "expected" / "bf16.safetensors"),
              metadata={"generated_by": "tools/make_bf16_fixture.py", "torch": torch.__version__,
                        "transformers": transformers.__version__})


if __name__ == "__main__":
    main()
