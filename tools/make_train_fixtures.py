#!/usr/bin/env python3
"""Make the training parity fixtures in crates/gramrr-train/tests/fixtures/.

    python3 tools/make_train_fixtures.py

A fresh tiny Qwen3 model (with the Qwen3-style tokenizer of make_model_fixtures.py) is trained
for 4 optimizer steps by a hand-written torch loop whose semantics the Rust trainer follows
exactly (see the README.md written next to the fixtures): full fine-tuning on sft.jsonl,
the same on sft_weighted.jsonl (per-segment loss weights), and LoRA with PEFT; plus a
restricted-label cross-entropy with label smoothing. Deterministic: fixed seeds, one thread.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_model_fixtures as mm  # noqa: E402  (tokenizer builder, weight init, helpers)

import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, Qwen3Config, Qwen3ForCausalLM  # noqa: E402
from transformers import get_cosine_schedule_with_warmup  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
import peft  # noqa: E402

OUT = mm.ROOT / "crates" / "gramrr-train" / "tests" / "fixtures"
torch.set_num_threads(1)
warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation notices from transformers/peft

# ---------------------------------------------------------------------------------------------
# Hyper-parameters (recorded in every JSON file)
# ---------------------------------------------------------------------------------------------
HP = dict(
    micro_batch_size=2,
    grad_accum=2,
    epochs=2,  # 8 examples / (2 x 2) = 2 optimizer steps per epoch -> 4 steps in all
    total_steps=4,
    lr=1e-2,
    lr_schedule="cosine",
    warmup_ratio=0.25,
    warmup_steps=math.ceil(0.25 * 4),
    betas=[0.9, 0.999],
    eps=1e-8,
    weight_decay=0.1,
    max_grad_norm=1.0,
    padding_side="right",
)
MODEL_SEED = 2024
LORA_SEED = 77
LORA = dict(r=4, lora_alpha=8, lora_dropout=0.0, bias="none",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
LORA_B_STD = 0.02
LABEL_SMOOTHING = 0.1

SFT = [
    {"prompt": "Question: what is 7 + 8?\nAnswer:", "completion": " 15."},
    {"prompt": "Which response is better? Response A or Response B?", "completion": " Response B, because it explains every step."},
    {"prompt": "Say hello.", "completion": " Hello! How are you today?"},
    {"prompt": "The final answer is", "completion": " A"},
    {"prompt": "There are 12 apples and 7 oranges. How many fruits are there?", "completion": " 12 + 7 = 19 fruits."},
    {"prompt": "Translate \"café\" to English:", "completion": " coffee"},
    {"prompt": "List two colours:\n", "completion": "- red\n- blue\n"},
    {"prompt": "Verdict:", "completion": " B"},
]

SFT_WEIGHTED = [
    {"prompt": "Answer A: 42\nAnswer B: 420\nWhich is better?",
     "completion": [{"text": " Both are numbers, but only 42 is correct.", "weight": 1.0}, {"text": " A", "weight": 10.0}]},
    {"prompt": "Which response is better? Response A or Response B?",
     "completion": [{"text": " Response B explains every step.", "weight": 1.0}, {"text": " B", "weight": 10.0}]},
    {"prompt": "Judge the two answers.",
     "completion": [{"text": "\nReasoning:", "weight": 0.0}, {"text": " the first one is shorter and clearer.", "weight": 0.5},
                    {"text": "\nVerdict:", "weight": 0.0}, {"text": " A", "weight": 10.0}]},
    {"prompt": "Verdict:", "completion": [{"text": " B", "weight": 10.0}]},
    {"prompt": "Question: what is 9 * 9?",
     "completion": [{"text": " 9 * 9 = 81.", "weight": 2.0}, {"text": " The answer is", "weight": 1.0}, {"text": " 81", "weight": 3.0}]},
    {"prompt": "Is \"déjà vu\" French?", "completion": [{"text": " Yes, it is French.", "weight": 1.0}]},
    {"prompt": "Pick one: A or B.", "completion": [{"text": " I pick", "weight": 0.25}, {"text": " A", "weight": 10.0}]},
    {"prompt": "Hello", "completion": [{"text": " world", "weight": 1.5}]},
]

LABEL_CASES = [
    {"prompt": "Which response is better? Response A or Response B? The answer is", "label": " A"},
    {"prompt": "Summary: the second answer is better.\nFinal verdict:", "label": " B"},
]
LABELS = [" A", " B"]


# ---------------------------------------------------------------------------------------------
def write_json(path: Path, obj, indent: int = 1) -> None:
    path.write_text(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def f32list(t: torch.Tensor) -> list[float]:
    return [float(x) for x in t.detach().to(torch.float32).reshape(-1).tolist()]


def encode_example(tok, row) -> dict:
    """prompt: add_special_tokens=True; each completion segment encoded separately without
    special tokens; then the tokenizer's EOS (weight 1). Prompt tokens have weight 0."""
    prompt_ids = tok(row["prompt"], add_special_tokens=True).input_ids
    segments = row["completion"]
    if isinstance(segments, str):
        segments = [{"text": segments, "weight": 1.0}]
    ids, weights = list(prompt_ids), [0.0] * len(prompt_ids)
    for seg in segments:
        seg_ids = tok(seg["text"], add_special_tokens=False).input_ids
        ids += seg_ids
        weights += [float(seg["weight"])] * len(seg_ids)
    ids.append(tok.eos_token_id)
    weights.append(1.0)
    return dict(input_ids=ids, weights=weights, prompt_len=len(prompt_ids))


