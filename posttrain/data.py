"""Chat data: read jsonl/parquet/HF-datasets dirs, validate rows, tokenise them in the Gemma 3 chat format
(rewards/chat_format.py) with loss masks covering only model-turn content and its `<end_of_turn>`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from posttrain.errors import UserError
from rewards.chat_format import (  # noqa: F401 (the format's names, here too)
    CHAT_TEMPLATE,
    END_OF_TURN,
    ROLE_NAMES,
    START_OF_TURN,
    encode_text,
    gemma_turns,
    tokenize_chat,
)


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
            raise UserError(
                f"{where}: messages[{i}] has unknown role '{m['role']}' (expected one of {sorted(ROLE_NAMES)})"
            )
        if not isinstance(m["content"], str):
            raise UserError(f"{where}: messages[{i}].content must be a string")


def prompt_messages(row: dict) -> list[dict]:
    """A row's messages without its trailing reference reply: what a model is prompted with."""
    messages = list(row["messages"])
    while messages and messages[-1]["role"] in ("assistant", "model"):
        messages.pop()
    if not messages:
        raise UserError(f"{row.get('_where', '?')}: no user turn to prompt with")
    return messages


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """BOS + the turns + `<start_of_turn>model\\n`: the prefix from which a model reply is generated."""
    ids, _ = tokenize_chat(tokenizer, messages, max_length=1 << 30)
    return ids + encode_text(tokenizer, f"{START_OF_TURN}model\n")


def tokenize_rows(tokenizer, rows: list[dict], max_length: int) -> list[dict]:
    """Tokenised examples; rows whose model turns are truncated away entirely are an error, not a drop."""
    out = []
    for row in rows:
        ids, mask = tokenize_chat(tokenizer, row["messages"], max_length)
        if not any(mask[1:]):
            raise UserError(
                f"{row.get('_where', '?')}: no model-turn tokens within max_length={max_length} "
                "(a row needs an assistant reply)"
            )
        out.append({"input_ids": ids, "loss_mask": mask})
    return out


def examples_hash(examples: list[dict]) -> str:
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex["input_ids"], ex["loss_mask"]]).encode())
    return h.hexdigest()
