#!/usr/bin/env python3
"""Make the model parity fixtures in crates/gramrr-model/tests/fixtures/.

    python3 tools/make_model_fixtures.py

Everything is deterministic (fixed seeds, one CPU thread) and rebuilt from scratch on every run:
tiny byte-level BPE tokenizers (Llama 3 and Qwen3 flavours, with the real chat templates), tiny
random checkpoints saved with `save_pretrained`, and the outputs transformers computes for them
(float32, eager attention). See the README.md written next to the fixtures.

`make_train_fixtures.py` imports the tokenizer builders and the weight initialisation from here.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import sys
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

import transformers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates" / "gramrr-model" / "tests" / "fixtures"

torch.set_num_threads(1)
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

# ---------------------------------------------------------------------------------------------
# Real chat templates, verbatim (see the fixtures README for where they come from).
# LLAMA3_TEMPLATE: meta-llama/Llama-3.2-3B-Instruct; QWEN3_TEMPLATE: Qwen/Qwen3-0.6B.
# ---------------------------------------------------------------------------------------------
LLAMA3_TEMPLATE = json.loads(r'''"{{- bos_token }}\n{%- if custom_tools is defined %}\n    {%- set tools = custom_tools %}\n{%- endif %}\n{%- if not tools_in_user_message is defined %}\n    {%- set tools_in_user_message = true %}\n{%- endif %}\n{%- if not date_string is defined %}\n    {%- if strftime_now is defined %}\n        {%- set date_string = strftime_now(\"%d %b %Y\") %}\n    {%- else %}\n        {%- set date_string = \"26 Jul 2024\" %}\n    {%- endif %}\n{%- endif %}\n{%- if not tools is defined %}\n    {%- set tools = none %}\n{%- endif %}\n\n{#- This block extracts the system message, so we can slot it into the right place. #}\n{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content']|trim %}\n    {%- set messages = messages[1:] %}\n{%- else %}\n    {%- set system_message = \"\" %}\n{%- endif %}\n\n{#- System message #}\n{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n{%- if tools is not none %}\n    {{- \"Environment: ipython\\n\" }}\n{%- endif %}\n{{- \"Cutting Knowledge Date: December 2023\\n\" }}\n{{- \"Today Date: \" + date_string + \"\\n\\n\" }}\n{%- if tools is not none and not tools_in_user_message %}\n    {{- \"You have access to the following functions. To call a function, please respond with JSON for a function call.\" }}\n    {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.' }}\n    {{- \"Do not use variables.\\n\\n\" }}\n    {%- for t in tools %}\n        {{- t | tojson(indent=4) }}\n        {{- \"\\n\\n\" }}\n    {%- endfor %}\n{%- endif %}\n{{- system_message }}\n{{- \"<|eot_id|>\" }}\n\n{#- Custom tools are passed in a user message with some extra guidance #}\n{%- if tools_in_user_message and not tools is none %}\n    {#- Extract the first user message so we can plug it in here #}\n    {%- if messages | length != 0 %}\n        {%- set first_user_message = messages[0]['content']|trim %}\n        {%- set messages = messages[1:] %}\n    {%- else %}\n        {{- raise_exception(\"Cannot put tools in the first user message when there's no first user message!\") }}\n{%- endif %}\n    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}\n    {{- \"Given the following functions, please respond with a JSON for a function call \" }}\n    {{- \"with its proper arguments that best answers the given prompt.\\n\\n\" }}\n    {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.' }}\n    {{- \"Do not use variables.\\n\\n\" }}\n    {%- for t in tools %}\n        {{- t | tojson(indent=4) }}\n        {{- \"\\n\\n\" }}\n    {%- endfor %}\n    {{- first_user_message + \"<|eot_id|>\"}}\n{%- endif %}\n\n{%- for message in messages %}\n    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}\n        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}\n    {%- elif 'tool_calls' in message %}\n        {%- if not message.tool_calls|length == 1 %}\n            {{- raise_exception(\"This model only supports single tool-calls at once!\") }}\n        {%- endif %}\n        {%- set tool_call = message.tool_calls[0].function %}\n        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n        {{- '{\"name\": \"' + tool_call.name + '\", ' }}\n        {{- '\"parameters\": ' }}\n        {{- tool_call.arguments | tojson }}\n        {{- \"}\" }}\n        {{- \"<|eot_id|>\" }}\n    {%- elif message.role == \"tool\" or message.role == \"ipython\" %}\n        {{- \"<|start_header_id|>ipython<|end_header_id|>\\n\\n\" }}\n        {%- if message.content is mapping or message.content is iterable %}\n            {{- message.content | tojson }}\n        {%- else %}\n            {{- message.content }}\n        {%- endif %}\n        {{- \"<|eot_id|>\" }}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n{%- endif %}\n"''')

QWEN3_TEMPLATE = json.loads(r'''"{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0].role == 'system' %}\n        {{- messages[0].content + '\\n\\n' }}\n    {%- endif %}\n    {{- \"# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n    {%- if messages[0].role == 'system' %}\n        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}\n{%- for message in messages[::-1] %}\n    {%- set index = (messages|length - 1) - loop.index0 %}\n    {%- if ns.multi_step_tool and message.role == \"user\" and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}\n        {%- set ns.multi_step_tool = false %}\n        {%- set ns.last_query_index = index %}\n    {%- endif %}\n{%- endfor %}\n{%- for message in messages %}\n    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) %}\n        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n    {%- elif message.role == \"assistant\" %}\n        {%- set content = message.content %}\n        {%- set reasoning_content = '' %}\n        {%- if message.reasoning_content is defined and message.reasoning_content is not none %}\n            {%- set reasoning_content = message.reasoning_content %}\n        {%- else %}\n            {%- if '</think>' in message.content %}\n                {%- set content = message.content.split('</think>')[-1].lstrip('\\n') %}\n                {%- set reasoning_content = message.content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}\n            {%- endif %}\n        {%- endif %}\n        {%- if loop.index0 > ns.last_query_index %}\n            {%- if loop.last or (not loop.last and reasoning_content) %}\n                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}\n            {%- else %}\n                {{- '<|im_start|>' + message.role + '\\n' + content }}\n            {%- endif %}\n        {%- else %}\n            {{- '<|im_start|>' + message.role + '\\n' + content }}\n        {%- endif %}\n        {%- if message.tool_calls %}\n            {%- for tool_call in message.tool_calls %}\n                {%- if (loop.first and content) or (not loop.first) %}\n                    {{- '\\n' }}\n                {%- endif %}\n                {%- if tool_call.function %}\n                    {%- set tool_call = tool_call.function %}\n                {%- endif %}\n                {{- '<tool_call>\\n{\"name\": \"' }}\n                {{- tool_call.name }}\n                {{- '\", \"arguments\": ' }}\n                {%- if tool_call.arguments is string %}\n                    {{- tool_call.arguments }}\n                {%- else %}\n                    {{- tool_call.arguments | tojson }}\n                {%- endif %}\n                {{- '}\\n</tool_call>' }}\n            {%- endfor %}\n        {%- endif %}\n        {{- '<|im_end|>\\n' }}\n    {%- elif message.role == \"tool\" %}\n        {%- if loop.first or (messages[loop.index0 - 1].role != \"tool\") %}\n            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n    {%- if enable_thinking is defined and enable_thinking is false %}\n        {{- '<think>\\n\\n</think>\\n\\n' }}\n    {%- endif %}\n{%- endif %}"''')
LLAMA3_TEMPLATE_SHA256 = "5816fce10444e03c2e9ee1ef8a4a1ea61ae7e69e438613f3b17b69d0426223a4"
QWEN3_TEMPLATE_SHA256 = "87a2728cb8dc9fe424d624542f6060ec05a1d285ebbec578bb078900e33396b5"

# Pre-tokenizer regexes of the real tokenizers (tokenizer.json of Llama 3 and of Qwen2/Qwen3).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
# Qwen3: <think> and </think> are added tokens that are NOT special (as in the real tokenizer).
QWEN3_ADDED = [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<think>", False), ("</think>", False)]

LLAMA3_BPE_SIZE = 395  # + 5 specials = 400 tokens = model vocab
QWEN3_BPE_SIZE = 387  # + 5 added = 392 tokens; Qwen models pad their vocab to 400 like real Qwen
QWEN_MODEL_VOCAB = 400

# A small built-in English + digits corpus. " A" and " B" are frequent so they become single tokens.
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A judge reads two answers and decides which one is better.",
    "Answer A is correct. Answer B is wrong.",
    "Which response is better? Response A or Response B?",
    "The final answer is A.",
    "The final answer is B.",
    "I think A is better than B because it is shorter and clearer.",
    "Between A and B, I prefer B: it explains every step.",
    "Output A is helpful, honest and harmless. Output B is not.",
    "Verdict: A", "Verdict: B", "Label: A", "Label: B", "Choice: A", "Choice: B",
    "There are 12 apples, 7 oranges and 2024 bananas in 3 boxes.",
    "In 1969 the first people walked on the Moon; 2 of them, 384400 km from home.",
    "Add 17 and 25 to get 42. Then 42 times 10 is 420, and 420 minus 1 is 419.",
    "The year 2023 ended and 2024 began at 00:00 on 1 January.",
    "Call 555-0123 or write to 221B Baker Street, London NW1 6XE.",
    "Prices: $3.50, $12.99 and $100; 25% off until 31 December 2025.",
    "Question: what is 7 + 8? Answer: 15.",
    "Question: what is 9 * 9? Answer: 81.",
    "Please read the following text carefully and answer the question.",
    "You are a helpful assistant. Answer the user's question.",
    "The user asked a question and the assistant gave an answer.",
    "It's a small model, so it doesn't know much; we're only testing the code.",
    "She said: \"Hello, world!\" and he replied 'hi there'.",
    "Lists:\n- first item\n- second item\n- third item\n",
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n    print(i * i)\n",
    "Think step by step. First, compare the answers. Then, pick the better one.",
    "The cat sat on the mat. The dog sat on the log.",
    "Reasoning: both answers are fluent, but only one of them is correct.",
    "Water boils at 100 degrees Celsius and freezes at 0 degrees.",
    "There are 365 days in a year, 24 hours in a day and 60 minutes in an hour.",
    "Tokens, weights and logits: the model turns text into numbers.",
    "Hello! How are you today? I am fine, thank you.",
    "Café, naïve and déjà vu are words with accents.",
    "Summary: the first answer is better. Final verdict: A",
    "Summary: the second answer is better. Final verdict: B",
    "The answer is A", "The answer is B", "so the answer is A", "so the answer is B",
]


# ---------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------
def bytes_to_unicode() -> list[tuple[int, str]]:
    """GPT-2's byte -> printable character table, in the order real vocabularies list the bytes."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [(b, chr(c)) for b, c in zip(bs, cs)]