def make_batch(examples, pad_id: int):
    """Right padding; attention_mask 0 on padding; position ids 0..len-1."""
    L = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), L), pad_id, dtype=torch.long)
    w = torch.zeros((len(examples), L), dtype=torch.float32)
    mask = torch.zeros((len(examples), L), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        w[i, :n] = torch.tensor(e["weights"])
        mask[i, :n] = 1
    pos = torch.arange(L).unsqueeze(0).expand(len(examples), L).contiguous()
    return ids, mask, pos, w


def weighted_nll_sum(model, ids, mask, pos, w) -> torch.Tensor:
    """sum over positions t of w[t+1] * -log p(ids[t+1] | ids[..=t]) (logits at t predict t+1)."""
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    V = logits.shape[-1]
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, V).float(), ids[:, 1:].reshape(-1), reduction="none")
    return (nll * w[:, 1:].reshape(-1)).sum()


def schedule_of_micro_batches(n_examples: int):
    mb, acc = HP["micro_batch_size"], HP["grad_accum"]
    per_epoch = [list(range(i, min(i + mb, n_examples))) for i in range(0, n_examples, mb)]
    assert len(per_epoch) % acc == 0
    all_mbs = per_epoch * HP["epochs"]
    steps = [all_mbs[s * acc:(s + 1) * acc] for s in range(len(all_mbs) // acc)]
    assert len(steps) == HP["total_steps"]
    return steps


def train(model, named_params, examples, pad_id: int, grads0_names: bool = False):
    """The reference loop. Returns (per-step records, initial grads or None)."""
    decay = [p for _, p in named_params if p.ndim >= 2]
    no_decay = [p for _, p in named_params if p.ndim < 2]
    params = [p for _, p in named_params]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": HP["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=HP["lr"], betas=tuple(HP["betas"]), eps=HP["eps"], foreach=False)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=HP["warmup_steps"], num_training_steps=HP["total_steps"])
    records, grads0 = [], None
    for step, mbs in enumerate(schedule_of_micro_batches(len(examples))):
        # normalise by the weight of ALL target tokens of this optimizer step
        weight_sum = sum(sum(examples[i]["weights"][1:]) for mb in mbs for i in mb)
        opt.zero_grad(set_to_none=True)
        loss_total = 0.0
        for mb in mbs:
            ids, mask, pos, w = make_batch([examples[i] for i in mb], pad_id)
            loss = weighted_nll_sum(model, ids, mask, pos, w) / weight_sum
            loss.backward()
            loss_total += loss.item()
        if step == 0 and grads0_names:
            grads0 = {n: p.grad.detach().clone().contiguous() for n, p in named_params}
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, HP["max_grad_norm"]))
        lr = opt.param_groups[0]["lr"]
        expected_lr = HP["lr"] * lr_lambda(step)
        assert abs(lr - expected_lr) <= 1e-12 * HP["lr"], (lr, expected_lr)
        opt.step()
        sched.step()
        records.append(dict(step=step, loss=loss_total, grad_norm=grad_norm, lr=lr, clipped=grad_norm > HP["max_grad_norm"],
                            micro_batches=mbs, target_weight_sum=weight_sum))
    return records, grads0


