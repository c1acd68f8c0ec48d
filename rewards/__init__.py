"""Reward functions, with TRL's contract so that a user's TRL reward plugs in unchanged:

    fn(prompts: list, completions: list, **columns) -> list[float | None]

Completions (and prompts) are strings or chat message lists; `columns` are the dataset's other fields, one
list per column (`answer`, `test`, ...). `None` means "no score": not applicable, timeout, crash.

    load("math") / load("my_pkg.rewards:fn") / load("path/to/file.py:fn")    -> the function
    score([Reward("math"), Reward("code", weight=0.5)], prompts, completions, columns)
        -> Scores: each reward's scores, the weighted sum over the non-None ones, reasons for every None
    as_trl(Reward("code"))  -> a TRL reward function that runs the reward in a worker under its timeout

`score` runs every call in a worker process with a hard wall-clock timeout (see `rewards.workers`).
Imports neither torch nor Ray at module level.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import logging
import math as _math
import os
import sys
from typing import Any, Callable

_log = logging.getLogger("rewards")
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
        raise RewardSpecError(f"unknown reward '{spec}': use a built-in name ({', '.join(BUILTINS)}), "
                              "'package.module:function' or 'path/to/file.py:function'")
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


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or a chat message list (TRL conversational format)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content") or "")
    if isinstance(completion, (list, tuple)):
        return "".join(completion_text(m) for m in completion
                       if not isinstance(m, dict) or m.get("role", "assistant") == "assistant")
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
    reasons: dict[str, list[str | None]]  # why a score is None when the call failed (timeout, crash, ...)


def score(rewards: list[Reward], prompts: list, completions: list, columns: dict[str, list] | None = None,
          *, workers=None) -> Scores:
    """Score completions with every reward, each call in a worker process under its timeout."""
    from rewards.workers import Workers

    if len({r.name for r in rewards}) != len(rewards):
        raise RewardSpecError(f"reward names must be unique: {[r.name for r in rewards]}")
    own = workers is None
    workers = workers or Workers()
    try:
        per, reasons = workers.score(rewards, prompts, completions, columns or {})
    finally:
        if own:
            workers.close()
    for name, values in per.items():
        scored = [v for v in values if v is not None]
        _log.info("reward %s: mean %s over %d scored, %d None", name,
                  f"{sum(scored) / len(scored):.4f}" if scored else "-", len(scored), len(values) - len(scored))
    return Scores(per, combine(per, {r.name: r.weight for r in rewards}), reasons)


def as_trl(reward: Reward, workers=None) -> Callable:
    """`reward` as a TRL reward function (e.g. GRPOTrainer's `reward_funcs`), each call in a worker process
    under the reward's timeout. TRL's extra keyword arguments that are not per-sample columns are dropped."""
    from rewards.workers import Workers

    workers = workers or Workers()

    def fn(prompts, completions, **columns):
        columns = {k: v for k, v in columns.items() if isinstance(v, list) and len(v) == len(completions)}
        columns.pop("completion_ids", None)
        per, _ = workers.score([reward], list(prompts), list(completions), columns)
        return per[reward.name]

    fn.__name__ = fn.__qualname__ = reward.name
    fn.workers = workers
    return fn


__all__ = ["BUILTINS", "Reward", "RewardSpecError", "Scores", "as_trl", "check_scores", "combine",
           "completion_text", "load", "score"]
