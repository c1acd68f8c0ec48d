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

import logging
from collections.abc import Callable

from rewards.contract import (
    BUILTINS,
    Reward,
    RewardSpecError,
    Scored,
    Scores,
    check_reasons,
    check_scores,
    combine,
    completion_text,
    is_conversational,
    load,
    trl_completions,
)

_log = logging.getLogger("rewards")


def score(
    rewards: list[Reward],
    prompts: list,
    completions: list,
    columns: dict[str, list] | None = None,
    *,
    workers=None,
    completion_ids: list | None = None,
) -> Scores:
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
        _log.info(
            "reward %s: mean %s over %d scored, %d None",
            name,
            f"{sum(scored) / len(scored):.4f}" if scored else "-",
            len(scored),
            len(values) - len(scored),
        )
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


__all__ = [
    "BUILTINS",
    "Reward",
    "RewardSpecError",
    "Scored",
    "Scores",
    "as_trl",
    "check_reasons",
    "check_scores",
    "combine",
    "completion_text",
    "is_conversational",
    "load",
    "score",
    "trl_completions",
]
