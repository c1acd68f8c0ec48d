"""Chat data: read jsonl/parquet/HF-datasets dirs, validate rows, Gemma turn formatting with loss masks.

Gemma 3 chat format (report, Table 4): `[BOS]` once, then per turn
`<start_of_turn>{user|model}\n{content}<end_of_turn>\n`. A system turn is folded into the first user turn,
as Gemma's own chat template does. Loss covers only model-turn content and its `<end_of_turn>`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from posttrain.errors import UserError

START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"
ROLE_NAMES = {"user": "user", "assistant": "model", "model": "model", "system": "system"}


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{lineno}: a row must be a JSON object")
            row["_where"] = f"{path}:{lineno}"
            rows.append(row)
    return rows


def read_rows(path: str | Path, *, validate: bool = True) -> list[dict]:
    """Rows of a .jsonl file, a .parquet file or a `datasets.save_to_disk` dir, validated as chat rows."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"dataset not found: {path}")
    if path.is_dir():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:  # noqa: BLE001 - any failure here means "not a dataset dir"
            raise UserError(f"{path}: not a datasets dir saved with save_to_disk ({e})") from None
        rows = [dict(r, _where=f"{path}[{i}]") for i, r in enumerate(ds)]
    elif path.suffix == ".parquet":
        import datasets

        ds = datasets.Dataset.from_parquet(str(path))
        rows = [dict(r, _where=f"{path}[{i}]") for i, r in enumerate(ds)]
    elif path.suffix in (".jsonl", ".json"):
        rows = _read_jsonl(path)
    else:
        raise UserError(f"{path}: unsupported dataset format (use .jsonl, .parquet or a datasets dir)")
    if not rows:
        raise UserError(f"{path}: the dataset is empty")
    if validate:
        for row in rows:
            validate_messages(row.get("messages"), row["_where"])
    return rows


def validate_messages(messages, where: str) -> None:
    if messages is None:
        raise UserError(f"{where}: row has no 'messages'")
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: 'messages' must be a non-empty list of {{role, content}}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise UserError(f"{where}: messages[{i}] must have 'role' and 'content'")
        if m["role"] not in ROLE_NAMES:
            raise UserError(f"{where}: messages[{i}] has unknown role '{m['role']}' "
                            f"(expected one of {sorted(ROLE_NAMES)})")
        if not isinstance(m["content"], str):
            raise UserError(f"{where}: messages[{i}].content must be a string")


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


# `gemma_turns` + `tokenize_chat` + `prompt_ids` as a Jinja chat template, for every tokenizer posttrain writes
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


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def tokenize_chat(tokenizer, messages: list[dict], max_length: int) -> tuple[list[int], list[bool]]:
    """input ids and a per-token mask marking the tokens the model is trained to produce."""
    eot = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    ids, mask = [tokenizer.bos_token_id], [False]
    for role, content in gemma_turns(messages):
        head = _encode(tokenizer, f"{START_OF_TURN}{role}\n")
        body = _encode(tokenizer, content) + [eot]
        tail = _encode(tokenizer, "\n")
        ids += head + body + tail
        mask += [False] * len(head) + [role == "model"] * len(body) + [False] * len(tail)
    return ids[:max_length], mask[:max_length]


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """BOS + the turns + `<start_of_turn>model\\n`: the prefix from which a model reply is generated."""
    ids, _ = tokenize_chat(tokenizer, messages, max_length=1 << 30)
    return ids + _encode(tokenizer, f"{START_OF_TURN}model\n")


def tokenize_rows(tokenizer, rows: list[dict], max_length: int) -> list[dict]:
    """Tokenised examples; rows whose model turns are truncated away entirely are an error, not a drop."""
    out = []
    for row in rows:
        ids, mask = tokenize_chat(tokenizer, row["messages"], max_length)
        if not any(mask[1:]):
            raise UserError(f"{row.get('_where', '?')}: no model-turn tokens within max_length={max_length} "
                            "(a row needs an assistant reply)")
        out.append({"input_ids": ids, "loss_mask": mask})
    return out


def examples_hash(examples: list[dict]) -> str:
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex["input_ids"], ex["loss_mask"]]).encode())
    return h.hexdigest()
