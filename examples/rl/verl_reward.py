"""A verl custom reward function over `gramrr serve`'s /v1/rank.

verl's batch reward manager calls `compute_score(data_sources, solution_strs, ground_truths,
extra_infos)` with every response of a batch; the responses to one prompt (extra_info["question"],
or the ground truth when there is none) are ranked together by the judge (round robin +
Bradley-Terry) and each gets its score. Configure it with

    custom_reward_function.path=examples/rl/verl_reward.py
    custom_reward_function.name=compute_score
    reward_model.reward_manager=batch
    # and export GRAMRR_URL=http://127.0.0.1:8000

`python3 examples/rl/verl_reward.py --url URL` calls it the way verl does on a small batch and
prints the scores.
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


def compute_score(data_sources, solution_strs, ground_truths, extra_infos=None, url=None, **_):
    url = url or os.environ.get("GRAMRR_URL", "http://127.0.0.1:8000")
    extra_infos = extra_infos or [None] * len(solution_strs)
    groups = {}
    for i, (gt, info) in enumerate(zip(ground_truths, extra_infos)):
        key = (info or {}).get("question") or str(gt)
        groups.setdefault(key, []).append(i)
    scores = [0.0] * len(solution_strs)
    for prompt, idx in groups.items():
        if len(idx) == 1:
            continue  # a lone response has nothing to be compared with
        for i, s in zip(idx, _rank(url, prompt, [solution_strs[i] for i in idx])):
            scores[i] = float(s)
    return scores


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    a = ap.parse_args()
    q1, q2 = {"question": "Q: 12+7=? A:"}, {"question": "Name a colour."}
    out = compute_score(["arith"] * 3 + ["open"] * 2, [" 19", " 18", " 19 (12+7)", " Blue.", " 42"],
                        ["19", "19", "19", "", ""], [q1, q1, q1, q2, q2], url=a.url)
    assert len(out) == 5 and all(isinstance(x, float) for x in out), out
    print(json.dumps({"scores": out}))