def lr_lambda(step: int) -> float:
    w, total = HP["warmup_steps"], HP["total_steps"]
    if step < w:
        return step / max(1, w)
    progress = (step - w) / max(1, total - w)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))


def load_base(d: Path):
    model = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32, attn_implementation="eager")
    model.train()  # no dropout anywhere (attention_dropout 0.0); train() vs eval() makes no difference
    return model


def hf_named_params(model):
    # named_parameters lists a tied tensor once, under model.embed_tokens.weight
    return [(n, p) for n, p in model.named_parameters()]


def state_of(named_params) -> dict:
    return {n: p.detach().clone().contiguous() for n, p in named_params}


# ---------------------------------------------------------------------------------------------
def build_base(tok) -> Path:
    d = OUT / "train-base"
    qwen_tok_len = len(tok)
    eot, im_end = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|im_end|>")
    cfg = Qwen3Config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, vocab_size=mm.QWEN_MODEL_VOCAB, max_position_embeddings=512, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=True,
        use_sliding_window=False, max_window_layers=2, attention_bias=False, attention_dropout=0.0,
        bos_token_id=eot, eos_token_id=im_end, pad_token_id=eot, hidden_act="silu")
    cfg._attn_implementation = "eager"
    model = Qwen3ForCausalLM(cfg)
    mm.scale_init(model, MODEL_SEED, mat_std=0.1, emb_std=0.3, norm_noise=0.1, qk_norm_noise=0.3,
                  real_vocab=qwen_tok_len)
    model.save_pretrained(str(d))
    GenerationConfig(bos_token_id=eot, eos_token_id=[im_end, eot], pad_token_id=eot).save_pretrained(str(d))
    mm.save_tokenizer(tok, "qwen3", d)
    mm.check_tokenizer(d, "qwen3")
    return d


def full_run(base_dir: Path, tok, data_file: str, grads: bool):
    examples = [encode_example(tok, r) for r in read_jsonl(OUT / data_file)]
    model = load_base(base_dir)
    named = hf_named_params(model)
    records, grads0 = train(model, named, examples, tok.pad_token_id, grads0_names=grads)
    return examples, records, grads0, state_of(named)


def lora_run(base_dir: Path, tok):
    examples = [encode_example(tok, r) for r in read_jsonl(OUT / "sft.jsonl")]
    model = load_base(base_dir)
    torch.manual_seed(LORA_SEED)  # lora_A: PEFT's default kaiming-uniform init, from this seed
    cfg = LoraConfig(**LORA, task_type="CAUSAL_LM")
    pm = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(LORA_SEED + 1)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(LORA_B_STD * torch.randn(p.shape, generator=g))
    for n, p in pm.named_parameters():
        assert p.requires_grad == ("lora_" in n), n
    for sub in ("lora_init", "lora_final"):
        if (OUT / sub).exists():
            shutil.rmtree(OUT / sub)
    save_adapter(pm, OUT / "lora_init")
    named = [(n, p) for n, p in pm.named_parameters() if p.requires_grad]
    records, grads0 = train(pm, named, examples, tok.pad_token_id, grads0_names=True)
    for n, gr in grads0.items():
        assert float(gr.abs().max()) > 0, f"no gradient at step 0 for {n}"
    save_adapter(pm, OUT / "lora_final")
    return pm, examples, records


