"""OpenRLHF's remote reward model client against `gramrr serve`'s /get_reward.

With OpenRLHF installed (and --tokenizer, the policy's), each response goes through OpenRLHF's
own rollout code: `openrlhf.utils.agent.SingleTurnAgentExecutor`, the executor its vLLM engines
run for `--remote_rm_url`. It tokenizes the prompt, asks the engine for a continuation, decodes
prompt + continuation into the query and POSTs {"query": [query], "prompts": [prompt],
"labels": [label]} to the URL, then reads "rewards" and "scores". Here a scripted engine stands
in for vLLM (it answers with the given response's tokens), so no GPU or Ray is needed. Without
OpenRLHF this sends the same JSON with urllib.

OpenRLHF (0.11.2) sends one query per request, so the groups `gramrr serve` forms from the
queries of one request never have more than one member: without a label every reward is 0.5.
Give the prompts a label (`--label_key`, GRAM v1's reference answer) and the reward is the
judge's P(response better than label).

    python3 examples/rl/openrlhf_request.py --url http://127.0.0.1:8000/get_reward --tokenizer POLICY_DIR

prints {"client": "openrlhf" | "urllib", "rewards": [...], "scores": [...], "p_better": [...]},
where p_better is the judge's own P(response better than label) from /v1/judge, asked directly.
"""

import argparse
import asyncio
import json
import urllib.request
from types import SimpleNamespace

# A subtraction from the demo's world: the first response is right, the second wrong, and the
# label a third answer (the careless policy's usual one, carry dropped) as the reference.
PROMPT = "63-15?"
LABEL = "It is 52."
RESPONSES = ["It is 48.", "It is 58."]


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


class ScriptedEngine:
    """Stands in for OpenRLHF's vLLM engine: answers every prompt with `response_ids`."""

    def __init__(self, response_ids):
        self.response_ids = response_ids

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        out = SimpleNamespace(token_ids=list(self.response_ids), finish_reason="stop", logprobs=None)
        return SimpleNamespace(outputs=[out])


def through_openrlhf(url, tokenizer_dir):
    from openrlhf.utils.agent import SingleTurnAgentExecutor
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    executor = SingleTurnAgentExecutor(remote_rm_url=url)
    # vLLM's SamplingParams as far as the executor reads it.
    params = SimpleNamespace(max_tokens=32, logprobs=None)
    outs = []
    for r in RESPONSES:
        # The policy's continuation: a space, then the answer, as after "Q: 63-15?".
        ids = tok(" " + r, add_special_tokens=False)["input_ids"]
        out = asyncio.run(executor.execute(PROMPT, LABEL, params, 256, tok, ScriptedEngine(ids)))
        outs.append(out)
    # The executor hands on the server's "rewards" for its one-query request as is: a list of one,
    # which OpenRLHF's samples generator wraps as torch.tensor([reward]) (shape (1, 1)).
    for o in outs:
        assert isinstance(o["reward"], list) and len(o["reward"]) == 1, o["reward"]
    return [o["reward"][0] for o in outs], [o["scores"][0] for o in outs], [o["observation_tokens"] for o in outs]


def through_urllib(url):
    body = post(url, {"query": [PROMPT + " " + r for r in RESPONSES], "prompts": [PROMPT] * 2, "labels": [LABEL] * 2})
    return body["rewards"], body["scores"], sorted(body)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8000/get_reward")
    ap.add_argument("--tokenizer", help="the policy's tokenizer (directory); needed for OpenRLHF's executor")
    args = ap.parse_args()
    result = {}
    try:
        import openrlhf
    except ImportError as e:  # not installed, or installed without what its import needs
        openrlhf = None
        result["openrlhf_missing"] = str(e)
    if openrlhf is not None and args.tokenizer:
        rewards, scores, tokens = through_openrlhf(args.url, args.tokenizer)
        result.update(client="openrlhf", openrlhf_version=getattr(openrlhf, "__version__", None) or _version("openrlhf"),
                      observation_tokens=[len(t) for t in tokens])
    else:
        rewards, scores, keys = through_urllib(args.url)
        result.update(client="urllib", response_keys=keys)
    # The judge's own verdict, asked directly: what the rewards must equal.
    base = args.url.rsplit("/get_reward", 1)[0]
    p_better = [post(base + "/v1/judge", {"prompt": PROMPT, "response_a": r, "response_b": LABEL, "both_orders": True})["p_a"] for r in RESPONSES]
    assert len(rewards) == len(RESPONSES) and all(isinstance(x, float) for x in rewards), rewards
    result.update(rewards=rewards, scores=scores, p_better=p_better)
    print(json.dumps(result))


def _version(dist):
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    main()
