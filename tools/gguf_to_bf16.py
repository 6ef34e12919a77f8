#!/usr/bin/env python3
"""A GGUF file as a bf16 safetensors checkpoint (HF layout, with tokenizer), through transformers.

    python3 tools/gguf_to_bf16.py FILE.gguf OUT_DIR

transformers reads the file (config, tokenizer, tensors dequantized to f32, llama.cpp's q/k row
permutation undone) and the weights are written rounded to bf16. tools/bench_bf16.sh uses it
so that gramrr and transformers load the very same bf16 weights.
"""
import sys, torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
path, out = sys.argv[1], sys.argv[2]
import os
d, name = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
m = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True))
cfg = m.config
if hasattr(cfg, "quantization_config"):
    del cfg.quantization_config
cfg.dtype = torch.bfloat16
fresh = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
missing = fresh.load_state_dict({k: v.to(torch.bfloat16) for k, v in m.state_dict().items()}, strict=True)
fresh.save_pretrained(out)
tok.save_pretrained(out)
print(sorted(os.listdir(out)))
