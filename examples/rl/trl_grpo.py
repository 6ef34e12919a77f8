"""TRL's GRPOTrainer with rewards from a GRAM-R² judge served by `gramrr serve`.

The reward function sends each prompt's group of completions to `/v1/rank` (a round robin
fitted with Bradley-Terry) and returns the Bradley-Terry scores; where the dataset has a
"reference" column it asks `/v1/judge` for P(completion better than reference) instead.
TRL normalises rewards within each group itself (num_generations completions per prompt).

    gramrr serve --model RM_DIR --port 8000 --mode prob &
    python3 examples/rl/trl_grpo.py --policy POLICY_DIR --url http://127.0.0.1:8000 --out runs/trl

Runs on CPU with a tiny policy (`gramrr init-model --out POLICY_DIR`) in well under a minute.
Needs `pip install trl torch transformers datasets`.
"""

import argparse
import json
import urllib.request


def post(url, path, body):
    req = urllib.request.Request(url.rstrip("/") + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def gramrr_reward(url, group_size):
    """A TRL reward function: (prompts, completions, **columns) -> one float per completion."""

    def reward(prompts, completions, reference=None, **_):
        rewards = [0.0] * len(completions)
        # TRL lays out the num_generations completions of a prompt consecutively.
        for start in range(0, len(completions), group_size):
            idx = range(start, min(start + group_size, len(completions)))
            prompt = prompts[start]
            ref = reference[start] if reference is not None else None
            if ref:
                for i in idx:
                    v = post(url, "/v1/judge", {"prompt": prompt, "response_a": completions[i], "response_b": ref})
                    rewards[i] = float(v["p_a"])
            else:
                v = post(url, "/v1/rank", {"prompt": prompt, "responses": [completions[i] for i in idx],
                                           "strategy": "round-robin"})
                for k, i in enumerate(idx):
                    rewards[i] = float(v["scores"][k])
        return rewards

    reward.__name__ = "gramrr_judge"
    return reward


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy", required=True, help="policy model directory (HF layout)")
    ap.add_argument("--url", default="http://127.0.0.1:8000", help="gramrr serve URL")
    ap.add_argument("--out", default="runs/trl-grpo")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--group-size", type=int, default=4)
    args = ap.parse_args()

    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    data = Dataset.from_list([
        {"prompt": "Q: 12+7=? A:", "reference": "19"},
        {"prompt": "Q: 30+5=? A:", "reference": "35"},
        {"prompt": "Say something kind.", "reference": None},
        {"prompt": "Name a colour.", "reference": None},
    ])
    config = GRPOConfig(
        output_dir=args.out,
        max_steps=args.steps,
        per_device_train_batch_size=args.group_size,
        num_generations=args.group_size,
        max_completion_length=8,
        learning_rate=1e-5,
        beta=0.04,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
    )
    trainer = GRPOTrainer(model=args.policy, reward_funcs=gramrr_reward(args.url, args.group_size),
                          args=config, train_dataset=data)
    trainer.train()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    print(json.dumps({"steps": trainer.state.global_step, "rewards": rewards}))


if __name__ == "__main__":
    main()