def save_adapter(pm, d: Path) -> None:
    pm.save_pretrained(str(d))
    (d / "README.md").unlink(missing_ok=True)  # PEFT's model-card stub
    p = d / "adapter_config.json"
    cfg = json.loads(p.read_text())
    cfg["base_model_name_or_path"] = "../train-base"  # relative to this adapter directory
    cfg["target_modules"] = sorted(cfg["target_modules"])  # PEFT writes a set: order varies run to run
    write_json(p, dict(sorted(cfg.items())), indent=2)


def label_loss(base_dir: Path, tok):
    model = load_base(base_dir)
    label_ids = []
    for lab in LABELS:
        ids = tok(lab, add_special_tokens=False).input_ids
        assert len(ids) == 1
        label_ids.append(ids[0])
    rows, losses = [], []
    for case in LABEL_CASES:
        ids = tok(case["prompt"], add_special_tokens=True).input_ids
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        two = logits[label_ids]
        logp = torch.log_softmax(two, dim=-1)
        k = LABELS.index(case["label"])
        target = torch.full((len(LABELS),), LABEL_SMOOTHING / len(LABELS))
        target[k] += 1.0 - LABEL_SMOOTHING
        loss = -(target * logp).sum()
        losses.append(loss)
        rows.append(dict(prompt=case["prompt"], prompt_ids=ids, label=case["label"], label_index=k,
                         label_logits=f32list(two), label_logprobs=f32list(logp), target=f32list(target), loss=loss.item()))
    mean = torch.stack(losses).mean()
    mean.backward()
    named = dict(model.named_parameters())
    grads = {n: named[n].grad.detach().clone().contiguous() for n in ("model.embed_tokens.weight", "model.norm.weight")}
    # cross-check against torch's own label-smoothed cross entropy over the restricted logits
    stacked = []
    for case in LABEL_CASES:
        ids = tok(case["prompt"], add_special_tokens=True).input_ids
        with torch.no_grad():
            stacked.append(model(input_ids=torch.tensor([ids])).logits[0, -1, label_ids])
    ref = F.cross_entropy(torch.stack(stacked), torch.tensor([LABELS.index(c["label"]) for c in LABEL_CASES]),
                          label_smoothing=LABEL_SMOOTHING)
    assert abs(ref.item() - mean.item()) < 1e-6, (ref.item(), mean.item())
    info = dict(labels=LABELS, label_ids=label_ids, label_smoothing=LABEL_SMOOTHING, reduction="mean over prompts",
                cases=rows, loss=mean.item(), grads_file="label_loss_grads.safetensors",
                grad_keys=sorted(grads))
    return info, grads


def header(kind: str) -> dict:
    return dict(generated_by="tools/make_train_fixtures.py", kind=kind, base_model="train-base",
                transformers_version=transformers.__version__, torch_version=torch.__version__.split("+")[0],
                peft_version=peft.__version__, dtype="float32", attn_implementation="eager", hyperparameters=HP)


