"""TRL's own GRPO loss on fixed inputs, for gramrr-train's parity test.

Runs `trl.GRPOTrainer._compute_loss` (TRL's code, not a copy of its formula) with the model's
per-token log-probs replaced by a leaf tensor, and records the loss, its gradient with respect
to each log-prob, the KL and the clip ratios TRL logs, for loss types "grpo" (per-sequence
mean, then mean over sequences) and "bnpo" (mean over all tokens).

    python3 tools/make_grpo_fixture.py   # writes crates/gramrr-train/tests/fixtures/grpo_trl.json
"""

import json
import types
from collections import defaultdict
from pathlib import Path

import torch
import trl
from trl import GRPOTrainer

OUT = Path(__file__).resolve().parent.parent / "crates/gramrr-train/tests/fixtures/grpo_trl.json"


def trl_loss(logp, old, ref, adv, mask, loss_type, eps_low, eps_high, beta):
    logp = logp.clone().requires_grad_(True)
    ident = lambda x, **_: x
    stub = types.SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None),
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level="token",
        beta=beta,
        args=types.SimpleNamespace(use_bias_correction_kl=False, delta=None),
        loss_type=loss_type,
        epsilon_low=eps_low,
        epsilon_high=eps_high,
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        model=types.SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        _entropy_bonus_enabled=False,
        aux_loss_enabled=False,
        _metrics=defaultdict(lambda: defaultdict(list)),
        accelerator=types.SimpleNamespace(reduce=ident, gather=ident, gather_for_metrics=ident, num_processes=1),
    )
    b, t = logp.shape
    inputs = {
        "prompt_ids": torch.zeros(b, 2, dtype=torch.long),
        "prompt_mask": torch.ones(b, 2, dtype=torch.long),
        "completion_ids": torch.zeros(b, t, dtype=torch.long),
        "completion_mask": mask.long(),
        "advantages": adv,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
    }
    loss = GRPOTrainer._compute_loss(stub, None, inputs)
    loss.backward()
    m = stub._metrics["train"]
    return {
        "loss": loss.item(),
        "grad": logp.grad.tolist(),
        "kl": m["kl"][0],
        "clip_low": m["clip_ratio/low_mean"][0],
        "clip_high": m["clip_ratio/high_mean"][0],
    }


def main():
    g = torch.Generator().manual_seed(0)
    b, t = 4, 6
    logp = -torch.rand(b, t, generator=g, dtype=torch.float64) * 3
    old = logp + (torch.rand(b, t, generator=g, dtype=torch.float64) - 0.5) * 0.8
    ref = logp + (torch.rand(b, t, generator=g, dtype=torch.float64) - 0.5) * 1.0
    adv = torch.tensor([1.3, -0.4, 0.6, -1.5], dtype=torch.float64)
    lens = [6, 3, 5, 1]
    mask = torch.tensor([[1 if j < n else 0 for j in range(t)] for n in lens])
    cases = []
    for loss_type in ["grpo", "bnpo"]:
        for eps_low, eps_high, beta in [(0.2, 0.2, 0.04), (0.1, 0.28, 0.5)]:
            out = trl_loss(logp, old, ref, adv, mask, loss_type, eps_low, eps_high, beta)
            cases.append({"loss_type": loss_type, "epsilon_low": eps_low, "epsilon_high": eps_high, "beta": beta, **out})
    OUT.write_text(json.dumps({
        "trl_version": trl.__version__, "torch_version": torch.__version__,
        "logp": logp.tolist(), "old": old.tolist(), "ref": ref.tolist(), "advantages": adv.tolist(), "lengths": lens,
        "cases": cases,
    }, indent=1) + "\n")
    print(f"wrote {OUT} (trl {trl.__version__})")


if __name__ == "__main__":
    main()
