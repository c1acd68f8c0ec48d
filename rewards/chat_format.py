"""The Gemma 3 chat format (report, Table 4), as token ids: `[BOS]` once, then per turn
`<start_of_turn>{user|model}\n{content}<end_of_turn>\n`. A system turn is folded into the first user turn, as
Gemma's own chat template does. A model turn's content and its `<end_of_turn>` are what a model is trained to
produce (the loss mask).

Here, not in posttrain.data, so that the `reward_model` reward encodes exactly what `posttrain rm` trains on
without importing posttrain. Pure Python: the tokenizer is any HF tokenizer with Gemma's special tokens.
"""

from __future__ import annotations

START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"
ROLE_NAMES = {"user": "user", "assistant": "model", "model": "model", "system": "system"}


def gemma_turns(messages: list[dict]) -> list[tuple[str, str]]:
    """(gemma role, content) pairs with a leading system turn folded into the first user turn."""
    turns = [(ROLE_NAMES[m["role"]], m["content"]) for m in messages]
    if turns and turns[0][0] == "system":
        system = turns.pop(0)[1]
        if turns and turns[0][0] == "user":
            turns[0] = ("user", f"{system}\n\n{turns[0][1]}")
        else:
            turns.insert(0, ("user", system))
    return turns


def encode_text(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def tokenize_chat(tokenizer, messages: list[dict], max_length: int) -> tuple[list[int], list[bool]]:
    """input ids and a per-token mask marking the tokens the model is trained to produce."""
    eot = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    ids, mask = [tokenizer.bos_token_id], [False]
    for role, content in gemma_turns(messages):
        head = encode_text(tokenizer, f"{START_OF_TURN}{role}\n")
        body = encode_text(tokenizer, content) + [eot]
        tail = encode_text(tokenizer, "\n")
        ids += head + body + tail
        mask += [False] * len(head) + [role == "model"] * len(body) + [False] * len(tail)
    return ids[:max_length], mask[:max_length]


# `gemma_turns` + `tokenize_chat` + posttrain.data.prompt_ids as a Jinja chat template, for every tokenizer
# posttrain writes
# (so that `apply_chat_template`, TRL, transformers' pipelines and vLLM format chats as posttrain trained them).
# Gemma 3's own template, except that contents are not stripped and a system turn with no user turn after it
# becomes a user turn of its own, as `gemma_turns` does.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- set ns = namespace(prefix='') -%}"
    "{%- set turns = messages -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set turns = messages[1:] -%}"
    "{%- if turns and turns[0]['role'] == 'user' -%}"
    "{%- set ns.prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}"
    "{{ '<start_of_turn>user\n' + messages[0]['content'] + '<end_of_turn>\n' }}"
    "{%- endif -%}"
    "{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- set role = 'model' if message['role'] in ('assistant', 'model') else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (ns.prefix if loop.first else '') + message['content']"
    " + '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)