def main() -> None:
    if OUT.exists():
        for child in OUT.iterdir():
            if child.name != "README.md":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    OUT.mkdir(parents=True, exist_ok=True)
    write_jsonl(OUT / "sft.jsonl", SFT)
    write_jsonl(OUT / "sft_weighted.jsonl", SFT_WEIGHTED)
    tok = mm.build_qwen3_tokenizer()
    base_dir = build_base(tok)
    tok = AutoTokenizer.from_pretrained(str(base_dir))
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    base_state = load_file(str(base_dir / "model.safetensors"))

    # 1. full fine-tuning
    examples, records, grads0, final = full_run(base_dir, tok, "sft.jsonl", grads=True)
    save_file(grads0, str(OUT / "full_ft_grads0.safetensors"), metadata={"format": "pt"})
    save_file(final, str(OUT / "full_ft_final.safetensors"), metadata={"format": "pt"})
    assert sorted(final) == sorted(base_state)
    write_json(OUT / "full_ft.json", dict(header("full"), data="sft.jsonl", examples=examples, steps=records,
                                          grads0_file="full_ft_grads0.safetensors", final_file="full_ft_final.safetensors"))

    # 2. weighted segments
    w_examples, w_records, _, w_final = full_run(base_dir, tok, "sft_weighted.jsonl", grads=False)
    save_file(w_final, str(OUT / "weighted_final.safetensors"), metadata={"format": "pt"})
    write_json(OUT / "weighted.json", dict(header("full"), data="sft_weighted.jsonl", examples=w_examples, steps=w_records,
                                           final_file="weighted_final.safetensors"))

    # 3. LoRA
    pm, l_examples, l_records = lora_run(base_dir, tok)
    probe = l_examples[1]["input_ids"]
    with torch.no_grad():
        pm.eval()
        lora_logits = pm(input_ids=torch.tensor([probe])).logits[0]
        merged = pm.merge_and_unload()
        merged_logits = merged(input_ids=torch.tensor([probe])).logits[0]
    assert torch.allclose(lora_logits, merged_logits, atol=1e-4), float((lora_logits - merged_logits).abs().max())
    msd = dict(merged.named_parameters())
    merged_keys = ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"]
    merged_tensors = {k: msd[k].detach().clone().contiguous() for k in merged_keys}
    merged_tensors["logits"] = merged_logits.contiguous()
    save_file(merged_tensors, str(OUT / "lora_merged.safetensors"), metadata={"format": "pt"})
    checksums = {n: dict(sum=float(p.detach().double().sum()), abs_sum=float(p.detach().double().abs().sum()),
                         sq_sum=float(p.detach().double().pow(2).sum()))
                 for n, p in merged.named_parameters()}
    write_json(OUT / "lora.json", dict(
        header("lora"), data="sft.jsonl", lora=dict(LORA, scaling=LORA["lora_alpha"] / LORA["r"], lora_B_init_std=LORA_B_STD),
        examples=l_examples, steps=l_records, init_adapter="lora_init", final_adapter="lora_final",
        merged=dict(file="lora_merged.safetensors", logits_input_ids=probe, tensors=merged_keys,
                    note="merge_and_unload of lora_final into train-base: W + (alpha/r) * B @ A",
                    checksums=checksums)))

    # 4. restricted-label loss with label smoothing
    info, grads = label_loss(base_dir, tok)
    save_file(grads, str(OUT / "label_loss_grads.safetensors"), metadata={"format": "pt"})
    write_json(OUT / "label_loss.json", dict(header("label_loss"), **info))

    verify()
    for name, recs in (("full", records), ("weighted", w_records), ("lora", l_records)):
        print(name, [(r["step"], round(r["loss"], 4), round(r["grad_norm"], 4), r["lr"]) for r in recs])
    print("label loss", info["loss"])


def verify() -> None:
    """Reload the written files and check them against a second, independent pass."""
    tok = AutoTokenizer.from_pretrained(str(OUT / "train-base"))
    for data, js, fin in (("sft.jsonl", "full_ft.json", "full_ft_final.safetensors"),
                          ("sft_weighted.jsonl", "weighted.json", "weighted_final.safetensors")):
        rec = json.loads((OUT / js).read_text())
        examples = [encode_example(tok, r) for r in read_jsonl(OUT / data)]
        assert examples == rec["examples"]
        _, records, _, final = full_run(OUT / "train-base", tok, data, grads=False)
        assert [r["loss"] for r in records] == [r["loss"] for r in rec["steps"]]
        saved = load_file(str(OUT / fin))
        assert all(torch.equal(saved[k], final[k]) for k in final)
    # the final LoRA adapter applied by PEFT to the base reproduces the merged logits
    base = load_base(OUT / "train-base")
    pm = PeftModel.from_pretrained(base, str(OUT / "lora_final"))
    pm.eval()
    lj = json.loads((OUT / "lora.json").read_text())
    with torch.no_grad():
        logits = pm(input_ids=torch.tensor([lj["merged"]["logits_input_ids"]])).logits[0]
    merged = load_file(str(OUT / "lora_merged.safetensors"))
    assert torch.allclose(logits, merged["logits"], atol=1e-4)


if __name__ == "__main__":
    main()
