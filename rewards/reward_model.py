"""The built-in reward `reward_model`: scores from a reward-model dir (a WARM average written by `posttrain rm`).

    reward_model(prompts, completions, *, model="runs/demo/rm", **columns) -> list[float | None]

TRL's reward contract. Prompts are user text or chat message lists; completions are text or assistant message
lists. The RM reads `[BOS] <start_of_turn>user ... <end_of_turn> <start_of_turn>model {completion}<end_of_turn>`
(Gemma turns, `rewards.chat_format`) and its scalar head is read at `<end_of_turn>`, the last token: exactly the
format `posttrain rm` trains on (`encode` below is shared by both).

In RL, scoring runs batched on a Ray actor: wrap `RewardModelScorer` with `ray.remote` (or
`posttrain.cluster.map_actors(RewardModelScorer, batches, actor_args=(rm_dir,))`, method `run`), so the policy
process never holds the RM. No torch or Ray import at module level.
"""

from __future__ import annotations

import functools
from typing import Any


def _messages(turn: Any, role: str) -> list[dict]:
    if turn is None:
        return []
    if isinstance(turn, str):
        return [{"role": role, "content": turn}]
    if isinstance(turn, dict):
        return [turn]
    return list(turn)


def encode(tokenizer, prompt: Any, completion: Any, max_length: int) -> list[int]:
    """Token ids of prompt + completion in Gemma turns, ending at the completion's `<end_of_turn>`.
    Longer inputs lose the start of the prompt (BOS kept): the end of the reply is what the RM scores."""
    from rewards import chat_format

    messages = _messages(prompt, "user") + _messages(completion, "assistant")
    for m in messages:
        if (
            not isinstance(m, dict)
            or m.get("role") not in chat_format.ROLE_NAMES
            or not isinstance(m.get("content"), str)
        ):
            raise ValueError(
                f"reward-model input: not a chat message with a known role and string content: {m!r:.200}"
            )
    ids, _ = chat_format.tokenize_chat(tokenizer, messages, max_length=1 << 30)
    eot = tokenizer.convert_tokens_to_ids(chat_format.END_OF_TURN)
    while ids and ids[-1] != eot:  # drop the trailing "\n" after the last <end_of_turn>
        ids.pop()
    if len(ids) > max_length:
        ids = ids[:1] + ids[len(ids) - max_length + 1 :]
    return ids


def pad_batch(seqs: list[list[int]], pad_id: int):
    """Right-padded (input_ids, attention_mask); sequence-classification heads read the last non-pad token."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


class RewardModelScorer:
    """One reward model in memory; `score` returns one float per (prompt, completion), computed in
    batches of similar lengths (less padding). Usable in-process or as a Ray actor (`run(batch)`)."""

    def __init__(
        self,
        model_dir: str,
        *,
        batch_size: int = 16,
        max_length: int = 1024,
        device: str | None = None,
        threads: int | None = None,
        dtype: str = "float32",
    ):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = (
            AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=getattr(torch, dtype))
            .to(self.device)
            .eval()
        )
        if self.model.config.num_labels != 1:
            raise ValueError(
                f"{model_dir}: a reward model has one output (num_labels=1), got {self.model.config.num_labels}"
            )
        self.batch_size, self.max_length = batch_size, max_length

    @classmethod
    def from_model(cls, model, tokenizer, *, batch_size: int = 16, max_length: int = 1024) -> RewardModelScorer:
        """A scorer around a model already in memory (e.g. a member right after training)."""
        self = cls.__new__(cls)
        self.model, self.tokenizer = model.eval(), tokenizer
        self.device = next(model.parameters()).device
        self.batch_size, self.max_length = batch_size, max_length
        return self

    def score_ids(self, seqs: list[list[int]]) -> list[float]:
        import torch

        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        out = [0.0] * len(seqs)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                ids, mask = pad_batch([seqs[i] for i in chunk], self.tokenizer.pad_token_id)
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
                for i, value in zip(chunk, logits[:, 0].float().tolist()):
                    out[i] = value
        return out

    def score(self, prompts: list, completions: list) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        return self.score_ids(
            [encode(self.tokenizer, p, c, self.max_length) for p, c in zip(prompts, completions)]
        )

    def run(self, batch: dict) -> list[float]:
        """Actor entry point: {"prompts": [...], "completions": [...]} -> scores."""
        return self.score(batch["prompts"], batch["completions"])


@functools.lru_cache(maxsize=4)
def _scorer(model: str, batch_size: int, max_length: int) -> RewardModelScorer:
    return RewardModelScorer(model, batch_size=batch_size, max_length=max_length)


def reward_model(
    prompts: list,
    completions: list,
    *,
    model: str | None = None,
    batch_size: int = 16,
    max_length: int = 1024,
    **columns,
) -> list[float | None]:
    """The RM's scalar score per completion (higher is better); None for a missing completion."""
    if not model:
        raise ValueError(
            "reward 'reward_model' needs the reward-model dir: "
            "load('rewards.reward_model:reward_model', model='runs/demo/rm')"
        )
    present = [i for i, c in enumerate(completions) if c is not None]
    scores = _scorer(str(model), batch_size, max_length).score(
        [prompts[i] for i in present], [completions[i] for i in present]
    )
    out: list[float | None] = [None] * len(completions)
    for i, s in zip(present, scores):
        out[i] = s
    return out
