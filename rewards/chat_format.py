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
