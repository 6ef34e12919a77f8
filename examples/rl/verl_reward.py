"""verl custom reward functions over `gramrr serve`'s /v1/rank.

verl (0.9.1) computes rewards one response at a time: its reward loop (RewardLoopWorker, run as
Ray actors by the trainer) loads the function named in `reward.custom_reward_function` into the
reward manager (`naive` by default) and calls it once per response as
`compute_score(data_source=, solution_str=, ground_truth=, extra_info=)`. Here `compute_score`
ranks the response together with the ground truth as a reference answer (a round robin of two,
Bradley–Terry): the score is > 0 when the judge prefers the response to the reference. The
judge needs the question: keep it in each row's extra_info["question"] (verl's own gsm8k
preprocessing does); a row without one scores 0.

    reward.custom_reward_function.path=examples/rl/verl_reward.py
    reward.custom_reward_function.name=compute_score
    # and export GRAMRR_URL=http://127.0.0.1:8000 (or reward.custom_reward_function.reward_kwargs.url=...)

Older verl releases also had a batch reward manager (`reward_model.reward_manager=batch`,
still shipped in 0.9.1 as verl.workers.reward_manager.BatchRewardManager but no longer what the
trainer loads) that hands the whole batch to one call; `compute_score_batch` ranks the responses
to each prompt against each other there (custom_reward_function.name=compute_score_batch).

    python3 examples/rl/verl_reward.py --url URL [--tokenizer POLICY_DIR]

calls both the way verl does on a small batch and prints the scores. With verl installed and
--tokenizer given, compute_score runs inside verl's own RewardLoopWorker (in this process, no Ray
cluster): the config names this file, verl loads it (get_custom_reward_fn), builds its reward
manager (load_reward_manager), decodes the responses from token ids and returns the rm_scores
tensor the trainer uses.
"""

import json
import os
import urllib.request


def _rank(url, prompt, responses):
    body = {"prompt": prompt, "responses": responses, "strategy": "round-robin"}
    req = urllib.request.Request(url.rstrip("/") + "/v1/rank", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())["scores"]


def _url(url):
    return url or os.environ.get("GRAMRR_URL", "http://127.0.0.1:8000")


def compute_score(data_source=None, solution_str="", ground_truth=None, extra_info=None, url=None, **_):
    """verl's per-response reward: the response's Bradley–Terry score against the reference."""
    question = (extra_info or {}).get("question")
    if not ground_truth or not question:
        return 0.0  # nothing to compare the response with, or nothing it answers
    return float(_rank(_url(url), question, [solution_str, str(ground_truth)])[0])


def compute_score_batch(data_sources, solution_strs, ground_truths, extra_infos=None, url=None, **_):
    """The batch reward manager's call: responses to the same prompt (extra_info["question"], or
    the ground truth when there is none) are ranked together; each gets its Bradley–Terry score."""
    extra_infos = extra_infos or [None] * len(solution_strs)
    groups = {}
    for i, (gt, info) in enumerate(zip(ground_truths, extra_infos)):
        key = (info or {}).get("question") or str(gt)
        groups.setdefault(key, []).append(i)
    scores = [0.0] * len(solution_strs)
    for prompt, idx in groups.items():
        if len(idx) == 1:
            continue  # a lone response has nothing to be compared with
        for i, s in zip(idx, _rank(_url(url), prompt, [solution_strs[i] for i in idx])):
            scores[i] = float(s)
    return scores


def through_verl(url, tokenizer_dir, prompt, responses, reference):
    """Scores `responses` through verl's RewardLoopWorker as its trainer would (one worker, in
    this process); returns (scores, rm_scores tensor, responses tensor)."""
    import numpy as np
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl import DataProto
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker

    config = OmegaConf.create({
        "actor_rollout_ref": {"model": {"path": tokenizer_dir, "tokenizer_path": tokenizer_dir}},
        "reward": {
            "custom_reward_function": {"path": os.path.abspath(__file__), "name": "compute_score", "reward_kwargs": {"url": url}},
            "reward_manager": {"source": "register", "name": "naive"},
            "reward_model": {"enable": False},
        },
    })
    worker = RewardLoopWorker(config)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    # The rollout's tensors: prompts left-padded, responses right-padded, one attention mask over both.
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    r_ids = [tok(r, add_special_tokens=False)["input_ids"] for r in responses]
    width = max(len(r) for r in r_ids)
    n = len(responses)
    prompts = torch.tensor([p_ids] * n)
    resp = torch.full((n, width), pad, dtype=torch.long)
    mask = torch.zeros((n, len(p_ids) + width), dtype=torch.long)
    mask[:, :len(p_ids)] = 1
    for i, r in enumerate(r_ids):
        resp[i, :len(r)] = torch.tensor(r)
        mask[i, len(p_ids):len(p_ids) + len(r)] = 1
    data = DataProto.from_dict(
        tensors={"prompts": prompts, "responses": resp, "attention_mask": mask, "input_ids": torch.cat([prompts, resp], 1)},
        non_tensors={
            "data_source": np.array(["gramrr-demo"] * n, dtype=object),
            "reward_model": np.array([{"ground_truth": reference}] * n, dtype=object),
            "extra_info": np.array([{"question": prompt} for _ in range(n)], dtype=object),
        },
    )
    # The worker and its manager hold one event loop (verl.utils.ray_utils.get_event_loop) and
    # run the decoding on it: the batch must run on that loop, not a fresh asyncio.run one.
    outs = worker.loop.run_until_complete(worker.compute_score_batch(data))
    scores = [o["reward_score"] for o in outs]
    return scores, worker.reward_manager.assemble_rm_scores(data, scores), resp, type(worker.reward_manager).__name__


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--tokenizer", help="the policy's tokenizer (directory); runs compute_score through verl's reward loop")
    a = ap.parse_args()
    out = {}

    # Per response, as verl's reward loop calls it: a right and a wrong answer to a question of the
    # demo's world, each ranked against a third, reference answer.
    q, right, wrong, ref = "63-15?", "It is 48.", "It is 58.", "It is 52."
    direct = [compute_score("gramrr-demo", r, ref, {"question": q}, url=a.url) for r in (right, wrong)]
    out["direct"] = direct
    try:
        import verl
    except ImportError as e:  # not installed, or installed without what its import needs
        verl = None
        out["verl_missing"] = str(e)
    if verl is not None and a.tokenizer:
        scores, rm_scores, resp, manager = through_verl(a.url, a.tokenizer, q, [right, wrong], ref)
        out.update(client="verl", verl_version=verl.__version__, reward_manager=manager, scores=scores,
                   rm_scores_shape=list(rm_scores.shape), responses_shape=list(resp.shape),
                   rm_scores_sum=rm_scores.sum(dim=1).tolist(), rm_scores_nonzero=int((rm_scores != 0).sum()))
    else:
        out.update(client="direct", scores=direct)

    # The batch manager's call, two prompts in one batch.
    q1, q2 = {"question": "Q: 12+7=? A:"}, {"question": "Name a colour."}
    batch = compute_score_batch(["arith"] * 3 + ["open"] * 2, [" 19", " 18", " 19 (12+7)", " Blue.", " 42"],
                                ["19", "19", "19", "", ""], [q1, q1, q1, q2, q2], url=a.url)
    assert len(batch) == 5 and all(isinstance(x, float) for x in batch), batch
    out["batch_scores"] = batch
    print(json.dumps(out))
