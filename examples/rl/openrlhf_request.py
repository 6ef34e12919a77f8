"""The request OpenRLHF's `--remote_rm_url` makes, sent to `gramrr serve`'s /get_reward.

With OpenRLHF installed, the request goes through its own client
(`openrlhf.utils.remote_rm_utils.request_api_wrapper`); otherwise this sends the same JSON:
POST {"query": [str], "prompts": [str], "labels": [str]} and reads response["rewards"].

    python3 examples/rl/openrlhf_request.py --url http://127.0.0.1:8000/get_reward
prints {"client": "openrlhf" | "urllib", "rewards": [...], "response_keys": [...]}.
"""

import argparse
import json
import urllib.request


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8000/get_reward")
    args = ap.parse_args()
    prompts = ["Q: 12+7=? A:"] * 3 + ["Name a colour."] * 2
    responses = [" 19", " 18", " 19 because 12+7=19", " Blue.", " 42"]
    data = {
        "query": [p + r for p, r in zip(prompts, responses)],
        "prompts": prompts,
        "labels": ["19", "19", "19", "", ""],
    }
    try:
        from openrlhf.utils.remote_rm_utils import request_api_wrapper
    except ImportError:
        request_api_wrapper = None
    if request_api_wrapper is not None:
        rewards = request_api_wrapper(args.url, data, score_key="rewards")
        keys, client = ["rewards"], "openrlhf"
    else:
        req = urllib.request.Request(args.url, data=json.dumps(data).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as r:
            body = json.loads(r.read())
        rewards, keys, client = body["rewards"], sorted(body), "urllib"
    assert len(rewards) == len(data["query"]), (len(rewards), len(data["query"]))
    assert all(isinstance(x, (int, float)) for x in rewards), rewards
    print(json.dumps({"client": client, "rewards": rewards, "response_keys": keys}))


if __name__ == "__main__":
    main()
