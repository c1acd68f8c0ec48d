"""Format reward: does the completion state its result the way the task asks? 1.0 or 0.0.

Code rows (a `test`/`tests` column, or `task == "code"`) need a fenced code block; other rows need a
final answer that `rewards.math` can extract without falling back to "the last number". Any completion
that still contains a chat-turn marker (it ran past its own turn) scores 0.
"""

from __future__ import annotations

from rewards.code import _FENCE
from rewards.contract import completion_text
from rewards.math import extract_answer

TURN_MARKERS = ("<start_of_turn>", "<end_of_turn>")


def format_reward(prompts: list, completions: list, **columns) -> list[float | None]:
    n = len(completions)
    tasks = columns.get("task") or [None] * n
    tests = [any(columns.get(k, [None] * n)[i] for k in ("test", "tests")) for i in range(n)]
    out = []
    for completion, task, has_tests in zip(completions, tasks, tests):
        text = completion_text(completion)
        if any(marker in text for marker in TURN_MARKERS):
            out.append(0.0)
        elif task == "code" or has_tests:
            out.append(float(bool(_FENCE.search(text))))
        else:
            out.append(float(extract_answer(text, ("boxed", "answer_is")) is not None))
    return out
