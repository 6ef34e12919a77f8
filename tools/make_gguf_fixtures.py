#!/usr/bin/env python3
"""Writes GGUF copies of the tiny test models with the `gguf` Python package (llama.cpp's own
writer), the way llama.cpp's convert_hf_to_gguf.py does: Llama's q/k rows permuted for its
interleaved RoPE, Llama 3.1 frequency scaling as a `rope_freqs.weight` tensor, 1-D tensors in
f32, the byte-level BPE tokenizer in `tokenizer.ggml.*`, the chat template.

  python3 tools/make_gguf_fixtures.py [OUT_DIR]   (default crates/gramrr-model/tests/fixtures/gguf)

Needs `pip install gguf safetensors numpy`. The outputs are committed (a few hundred KB), so
the Rust tests that read them need no Python.
"""
import json, math, os, sys
from pathlib import Path

import numpy as np
import gguf
from gguf.quants import quantize
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "crates/gramrr-model/tests/fixtures/models"
# (model, tensor type) pairs: f16 checks the layout exactly, q8_0 the quantized path.
FIXTURES = [
    ("llama-gqa-rope3-tied", "F16"),
    ("llama-gqa-rope3-tied", "Q8_0"),
    ("qwen2-bias", "Q8_0"),
    ("qwen3-qknorm", "Q8_0"),
]
FILE_TYPE = {"F32": 0, "F16": 1, "Q8_0": 7}


def load_weights(d: Path):
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return {k: v.astype(np.float32) for k, v in out.items()}


def permute(w, n_head):
    # convert_hf_to_gguf.py LlamaModel.permute
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf):
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if hf in fixed:
        return fixed[hf]
    parts = hf.split(".")
    layer, module, param = parts[2], ".".join(parts[3:-1]), parts[-1]
    m = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
         "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
         "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate",
         "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}[module]
    return f"blk.{layer}.{m}.{param}"


def write(model: str, ttype: str, out_dir: Path):
    d = MODELS / model
    cfg = json.loads((d / "config.json").read_text())
    tok = json.loads((d / "tokenizer.json").read_text())
    tok_cfg = json.loads((d / "tokenizer_config.json").read_text()) if (d / "tokenizer_config.json").exists() else {}
    arch = cfg["model_type"]
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    theta = cfg.get("rope_theta") or rope.get("rope_theta", 10000.0)
    path = out_dir / f"{model}.{ttype.lower()}.gguf"
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(model)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(theta))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(FILE_TYPE[ttype])

    # Tokenizer: ids in order, padded to vocab_size as the converter does.
    vocab = dict(tok["model"]["vocab"])
    added = {t["id"]: t for t in tok["added_tokens"]}
    for t in added.values():
        vocab[t["content"]] = t["id"]
    by_id = {i: s for s, i in vocab.items()}
    tokens, types = [], []
    for i in range(cfg["vocab_size"]):
        if i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if i in added and added[i]["special"]
                         else gguf.TokenType.USER_DEFINED if i in added else gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe" if arch == "llama" else "qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    def tid(key):
        v = tok_cfg.get(key)
        v = v.get("content") if isinstance(v, dict) else v
        return vocab.get(v) if v is not None else None
    if cfg.get("bos_token_id") is not None:
        w.add_bos_token_id(cfg["bos_token_id"])
    eos = cfg.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) else eos
    if tid("eos_token") is not None:
        eos = tid("eos_token")
    if eos is not None:
        w.add_eos_token_id(eos)
    if cfg.get("pad_token_id") is not None:
        w.add_pad_token_id(cfg["pad_token_id"])
    w.add_add_bos_token("TemplateProcessing" in json.dumps(tok.get("post_processor")))
    template = None
    if (d / "chat_template.jinja").exists():
        template = (d / "chat_template.jinja").read_text()
    elif isinstance(tok_cfg.get("chat_template"), str):
        template = tok_cfg["chat_template"]
    if template:
        w.add_chat_template(template)

    weights = load_weights(d)
    if arch == "llama" and rope.get("rope_type") == "llama3":
        # convert_hf_to_gguf.py LlamaModel.generate_extra_tensors
        freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
        factor, lo, hi = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
        old = rope["original_max_position_embeddings"]
        lo_wl, hi_wl = old / lo, old / hi
        factors = []
        for f in freqs:
            wl = 2 * math.pi / f
            if wl < hi_wl:
                factors.append(1)
            elif wl > lo_wl:
                factors.append(factor)
            else:
                smooth = (old / wl - lo) / (hi - lo)
                factors.append(1 / ((1 - smooth) / factor + smooth))
        w.add_tensor("rope_freqs.weight", np.array(factors, dtype=np.float32))
    for name, t in weights.items():
        if cfg.get("tie_word_embeddings") and name == "lm_head.weight":
            continue
        if arch == "llama" and name.endswith("q_proj.weight"):
            t = permute(t, heads)
        if arch == "llama" and name.endswith("k_proj.weight"):
            t = permute(t, kv)
        g = gguf_name(name)
        if t.ndim == 1 or ttype == "F32":
            w.add_tensor(g, t.astype(np.float32))
        elif ttype == "F16":
            w.add_tensor(g, t.astype(np.float16))
        else:
            qt = gguf.GGMLQuantizationType[ttype]
            w.add_tensor(g, quantize(t, qt), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"{path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "crates/gramrr-model/tests/fixtures/gguf"
    out.mkdir(parents=True, exist_ok=True)
    for model, ttype in FIXTURES:
        write(model, ttype, out)
