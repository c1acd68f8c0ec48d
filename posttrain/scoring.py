"""The `rewards:` config section that `rl`, `warp` and `eval` share, and scoring groups of completions with it.

rewards:                              # `rewards: [math, code]` is short for `rewards: {names: [math, code]}`
  names: [math, code, reward_model]   # built-ins, package.module:function or path/to/file.py:function
  weights: [1.0, 1.0, 0.1]
  reward_model: runs/demo/rm
  timeout: 120                        # per reward call, hard (a worker process is killed)
"""

from __future__ import annotations

import dataclasses
import typing

from posttrain import artifacts
from posttrain.config import doc
from posttrain.errors import UserError

ISOLATIONS = ("bwrap", "rlimits")


@dataclasses.dataclass
class Rewards:
    SHORTHAND: typing.ClassVar[str] = "names"  # `rewards: [math, code]` == `rewards: {names: [math, code]}`

    names: list[str] = doc(
        ["math", "code"],
        "rewards: built-in names (math, code, format, reward_model), "
        "package.module:function or path/to/file.py:function",
    )
    weights: list[float] | None = doc(None, "one weight per reward in the combined reward (default 1)")
    reward_model: str | None = doc(None, "reward-model dir (a `posttrain rm` output) for the reward_model reward")
    timeout: float = doc(120.0, "hard wall-clock limit per reward call, in seconds")
    batch_size: int = doc(64, "samples per reward call (calls run in parallel in the workers)")
    workers: int = doc(2, "reward worker processes")
    code_timeout: float = doc(10.0, "wall-clock limit per program run by the code reward, in seconds")
    sandbox: str = doc("bwrap", "code sandbox: 'bwrap', or 'rlimits' (no isolation: unsafe)")


def check(section: Rewards) -> None:
    if not section.names:
        raise UserError("at least one reward is needed (rewards.names=math,code)")
    if section.weights is not None and len(section.weights) != len(section.names):
        raise UserError(f"rewards.weights has {len(section.weights)} values for {len(section.names)} rewards")
    if section.sandbox not in ISOLATIONS:
        raise UserError(f"rewards.sandbox must be one of {ISOLATIONS}, got '{section.sandbox}'")
    if min(section.batch_size, section.workers) < 1:
        raise UserError("rewards.batch_size and rewards.workers must be >= 1")


def build(section: Rewards) -> list:
    """The section's rewards.Reward list, each checked loadable now. A `module:function` reward is named by
    its function in logs and reports (its full spec when two share a function name)."""
    import rewards

    check(section)
    weights = section.weights or [1.0] * len(section.names)
    short = [spec.rsplit(":", 1)[-1] for spec in section.names]
    out = []
    for spec, weight, name in zip(section.names, weights, short):
        options = {}
        if spec == "code":
            options = {"timeout": section.code_timeout, "isolation": section.sandbox}
        elif spec == "reward_model":
            if not section.reward_model:
                raise UserError("the reward_model reward needs rewards.reward_model=DIR (a `posttrain rm` output)")
            artifacts.require_done(section.reward_model, "reward model")
            options = {"model": section.reward_model}
        try:
            rewards.load(spec, **options)  # fail now, with a clear message, not inside a worker
        except rewards.RewardSpecError as e:
            raise UserError(str(e)) from None
        out.append(
            rewards.Reward(
                spec,
                weight=weight,
                options=options,
                timeout=section.timeout,
                batch_size=section.batch_size,
                name=name if short.count(name) == 1 else spec,
            )
        )
    if "code" in section.names:
        import sandboxes

        try:
            sandboxes.check(sandboxes.Limits(isolation=section.sandbox))
        except sandboxes.SandboxUnavailable as e:
            raise UserError(str(e)) from None
    return out


SKIP_COLUMNS = ("messages", "_where")


def columns(rows: list[dict], repeat: list[int] | None = None) -> dict[str, list]:
    """The rows' dataset columns as the rewards get them, one list per column, each row's value `repeat[i]`
    times (once per completion of that row)."""
    repeat = repeat or [1] * len(rows)
    keys = sorted({k for r in rows for k in r if k not in SKIP_COLUMNS})
    return {k: [r.get(k) for r, n in zip(rows, repeat) for _ in range(n)] for k in keys}


def score_groups(reward_list, workers, rows: list[dict], messages: list, completions: list[list]) -> dict:
    """Scores of every completion of `rows` (completions[i] = that row's samples), shaped like them:
    {"combined": [[...]], "per_reward": {name: [[...]]}, "reasons": {name: [[...]]}}."""
    import rewards

    per_row = [len(c) for c in completions]
    flat_msgs = [m for m, n in zip(messages, per_row) for _ in range(n)]
    flat = [text for row in completions for text in row]
    s = rewards.score(reward_list, flat_msgs, flat, columns(rows, per_row), workers=workers)

    def unflat(values):
        out, i = [], 0
        for n in per_row:
            out.append(values[i : i + n])
            i += n
        return out

    return {
        "combined": unflat(s.combined),
        "per_reward": {k: unflat(v) for k, v in s.per_reward.items()},
        "reasons": {k: unflat(v) for k, v in s.reasons.items()},
    }
