#!/usr/bin/env bash
# OpenRLHF GRPO with a GRAM-R² judge as its remote reward model.
#
# `gramrr serve` speaks OpenRLHF's remote RM protocol on /get_reward: OpenRLHF POSTs
# {"query": [prompt+response, ...], "prompts": [prompt, ...], "labels": [label, ...]} and reads
# "rewards" and "scores". gramrr splits each query into the user's question and the response (the
# prompt is a prefix of the query) and judges it against the label as a reference answer:
# reward = P(response better than label). OpenRLHF 0.11.2's rollout executor sends one query per
# request, so the prompts need a label (--data.label_key; GRAM v1's reference: e.g. the starting
# policy's greedy answer): without one every reward is 0.5.
# examples/rl/openrlhf_request.py runs that executor's reward call against a server (see README.md).
# The flags below are OpenRLHF 0.11.2's, read from its cli/train_ppo_ray.py; this script itself
# needs GPUs, Ray, DeepSpeed and vLLM and has not been run here.
set -euo pipefail
RM_DIR=${RM_DIR:?set RM_DIR to a GRAM-R² reward model directory}
POLICY=${POLICY:?set POLICY to a policy model (HF name or directory)}

# No --reward-norm: it normalises within the queries of one request, and a request of one query
# would come out 0 (zscore) whatever the judge said; group_norm below normalises each prompt's
# samples on OpenRLHF's side.
gramrr serve --model "$RM_DIR" --port 5000 --mode reason &
SERVER=$!
trap 'kill $SERVER' EXIT
until curl -sf http://127.0.0.1:5000/health >/dev/null; do sleep 1; done

python3 -m openrlhf.cli.train_ppo_ray \
  --actor.model_name_or_path "$POLICY" \
  --reward.remote_url http://127.0.0.1:5000/get_reward \
  --algo.advantage.estimator group_norm \
  --rollout.n_samples_per_prompt 8 \
  --data.prompt_dataset "${PROMPTS:-prompts.jsonl}" --data.input_key prompt --data.label_key reference \
  --train.micro_batch_size 4 --train.batch_size 32 \
  --rollout.micro_batch_size 8 --rollout.batch_size 32 \
  --train.max_epochs 1 --train.num_episodes 1 \
  --algo.kl.init_coef 0.04 --algo.kl.use_loss --algo.kl.estimator k3 \
  --actor.adam.lr 1e-6 --ckpt.output_dir runs/openrlhf-grpo
