"""The reward contract, shared by the package's API (`rewards.score`, `rewards.as_trl`) and the worker processes
that run the rewards (`rewards.workers`): loading a reward spec, the calling convention (TRL's: conversational
completions for chat prompts), validating what a reward returns, combining scores. `rewards/__init__.py` is the
public face and re-exports all of it; it lives here so that the workers need not import the package's API.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import math as _math
import os
import sys
from collections.abc import Callable
from typing import Any

BUILTINS = {
    "math": "rewards.math:math_reward",
    "code": "rewards.code:code_reward",
    "format": "rewards.format:format_reward",
    "reward_model": "rewards.reward_model:reward_model",  # needs model=<RM dir> (a `posttrain rm` output)
}


class RewardSpecError(ValueError):
    """A reward spec that names no loadable function, or a reward that breaks the contract."""


@functools.cache
def _load_module_file(path: str):
    name = "_reward_file_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # so pickling/dataclasses inside the file work
    spec.loader.exec_module(module)
    return module


def load(spec: str, **options) -> Callable:
    """`math` | `package.module:function` | `path/to/file.py:function` -> the reward function.

    `options` are bound as keyword arguments (e.g. `load("math", answer_column="solution")`).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise RewardSpecError(f"a reward spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    target = BUILTINS.get(spec, spec)
    if ":" not in target:
        raise RewardSpecError(
            f"unknown reward '{spec}': use a built-in name ({', '.join(BUILTINS)}), "
            "'package.module:function' or 'path/to/file.py:function'"
        )
    where, _, name = target.rpartition(":")
    try:
        if where.endswith(".py"):
            if not os.path.isfile(where):
                raise RewardSpecError(f"reward '{spec}': file not found: {where}")
            module = _load_module_file(os.path.abspath(where))
        else:
            module = importlib.import_module(where)
    except RewardSpecError:
        raise
    except Exception as e:
        raise RewardSpecError(f"reward '{spec}': cannot import {where}: {type(e).__name__}: {e}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise RewardSpecError(f"reward '{spec}': {where} has no function '{name}'")
    if options:
        fn = functools.update_wrapper(functools.partial(fn, **options), fn)
    return fn


class Scored(list):
    """A reward's scores, a plain list to TRL and to any other caller, with `reasons`: why each sample failed
    or has no score (None where there is nothing to say)."""

    def __init__(self, scores=(), reasons=None):
        super().__init__(scores)
        self.reasons = list(reasons) if reasons is not None else [None] * len(self)


def is_conversational(prompt: Any) -> bool:
    """TRL's test: a prompt is conversational when it is a list of messages with roles."""
    return isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], dict) and "role" in prompt[0]


def trl_completions(prompts: list, completions: list) -> list:
    """Completions as TRL hands them to a reward: for conversational prompts, a list of one assistant message
    each (completions that already are message lists stay as they are); otherwise as they are."""
    forms = {is_conversational(p) for p in prompts}
    if len(forms) > 1:
        raise ValueError(
            "prompts mix chat message lists and strings: a batch must be all conversational or all "
            "plain text (TRL decides the completions' form from the prompts)"
        )
    if forms != {True}:
        return list(completions)
    return [[{"role": "assistant", "content": c}] if isinstance(c, str) else c for c in completions]


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or a chat message list (TRL conversational format)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content") or "")
    if isinstance(completion, (list, tuple)):
        return "".join(
            completion_text(m)
            for m in completion
            if not isinstance(m, dict) or m.get("role", "assistant") == "assistant"
        )
    return "" if completion is None else str(completion)


def check_scores(scores: Any, n: int, name: str) -> list[float | None]:
    """Validate a reward's return value against the contract; NaN counts as no score."""
    if not isinstance(scores, (list, tuple)) or len(scores) != n:
        raise RewardSpecError(f"reward '{name}' must return a list of {n} scores, got {scores!r:.200}")
    out = []
    for s in scores:
        if s is None:
            out.append(None)
        elif isinstance(s, (int, float)) and not isinstance(s, complex):
            out.append(None if _math.isnan(s) else float(s))
        else:
            try:
                value = float(s)  # numpy / torch scalars
            except (TypeError, ValueError):
                raise RewardSpecError(f"reward '{name}' returned a non-number score {s!r:.100}") from None
            out.append(None if _math.isnan(value) else value)
    return out


def check_reasons(scores: Any, n: int, name: str) -> list[str | None]:
    """The reasons a `Scored` result gives (none for a plain list)."""
    reasons = getattr(scores, "reasons", None)
    if reasons is None:
        return [None] * n
    if (
        not isinstance(reasons, (list, tuple))
        or len(reasons) != n
        or not all(r is None or isinstance(r, str) for r in reasons)
    ):
        raise RewardSpecError(
            f"reward '{name}' returned reasons that are not {n} strings or None: {reasons!r:.200}"
        )
    return list(reasons)


def combine(scores: dict[str, list[float | None]], weights: dict[str, float]) -> list[float | None]:
    """Weighted sum per sample over the rewards that scored it; None where none did."""
    names = list(scores)
    n = len(scores[names[0]]) if names else 0
    out: list[float | None] = []
    for i in range(n):
        parts = [weights.get(k, 1.0) * scores[k][i] for k in names if scores[k][i] is not None]
        out.append(sum(parts) if parts else None)
    return out


@dataclasses.dataclass
class Reward:
    spec: str  # built-in name, package.module:function, or path/to/file.py:function
    weight: float = 1.0
    options: dict = dataclasses.field(default_factory=dict)  # keyword arguments bound to the function
    timeout: float = 120.0  # hard wall-clock limit per call, in seconds
    batch_size: int = 64  # samples per call: calls run in parallel, and a failure costs at most one call
    name: str = ""  # key in logs and reports; default: the spec

    def __post_init__(self):
        self.name = self.name or self.spec


@dataclasses.dataclass
class Scores:
    per_reward: dict[str, list[float | None]]
    combined: list[float | None]
    # why a sample has no score (the call timed out, crashed, ...) or, where the reward says (`Scored`), why it
    # failed (e.g. the code reward's "timeout", "exception: ValueError", "wrong value"); None otherwise
    reasons: dict[str, list[str | None]]
    # per reward, what it logged, in call order: ("extra", column, values) and ("metric", name, value)
    logs: dict[str, list[tuple]] = dataclasses.field(default_factory=dict)
