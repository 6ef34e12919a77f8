#!/usr/bin/env bash
# OpenRLHF PPO/GRPO with a GRAM-R² judge as its remote reward model.
#
# `gramrr serve` speaks OpenRLHF's remote RM protocol on /get_reward: OpenRLHF POSTs
# {"query": [prompt+response, ...], "prompts": [prompt, ...], "labels": [label, ...]} and reads
# "rewards" (one float per query). gramrr splits each query into the user's question and the
# response (the prompt is a prefix of the query), groups queries by prompt, and scores each with
# the judge (round robin within the group, or against the label as a reference answer).
# examples/rl/openrlhf_request.py sends exactly that request; its test runs it against a server.
# The trainer flags below are those of recent OpenRLHF releases (GRPO: group_norm advantages,
# k3 KL as a loss); OpenRLHF is not installed here, so check them against your version's --help.
set -euo pipefail
RM_DIR=${RM_DIR:?set RM_DIR to a GRAM-R² reward model directory}
POLICY=${POLICY:?set POLICY to a policy model (HF name or directory)}

gramrr serve --model "$RM_DIR" --port 5000 --mode reason --reward-norm zscore &
SERVER=$!
trap 'kill $SERVER' EXIT
until curl -sf http://127.0.0.1:5000/health >/dev/null; do sleep 1; done

python3 -m openrlhf.cli.train_ppo_ray \
  --pretrain "$POLICY" \
  --remote_rm_url http://127.0.0.1:5000/get_reward \
  --advantage_estimator group_norm \
  --n_samples_per_prompt 8 \
  --prompt_data "${PROMPTS:-prompts.jsonl}" --input_key prompt --label_key reference \
  --micro_train_batch_size 4 --train_batch_size 32 \
  --micro_rollout_batch_size 8 --rollout_batch_size 32 \
  --max_epochs 1 --num_episodes 1 --init_kl_coef 0.04 --use_kl_loss --kl_estimator k3 \
  --actor_learning_rate 1e-6 --save_path runs/openrlhf-grpo
