"""Reward functions, with TRL's contract so that a user's TRL reward plugs in unchanged:

    fn(prompts=..., completions=..., **columns, log_extra=..., log_metric=...) -> list[float | None]

called by keyword, as TRL's GRPOTrainer calls its reward functions. When the prompts are chat message lists
(conversational data), each completion is a list of one assistant message, `[{"role": "assistant",
"content": text}]`; otherwise prompts and completions are strings. `columns` are the dataset's other fields,
one list per column (`answer`, `solution`, `test`, `completion_ids`, ...); `log_extra(column, values)` and
`log_metric(name, value)` record what a reward wants logged (TRL's completions table and metrics). `None`
means "no score": not applicable, timeout, crash. A reward may return a `Scored` list: its scores (a plain
list to TRL) with `.reasons`, why each sample failed.

    load("math") / load("my_pkg.rewards:fn") / load("path/to/file.py:fn")    -> the function
    score([Reward("math"), Reward("code", weight=0.5)], prompts, completions, columns)
        -> Scores: each reward's scores, the weighted sum over the non-None ones, reasons for every None and
           every failed sample the reward explained, what the rewards logged
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
        raise ValueError("prompts mix chat message lists and strings: a batch must be all conversational or all "
                         "plain text (TRL decides the completions' form from the prompts)")
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


def check_reasons(scores: Any, n: int, name: str) -> list[str | None]:
    """The reasons a `Scored` result gives (none for a plain list)."""
    reasons = getattr(scores, "reasons", None)
    if reasons is None:
        return [None] * n
    if not isinstance(reasons, (list, tuple)) or len(reasons) != n \
            or not all(r is None or isinstance(r, str) for r in reasons):
        raise RewardSpecError(f"reward '{name}' returned reasons that are not {n} strings or None: {reasons!r:.200}")
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


def score(rewards: list[Reward], prompts: list, completions: list, columns: dict[str, list] | None = None,
          *, workers=None, completion_ids: list | None = None) -> Scores:
    """Score completions with every reward, each call in a worker process under its timeout, each reward
    called as TRL calls it (see the module docstring): chat message lists as prompts make the completions
    (strings) conversational. `completion_ids`, when given, reach the rewards as TRL's column of that name."""
    from rewards.workers import Workers

    if len({r.name for r in rewards}) != len(rewards):
        raise RewardSpecError(f"reward names must be unique: {[r.name for r in rewards]}")
    columns = dict(columns or {})
    if completion_ids is not None:
        columns["completion_ids"] = list(completion_ids)
    own = workers is None
    workers = workers or Workers()
    try:
        per, reasons, logs = workers.score(rewards, prompts, completions, columns)
    finally:
        if own:
            workers.close()
    for name, values in per.items():
        scored = [v for v in values if v is not None]
        _log.info("reward %s: mean %s over %d scored, %d None", name,
                  f"{sum(scored) / len(scored):.4f}" if scored else "-", len(scored), len(values) - len(scored))
    return Scores(per, combine(per, {r.name: r.weight for r in rewards}), reasons, logs)


def _picklable(value) -> bool:
    import pickle

    try:
        pickle.dumps(value)
    except Exception:  # noqa: BLE001 - whatever the reason, it cannot reach a worker
        return False
    return True


def as_trl(reward: Reward, workers=None) -> Callable:
    """`reward` as a TRL reward function (e.g. GRPOTrainer's `reward_funcs`), each call in a worker process
    under the reward's timeout. TRL's per-sample keyword arguments (columns, `completion_ids`) and its other
    picklable ones (`trainer_state`) reach the reward; what the reward logs with `log_extra`/`log_metric` is
    handed to TRL's callbacks afterwards; arguments that cannot cross to a process (`environments`) do not."""
    from rewards.workers import Workers

    workers = workers or Workers()

    def fn(prompts, completions, log_extra=None, log_metric=None, **kwargs):
        n = len(completions)
        kwargs = {k: v for k, v in kwargs.items() if _picklable(v)}
        columns = {k: v for k, v in kwargs.items() if isinstance(v, list) and len(v) == n}
        extras = {k: v for k, v in kwargs.items() if k not in columns}
        per, _, logs = workers.score([reward], list(prompts), list(completions), columns, extras=extras)
        for kind, key, value in logs[reward.name]:
            callback = log_extra if kind == "extra" else log_metric
            if callback is not None:
                callback(key, value)
        return per[reward.name]

    fn.__name__ = fn.__qualname__ = reward.name
    fn.workers = workers
    return fn


__all__ = ["BUILTINS", "Reward", "RewardSpecError", "Scored", "Scores", "as_trl", "check_reasons", "check_scores",
           "combine", "completion_text", "is_conversational", "load", "score", "trl_completions"]