def train_bpe(pre_tokenizer, normalizer, lines: list[str], vocab_size: int):
    """A plain, fully deterministic byte-level BPE trainer (ties broken by the pair's text)."""
    counts: Counter[str] = Counter()
    for line in lines:
        text = normalizer.normalize_str(line) if normalizer is not None else line
        for piece, _ in pre_tokenizer.pre_tokenize_str(text):
            counts[piece] += 1
    words = {w: list(w) for w in sorted(counts)}
    vocab = [c for _, c in bytes_to_unicode()]
    known = set(vocab)
    merges: list[tuple[str, str]] = []
    while len(vocab) < vocab_size:
        pairs: Counter[tuple[str, str]] = Counter()
        for w, syms in words.items():
            for a, b in zip(syms, syms[1:]):
                pairs[(a, b)] += counts[w]
        if not pairs:
            break
        (a, b), n = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        if n < 2:
            break
        merges.append((a, b))
        if a + b not in known:
            known.add(a + b)
            vocab.append(a + b)
        for w, syms in words.items():
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            words[w] = out
    if len(vocab) != vocab_size:
        raise SystemExit(f"corpus too small: BPE vocab {len(vocab)} < {vocab_size}")
    return {t: i for i, t in enumerate(vocab)}, merges


def _byte_level_pre_tokenizer(pattern: str):
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )


def build_llama3_tokenizer() -> PreTrainedTokenizerFast:
    """Llama-3-style: Llama 3 split regex, ignore_merges, BOS added by a TemplateProcessing."""
    pre = _byte_level_pre_tokenizer(LLAMA3_PATTERN)
    vocab, merges = train_bpe(pre, None, CORPUS, LLAMA3_BPE_SIZE)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True, byte_fallback=False, fuse_unk=False))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLAMA3_SPECIALS])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
            processors.TemplateProcessing(
                single="<|begin_of_text|> $A",
                pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
                special_tokens=[("<|begin_of_text|>", bos)],
            ),
        ]
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|end_of_text|>",
        clean_up_tokenization_spaces=False,
        model_max_length=131072,
    )
    hf.chat_template = LLAMA3_TEMPLATE
    return hf


def build_qwen3_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen2/Qwen3-style: NFC, Qwen2 split regex (single digits), no BOS, eos <|im_end|>."""
    pre = _byte_level_pre_tokenizer(QWEN2_PATTERN)
    norm = normalizers.NFC()
    vocab, merges = train_bpe(pre, norm, CORPUS, QWEN3_BPE_SIZE)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=False, byte_fallback=False, fuse_unk=False))
    tok.normalizer = norm
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    for content, special in QWEN3_ADDED:
        t = AddedToken(content, special=special, normalized=False)
        if special:
            tok.add_special_tokens([t])
        else:
            tok.add_tokens([t])
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
        model_max_length=131072,
    )
    hf.chat_template = QWEN3_TEMPLATE
    return hf


def save_tokenizer(hf, flavour: str, directory: Path, jinja_file: bool = False) -> None:
    """save_pretrained, then make tokenizer_config.json look like the real model's."""
    hf.save_pretrained(str(directory), save_jinja_files=jinja_file)
    path = directory / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    raw = Tokenizer.from_file(str(directory / "tokenizer.json"))
    added = {}
    for tid, at in sorted(raw.get_added_tokens_decoder().items()):
        added[str(tid)] = {
            "content": at.content, "lstrip": at.lstrip, "normalized": at.normalized,
            "rstrip": at.rstrip, "single_word": at.single_word, "special": at.special,
        }
    cfg["added_tokens_decoder"] = added
    cfg.pop("backend", None)  # transformers-5 bookkeeping that real checkpoints do not have
    if flavour == "llama3":
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    else:
        cfg["tokenizer_class"] = "Qwen2Tokenizer"
        cfg["bos_token"] = None
        cfg["unk_token"] = None
        cfg["add_prefix_space"] = False
        cfg["errors"] = "replace"
        cfg["split_special_tokens"] = False
        cfg["additional_special_tokens"] = ["<|im_start|>", "<|im_end|>"]
    if jinja_file:
        cfg.pop("chat_template", None)
        assert (directory / "chat_template.jinja").exists()
    else:
        cfg["chat_template"] = LLAMA3_TEMPLATE if flavour == "llama3" else QWEN3_TEMPLATE
        (directory / "chat_template.jinja").unlink(missing_ok=True)
    path.write_text(json.dumps(dict(sorted(cfg.items())), indent=2, ensure_ascii=False) + "\n")


