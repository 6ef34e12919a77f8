#!/usr/bin/env python3
"""Train one gramrr pipeline stage with TRL, honouring gramrr's loss weights and batch order.

    python3 tools/trl_sft.py --data DATA_DIR --model BASE_DIR --out OUT_DIR
    accelerate launch --config_file tools/accelerate/zero2.yaml tools/trl_sft.py --data ... --model ... --out ...

DATA_DIR is what gramrr wrote for the stage (`gramrr export-sft`, or STAGE_DIR/train/data when
the pipeline runs the command itself): tokens.jsonl, schedule.json and train_config.json. In a
pipeline config:

    [reward_model.train]
    backend = "command"
    command = "python3 tools/trl_sft.py --data {data} --model {model} --out {out}"

What it keeps from gramrr's trainer, and stock TRL does not:
  * per-token loss weights (`decision_weight` on the label and verdict tokens, weighted
    segments): loss = sum(weight * NLL) / sum(weight) over the whole optimizer step, through a
    `compute_loss` override;
  * the micro-batches of every optimizer step, in gramrr's order (schedule.json), instead of
    TRL's sampler; a step with fewer micro-batches than gradient_accumulation_steps (the end of
    an epoch) is filled with zero-weight micro-batches, which change nothing;
  * weight decay on tensors of two or more dimensions only; f32 AdamW; the same warm-up and
    schedule (transformers' own, which gramrr's follows).
With N processes (accelerate, DeepSpeed ZeRO-2, FSDP) each step's micro-batches are dealt
round-robin over the ranks and each rank's loss is multiplied by N, so the averaged gradient is
the single-process one.

Writes OUT_DIR: an HF checkpoint (full fine-tuning) or a PEFT adapter (LoRA), and
gramrr_losses.json (the loss of every optimizer step).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="the stage's exported data directory")
    ap.add_argument("--model", required=True, type=Path, help="the stage's starting model (HF checkpoint)")
    ap.add_argument("--out", required=True, type=Path, help="where to write the checkpoint or adapter")
    ap.add_argument("--config", type=Path, help="train_config.json (default: DATA/train_config.json)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cfg = json.loads((args.config or args.data / "train_config.json").read_text())
    rows = [json.loads(l) for l in (args.data / "tokens.jsonl").read_text().splitlines() if l.strip()]
    steps = json.loads((args.data / "schedule.json").read_text())["steps"]
    if not steps:
        sys.exit(f"{args.data / 'schedule.json'}: no optimizer steps")
    for i, r in enumerate(rows):
        if len(r["input_ids"]) != len(r["weights"]):
            sys.exit(f"{args.data / 'tokens.jsonl'}:{i + 1}: input_ids and weights differ in length")

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    accum = cfg["gradient_accumulation_steps"]
    per_rank = math.ceil(accum / world)

    # gramrr's stage seeds are 64-bit; numpy (seeded by transformers) takes 32.
    seed = cfg["seed"] % 2**32
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    pad_id = model.config.pad_token_id
    if pad_id is None:
        pad_id = model.config.eos_token_id if isinstance(model.config.eos_token_id, int) else 0
    if cfg.get("lora"):
        from peft import LoraConfig, get_peft_model

        l = cfg["lora"]
        model = get_peft_model(
            model,
            LoraConfig(r=l["r"], lora_alpha=l["lora_alpha"], lora_dropout=l["lora_dropout"], target_modules=l["target_modules"], task_type="CAUSAL_LM"),
        )

    def micro_batch(indices: list[int], norm: float) -> dict:
        """Right-padded rows; `weights[r, t]` weighs the prediction of token t+1 of row r."""
        filler = not indices
        idx = indices or [0]
        width = max(len(rows[i]["input_ids"]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        w = torch.zeros((len(idx), width - 1), dtype=torch.float32)
        for r, i in enumerate(idx):
            x = rows[i]
            n = len(x["input_ids"])
            ids[r, :n] = torch.tensor(x["input_ids"])
            mask[r, :n] = 1
            if not filler:
                w[r, : n - 1] = torch.tensor(x["weights"][1:], dtype=torch.float32)
        # The step's normaliser times the process count: DDP/ZeRO/FSDP average the gradients.
        return {"input_ids": ids, "attention_mask": mask, "gramrr_weights": w, "gramrr_norm": torch.tensor(norm / world)}

    batches = []
    for step in steps:
        norm = sum(sum(rows[i]["weights"][1:]) for mb in step for i in mb)
        mine = [mb for j, mb in enumerate(step) if j % world == rank]
        mine += [[]] * (per_rank - len(mine))
        batches.extend(micro_batch(mb, norm) for mb in mine)

    class WeightedSFTTrainer(SFTTrainer):
        """gramrr's loss and batch order on TRL's trainer."""

        step_loss = 0.0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            w = inputs.pop("gramrr_weights")
            norm = inputs.pop("gramrr_norm")
            out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
            logp = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)
            nll = -logp.gather(-1, inputs["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1)
            loss = (nll * w).sum() / norm
            self.step_loss += float(loss.detach()) / world
            return (loss, out) if return_outputs else loss

        def get_train_dataloader(self):
            # Already ordered, batched and dealt to this rank: no sampler, no sharding.
            return torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, collate_fn=lambda b: b)

        def create_optimizer(self, model=None):
            params = [p for p in self.model.parameters() if p.requires_grad]
            groups = [
                {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg["weight_decay"]},
                {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
            ]
            self.optimizer = torch.optim.AdamW(
                [g for g in groups if g["params"]], lr=cfg["learning_rate"], betas=(cfg["adam_beta1"], cfg["adam_beta2"]), eps=cfg["adam_epsilon"], foreach=False
            )
            return self.optimizer

    losses: list[float] = []

    class RecordLoss(TrainerCallback):
        def on_step_end(self, args_, state, control, **kw):
            # Each rank holds its micro-batches' share of the step's loss.
            total = torch.tensor(trainer.step_loss, dtype=torch.float64, device=trainer.args.device)
            if world > 1 and torch.distributed.is_initialized():
                torch.distributed.all_reduce(total)
            losses.append(float(total))
            trainer.step_loss = 0.0
            if rank == 0:
                print(f"step {state.global_step}/{len(steps)} loss {losses[-1]:.6f}", flush=True)

    sft_args = SFTConfig(
        output_dir=str(args.out),
        max_steps=len(steps),
        per_device_train_batch_size=cfg["per_device_train_batch_size"],
        gradient_accumulation_steps=per_rank,
        learning_rate=cfg["learning_rate"],
        lr_scheduler_type=cfg["lr_scheduler_type"],
        warmup_steps=cfg["warmup_steps"],
        weight_decay=cfg["weight_decay"],
        adam_beta1=cfg["adam_beta1"],
        adam_beta2=cfg["adam_beta2"],
        adam_epsilon=cfg["adam_epsilon"],
        max_grad_norm=cfg["max_grad_norm"],
        seed=seed,
        data_seed=seed,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        bf16=False,
        fp16=False,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    placeholder = Dataset.from_dict({"input_ids": [r["input_ids"] for r in rows]})
    trainer = WeightedSFTTrainer(model=model, args=sft_args, train_dataset=placeholder)
    trainer.loss_is_scaled_for_ga = True  # compute_loss already divides by the step's weight sum
    trainer.add_callback(RecordLoss())
    trainer.train()
    if rank == 0:
        args.out.mkdir(parents=True, exist_ok=True)
        trainer.save_model(str(args.out))
        (args.out / "gramrr_losses.json").write_text(json.dumps({"losses": losses}))
        print(f"wrote {args.out} ({'PEFT adapter' if cfg.get('lora') else 'HF checkpoint'}), {len(losses)} steps, final loss {losses[-1]:.6f}")


if __name__ == "__main__":
    main()