TOKENIZER_PROBES = [
    "Hello world", " A", " B", "A", "B", "The answer is A", "2024 and 123456789",
    "Café déjà vu — naïve ☃", "line one\nline two\n\n  indented\ttab", "<|im_start|>user\nhi<|im_end|>",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nx<|eot_id|>", "<think>\nhm\n</think>\n\nok",
    "It's don't we're I'LL", "   spaces   ", "", "e\u0301", "日本語",
]


def check_tokenizer(directory: Path, flavour: str) -> None:
    """transformers and the raw `tokenizers` library must agree on every probe."""
    hf = AutoTokenizer.from_pretrained(str(directory))
    raw = Tokenizer.from_file(str(directory / "tokenizer.json"))
    for s in TOKENIZER_PROBES:
        for special in (True, False):
            a = hf(s, add_special_tokens=special).input_ids
            b = raw.encode(s, add_special_tokens=special).ids
            assert a == b, (flavour, s, special, a, b)
        ids = raw.encode(s, add_special_tokens=False).ids
        assert hf.decode(ids) == raw.decode(ids, skip_special_tokens=False), (s,)
    template = LLAMA3_TEMPLATE if flavour == "llama3" else QWEN3_TEMPLATE
    assert hf.chat_template == template
    for label in (" A", " B"):
        assert len(raw.encode(label, add_special_tokens=False).ids) == 1, label
    if flavour == "llama3":
        assert hf("x").input_ids[0] == raw.token_to_id("<|begin_of_text|>")
        assert hf.bos_token == "<|begin_of_text|>" and hf.eos_token == "<|eot_id|>"
    else:
        assert hf.bos_token is None and hf.eos_token == "<|im_end|>" and hf.pad_token == "<|endoftext|>"
        assert hf("x").input_ids == raw.encode("x", add_special_tokens=False).ids


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------
def scale_init(model: torch.nn.Module, seed: int, mat_std: float = 0.2, emb_std: float = 0.5,
               norm_noise: float = 0.1, qk_norm_noise: float = 0.3, bias_std: float = 0.3,
               real_vocab: int | None = None) -> None:
    """Replace the default init (std 0.02, near-uniform logits) with larger random weights so
    logits are peaked. Norm weights are 1 + noise; biases are non-zero. Tied weights are drawn
    once (named_parameters lists a shared tensor once). Rows of a padded vocabulary beyond the
    tokenizer (`real_vocab`) are shrunk, as untrained rows are, so greedy never picks them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith("q_norm.weight") or name.endswith("k_norm.weight"):
                v = 1.0 + qk_norm_noise * r
            elif "norm" in name:
                v = 1.0 + norm_noise * r
            elif name.endswith(".bias"):
                v = bias_std * r
            elif "embed_tokens" in name or "lm_head" in name:
                v = emb_std * r
                if real_vocab is not None:
                    v[real_vocab:] *= 0.05
            else:
                v = mat_std * r
            p.copy_(v.to(p.dtype))


# ---------------------------------------------------------------------------------------------
# Model definitions
# ---------------------------------------------------------------------------------------------
def ids_of(tok, *names):
    return [tok.convert_tokens_to_ids(n) for n in names]


def model_specs(llama_tok, qwen_tok):
    l_bos, l_eot_text, l_eot = ids_of(llama_tok, "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>")
    q_eot_text, q_im_end = ids_of(qwen_tok, "<|endoftext|>", "<|im_end|>")
    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  rms_norm_eps=1e-5, attention_dropout=0.0)
    specs = []
    specs.append(dict(
        name="llama-gqa-rope3-tied", flavour="llama3", cls=LlamaForCausalLM, seed=1001,
        config=LlamaConfig(
            **common, num_key_value_heads=2, vocab_size=len(llama_tok), max_position_embeddings=256,
            rope_parameters={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 64, "rope_theta": 500000.0},
            tie_word_embeddings=True, bos_token_id=l_bos, eos_token_id=[l_eot_text, l_eot], pad_token_id=l_eot_text,
            hidden_act="silu", mlp_bias=False, attention_bias=False),
        generation=dict(bos_token_id=l_bos, eos_token_id=[l_eot_text, l_eot], pad_token_id=l_eot_text,
                        do_sample=True, temperature=0.6, top_p=0.9),
        init=dict(),
    ))
    specs.append(dict(
        name="llama-untied", flavour="llama3", cls=LlamaForCausalLM, seed=1009,
        config=LlamaConfig(
            **common, num_key_value_heads=4, vocab_size=len(llama_tok), max_position_embeddings=256,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            tie_word_embeddings=False, bos_token_id=l_bos, eos_token_id=l_eot_text, pad_token_id=l_eot_text,
            hidden_act="silu", mlp_bias=False, attention_bias=False),
        generation=dict(bos_token_id=l_bos, eos_token_id=l_eot_text, pad_token_id=l_eot_text),
        init=dict(),
        sharded="200KB",
        v4_config=True,
    ))
    specs.append(dict(
        name="qwen2-bias", flavour="qwen3", cls=Qwen2ForCausalLM, seed=1024,
        config=Qwen2Config(
            **common, num_key_value_heads=2, vocab_size=QWEN_MODEL_VOCAB, max_position_embeddings=512,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            tie_word_embeddings=True, use_sliding_window=False, sliding_window=4096, max_window_layers=2,
            bos_token_id=q_eot_text, eos_token_id=q_im_end, pad_token_id=q_eot_text, hidden_act="silu"),
        generation=dict(bos_token_id=q_eot_text, eos_token_id=[q_im_end, q_eot_text], pad_token_id=q_eot_text,
                        do_sample=True, temperature=0.7, top_p=0.8, top_k=20),
        init=dict(real_vocab=len(qwen_tok)),
        keep_sliding_window=4096,
    ))
    qwen3_cfg = dict(
        **common, num_key_value_heads=2, head_dim=32, vocab_size=QWEN_MODEL_VOCAB, max_position_embeddings=512,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        tie_word_embeddings=True, use_sliding_window=False, max_window_layers=2, attention_bias=False,
        bos_token_id=q_eot_text, eos_token_id=q_im_end, pad_token_id=q_eot_text, hidden_act="silu")
    q3_gen = dict(bos_token_id=q_eot_text, eos_token_id=[q_im_end, q_eot_text], pad_token_id=q_eot_text,
                  do_sample=True, temperature=0.6, top_p=0.95, top_k=20)
    specs.append(dict(
        name="qwen3-qknorm", flavour="qwen3", cls=Qwen3ForCausalLM, seed=1018,
        config=Qwen3Config(**qwen3_cfg), generation=q3_gen, init=dict(real_vocab=len(qwen_tok)),
    ))
    specs.append(dict(
        name="qwen3-bf16", flavour="qwen3", cls=Qwen3ForCausalLM, seed=1018,
        config=Qwen3Config(**qwen3_cfg), generation=q3_gen, init=dict(real_vocab=len(qwen_tok)),
        bf16=True, jinja_file=True,
    ))
    return specs


# ---------------------------------------------------------------------------------------------
# Expected outputs
# ---------------------------------------------------------------------------------------------
# (prompt, completion) raw-text pairs for teacher-forced scoring, the same for every model.
CASES = [
    ("Hello", " world"),
    ("7 + 8 =", " 15."),
    ("Café?", " Oui, 2x."),
    ("A: 42\nB: 420\nWhich?", " A.\nVerdict: A"),
]

GREEDY_PROMPTS = [
    "Hi",
    "The answer is",
    "Question: what is 9 * 9? Answer:",
    "Please read the following text carefully and answer the question. The cat sat on the mat; where did it sit?",
    "Café?\n",
]

LABEL_PROMPTS = [
    "Which response is better? Response A or Response B? The answer is",
    "Verdict:",
    "Summary: the second answer is better, naïvely speaking.\nFinal verdict:",
]
LABELS = [" A", " B"]


def f32list(t: torch.Tensor) -> list[float]:
    return [float(x) for x in t.detach().to(torch.float32).reshape(-1).tolist()]


def load_eager(directory: Path):
    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32, attn_implementation="eager")
    model.eval()
    return model


@torch.no_grad()
def full_logits(model, ids: list[int]) -> torch.Tensor:
    return model(input_ids=torch.tensor([ids])).logits[0].to(torch.float32)


@torch.no_grad()
def compute_cases(model, tok, cases):
    out, tensors = [], {}
    for k, (prompt, completion) in enumerate(cases):
        p = tok(prompt, add_special_tokens=True).input_ids
        c = tok(completion, add_special_tokens=False).input_ids
        logits = full_logits(model, p + c)
        lp = torch.log_softmax(logits, dim=-1)
        tl = [lp[len(p) - 1 + j, tid] for j, tid in enumerate(c)]
        token_logprobs = f32list(torch.stack(tl))
        tensors[f"case{k}"] = logits.contiguous()
        out.append(dict(prompt=prompt, completion=completion, prompt_ids=p, completion_ids=c,
                        token_logprobs=token_logprobs, logprob=math.fsum(token_logprobs),
                        logits_tensor=f"case{k}", seq_len=len(p) + len(c)))
    return out, tensors


def cut_at_eos(ids: list[int], eos: set[int]) -> list[int]:
    for i, t in enumerate(ids):
        if t in eos:
            return ids[: i + 1]
    return ids


@torch.no_grad()
def greedy(model, tok, prompts, eos_ids, pad_id, max_new_tokens=12):
    eos_set = set(eos_ids)
    kwargs = dict(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=list(eos_ids), pad_token_id=pad_id,
                  return_dict_in_generate=True, output_logits=True, temperature=None, top_p=None, top_k=None)
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=True)
    res = model.generate(**enc, **kwargs)
    L = enc.input_ids.shape[1]
    rows, margin = [], float("inf")
    for r in range(len(prompts)):
        new = cut_at_eos(res.sequences[r, L:].tolist(), eos_set)
        for s in range(len(new)):
            top2 = torch.topk(res.logits[s][r].float(), 2).values
            margin = min(margin, float(top2[0] - top2[1]))
            assert int(torch.argmax(res.logits[s][r])) == new[s]
        # the same prompt alone, without padding
        solo_ids = tok(prompts[r], add_special_tokens=True).input_ids
        solo = model.generate(input_ids=torch.tensor([solo_ids]), attention_mask=torch.ones(1, len(solo_ids), dtype=torch.long), **kwargs)
        solo_new = cut_at_eos(solo.sequences[0, len(solo_ids):].tolist(), eos_set)
        assert solo_new == new, (prompts[r], solo_new, new)
        for s in range(len(solo_new)):
            top2 = torch.topk(solo.logits[s][0].float(), 2).values
            margin = min(margin, float(top2[0] - top2[1]))
        # and once more without generate(): full forward passes over the growing sequence
        seq = list(solo_ids)
        for s in range(len(new)):
            nxt = int(torch.argmax(full_logits(model, seq)[-1]))
            assert nxt == new[s]
            seq.append(nxt)
        finish = "stop" if new and new[-1] in eos_set else "length"
        rows.append(dict(prompt=prompts[r], prompt_ids=solo_ids, new_tokens=new,
                         text=tok.decode(new, skip_special_tokens=True), finish_reason=finish))
    tok.padding_side = "right"
    return rows, margin


@torch.no_grad()
def label_probs(model, tok, prompts, labels):
    label_ids = []
    for lab in labels:
        ids = tok(lab, add_special_tokens=False).input_ids
        assert len(ids) == 1, (lab, ids)
        label_ids.append(ids[0])
    rows = []
    for prompt in prompts:
        p = tok(prompt, add_special_tokens=True).input_ids
        lp = torch.log_softmax(full_logits(model, p)[-1], dim=-1)
        sel = lp[label_ids]
        rows.append(dict(prompt=prompt, prompt_ids=p, logprobs=f32list(sel), probs=f32list(torch.softmax(sel, dim=-1))))
    return dict(labels=labels, label_ids=label_ids, cases=rows)


# ---------------------------------------------------------------------------------------------
# Building one model directory
# ---------------------------------------------------------------------------------------------
def write_json(path: Path, obj, indent: int = 1) -> None:
    path.write_text(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def v4_style_config(path: Path) -> None:
    """Rewrite config.json the way transformers 4.x wrote it: top-level rope_theta,
    rope_scaling null, torch_dtype."""
    cfg = json.loads(path.read_text())
    rp = cfg.pop("rope_parameters")
    assert rp.get("rope_type", "default") == "default"
    cfg["rope_theta"] = rp["rope_theta"]
    cfg["rope_scaling"] = None
    cfg["torch_dtype"] = cfg.pop("dtype")
    cfg["transformers_version"] = "4.46.0"
    write_json(path, dict(sorted(cfg.items())), indent=2)


def build_model(spec, tokenizers_by_flavour) -> Path:
    name = spec["name"]
    d = OUT / "models" / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    cfg = spec["config"]
    cfg._attn_implementation = "eager"
    model = spec["cls"](cfg)
    model.eval()
    scale_init(model, spec["seed"], **spec["init"])
    kw = {}
    if spec.get("sharded"):
        kw["max_shard_size"] = spec["sharded"]
    if spec.get("bf16"):
        # Round the f32 weights to bf16 values, save a bf16 copy; `model` stays f32 (its rotary
        # buffers must not pass through bf16) and is the reference for the reload check.
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(torch.bfloat16).to(torch.float32))
        copy.deepcopy(model).to(torch.bfloat16).save_pretrained(str(d), **kw)
    else:
        model.save_pretrained(str(d), **kw)
    GenerationConfig(**spec["generation"]).save_pretrained(str(d))
    save_tokenizer(tokenizers_by_flavour[spec["flavour"]], spec["flavour"], d, jinja_file=spec.get("jinja_file", False))
    check_tokenizer(d, spec["flavour"])

    cfg_path = d / "config.json"
    reference = model
    probe = [tokenizers_by_flavour[spec["flavour"]](CASES[3][0]).input_ids]
    with torch.no_grad():
        ref_logits = reference(input_ids=torch.tensor(probe)).logits
    if spec.get("keep_sliding_window"):
        c = json.loads(cfg_path.read_text())
        c["sliding_window"] = spec["keep_sliding_window"]
        write_json(cfg_path, c, indent=2)
    if spec.get("v4_config"):
        v4_style_config(cfg_path)
    # transformers must read the (possibly edited) files back to the same model
    reloaded = load_eager(d)
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=torch.tensor(probe)).logits, ref_logits), name
    if spec.get("v4_config"):
        assert json.loads(cfg_path.read_text())["rope_scaling"] is None
        assert (d / "model.safetensors.index.json").exists()
        shards = sorted(p.name for p in d.glob("model-*.safetensors"))
        assert 2 <= len(shards) <= 3, shards
    return d


def compute_expected(spec, d: Path) -> dict:
    name, flavour = spec["name"], spec["flavour"]
    model = load_eager(d)
    tok = AutoTokenizer.from_pretrained(str(d))
    gen = json.loads((d / "generation_config.json").read_text())
    eos = gen["eos_token_id"]
    eos_ids = eos if isinstance(eos, list) else [eos]
    pad_id = json.loads((d / "config.json").read_text())["pad_token_id"]
    cases, tensors = compute_cases(model, tok, CASES)
    rows, margin = greedy(model, tok, GREEDY_PROMPTS, eos_ids, pad_id)
    assert margin > 0.02, (name, margin)  # seeds were chosen so that greedy is unambiguous
    lens = sorted({len(r["prompt_ids"]) for r in rows})
    assert len(lens) == len(rows), (name, lens)
    exp = dict(
        model=name,
        model_dir=f"models/{name}",
        generated_by="tools/make_model_fixtures.py",
        transformers_version=transformers.__version__,
        torch_version=torch.__version__.split("+")[0],
        compute_dtype="float32",
        weights_dtype="bfloat16" if spec.get("bf16") else "float32",
        attn_implementation="eager",
        vocab_size=model.config.vocab_size,
        tokenizer_len=len(tok),
        logits_file=f"{name}.logits.safetensors",
        cases=cases,
        greedy=dict(prompts=GREEDY_PROMPTS, max_new_tokens=12, eos_token_ids=eos_ids, pad_token_id=pad_id,
                    padding_side="left", new_tokens=[r["new_tokens"] for r in rows], rows=rows, min_margin=margin),
        label_probs=label_probs(model, tok, LABEL_PROMPTS, LABELS),
    )
    save_file(tensors, str(OUT / "expected" / f"{name}.logits.safetensors"), metadata={"format": "pt"})
    write_json(OUT / "expected" / f"{name}.json", exp)
    return exp


# ---------------------------------------------------------------------------------------------
# Chat templates
# ---------------------------------------------------------------------------------------------
LLAMA_DATE = {"date_string": "26 Jul 2024"}
CHAT_CASES = [
    ("llama3", [{"role": "user", "content": "Hello! Is \"café\" spelled right?"}], True, LLAMA_DATE),
    ("llama3", [{"role": "system", "content": "  You are a fair judge.\nAnswer with 'A' or 'B'.  "},
                {"role": "user", "content": "Which is better?\nA: 42\nB: \"forty-two\" — naïve"}], True, LLAMA_DATE),
    ("llama3", [{"role": "user", "content": "What is 7 + 8?"},
                {"role": "assistant", "content": "It's 15.\n"},
                {"role": "user", "content": "And 9 * 9? Über-quick, please."}], True, LLAMA_DATE),
    ("llama3", [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Say \"hi\"."},
                {"role": "assistant", "content": "hi — 👋"}], False, LLAMA_DATE),
    ("llama3", [{"role": "user", "content": "\n  Trailing and leading whitespace is trimmed.\n\n"}], False, LLAMA_DATE),
    ("qwen3", [{"role": "user", "content": "Hello! Is \"café\" spelled right?"}], True, {}),
    ("qwen3", [{"role": "system", "content": "You are a fair judge.\nAnswer with 'A' or 'B'."},
               {"role": "user", "content": "Which is better?\nA: 42\nB: \"forty-two\" — naïve"}], True, {}),
    ("qwen3", [{"role": "user", "content": "What is 7 + 8?"},
               {"role": "assistant", "content": "It's 15."},
               {"role": "user", "content": "And 9 * 9? Über-quick, please."}], True, {}),
    ("qwen3", [{"role": "user", "content": "What is 7 + 8?"},
               {"role": "assistant", "content": "<think>\n7 + 8 = 15, \"easy\".\n</think>\n\nIt's 15."},
               {"role": "user", "content": "And 9 * 9?"}], True, {}),
    ("qwen3", [{"role": "user", "content": "What is 7 + 8?"},
               {"role": "assistant", "content": "<think>\nAdd them: 15 — done.\n</think>\n\nIt's 15."}], False, {}),
    ("qwen3", [{"role": "user", "content": "Name a colour."},
               {"role": "assistant", "content": "Bleu — \"blue\"."}], False, {}),
    ("qwen3", [{"role": "system", "content": "Be brief."},
               {"role": "user", "content": "Say \"hi\" in Français."}], True, {"enable_thinking": False}),
    ("qwen3", [{"role": "user", "content": "Think first: is 2024 a leap year?"}], True, {"enable_thinking": True}),
    ("qwen3", [{"role": "user", "content": "No generation prompt here.\nJust a user turn."}], False, {}),
]


def chat_templates(tok_dirs) -> list[dict]:
    toks = {flavour: AutoTokenizer.from_pretrained(str(d)) for flavour, d in tok_dirs.items()}
    out = []
    for flavour, messages, agp, kwargs in CHAT_CASES:
        rendered = toks[flavour].apply_chat_template(messages, tokenize=False, add_generation_prompt=agp, **kwargs)
        assert isinstance(rendered, str)
        out.append(dict(template=flavour, messages=messages, add_generation_prompt=agp, kwargs=kwargs, rendered=rendered))
    return out


# ---------------------------------------------------------------------------------------------
def verify() -> None:
    """Read every written fixture back with transformers and recompute it."""
    for exp_path in sorted((OUT / "expected").glob("*.json")):
        if exp_path.name == "chat_templates.json":
            continue
        exp = json.loads(exp_path.read_text())
        d = OUT / exp["model_dir"]
        model = load_eager(d)
        tok = AutoTokenizer.from_pretrained(str(d))
        raw = Tokenizer.from_file(str(d / "tokenizer.json"))
        logits = load_file(str(OUT / "expected" / exp["logits_file"]))
        for case in exp["cases"]:
            ids = case["prompt_ids"] + case["completion_ids"]
            assert raw.encode(case["prompt"]).ids == case["prompt_ids"]
            assert raw.encode(case["completion"], add_special_tokens=False).ids == case["completion_ids"]
            again = full_logits(model, ids)
            assert torch.equal(again, logits[case["logits_tensor"]]), (exp["model"], case["prompt"])
            lp = torch.log_softmax(again, -1)
            n = len(case["prompt_ids"])
            tl = [float(lp[n - 1 + j, t]) for j, t in enumerate(case["completion_ids"])]
            assert tl == case["token_logprobs"]
        for row in exp["greedy"]["rows"]:
            seq = list(row["prompt_ids"])
            for t in row["new_tokens"]:
                assert int(torch.argmax(full_logits(model, seq)[-1])) == t
                seq.append(t)
        lab = exp["label_probs"]
        for row in lab["cases"]:
            lp = torch.log_softmax(full_logits(model, row["prompt_ids"])[-1], -1)
            assert f32list(lp[lab["label_ids"]]) == row["logprobs"]
    toks = {f: AutoTokenizer.from_pretrained(str(OUT / "tokenizers" / f)) for f in ("llama3", "qwen3")}
    raws = {f: Tokenizer.from_file(str(OUT / "tokenizers" / f / "tokenizer.json")) for f in ("llama3", "qwen3")}
    for case in json.loads((OUT / "expected" / "chat_templates.json").read_text()):
        t = toks[case["template"]]
        assert (OUT / "templates" / f"{case['template']}.jinja").read_text() == t.chat_template
        again = t.apply_chat_template(case["messages"], tokenize=False,
                                      add_generation_prompt=case["add_generation_prompt"], **case["kwargs"])
        assert again == case["rendered"]
        # a rendered prompt is encoded without special tokens: both libraries must agree
        assert t(again, add_special_tokens=False).input_ids == raws[case["template"]].encode(again, add_special_tokens=False).ids


def main() -> None:
    import hashlib

    assert hashlib.sha256(LLAMA3_TEMPLATE.encode()).hexdigest() == LLAMA3_TEMPLATE_SHA256
    assert hashlib.sha256(QWEN3_TEMPLATE.encode()).hexdigest() == QWEN3_TEMPLATE_SHA256
    for sub in ("models", "expected", "templates", "tokenizers"):
        if (OUT / sub).exists():
            shutil.rmtree(OUT / sub)
        (OUT / sub).mkdir(parents=True)
    (OUT / "templates" / "llama3.jinja").write_text(LLAMA3_TEMPLATE)
    (OUT / "templates" / "qwen3.jinja").write_text(QWEN3_TEMPLATE)

    toks = {"llama3": build_llama3_tokenizer(), "qwen3": build_qwen3_tokenizer()}
    for flavour, hf in toks.items():
        save_tokenizer(hf, flavour, OUT / "tokenizers" / flavour)
        check_tokenizer(OUT / "tokenizers" / flavour, flavour)

    summary = {}
    for spec in model_specs(toks["llama3"], toks["qwen3"]):
        d = build_model(spec, toks)
        exp = compute_expected(spec, d)
        summary[spec["name"]] = (exp["greedy"]["min_margin"], [r["finish_reason"] for r in exp["greedy"]["rows"]],
                                 [len(r["prompt_ids"]) for r in exp["greedy"]["rows"]])

    write_json(OUT / "expected" / "chat_templates.json",
               chat_templates({"llama3": OUT / "tokenizers" / "llama3", "qwen3": OUT / "tokenizers" / "qwen3"}))
    verify()
    for k, v in summary.items():
        print(f"{k:24s} min_margin={v[0]:.4f} finish={v[1]} prompt_lens={v[2]}")


if __name__ == "__main__":
    main()
