"""Reward functions for the rl tests, loaded by path (`tests/posttrain/rl_rewards.py:fn`) like a user's."""

import os
import time

from rewards import completion_text

LETTERS = set("abcdefghijklm")


def letter_share(prompts, completions, **columns):
    """Share of the completion's characters in a-m: learnable by a tiny random model (~5% at init).
    (Chat prompts make the completions TRL's one assistant message each: `completion_text` reads either.)"""
    texts = [completion_text(c) for c in completions]
    return [sum(ch in LETTERS for ch in t) / max(1, len(t)) for t in texts]


def hang_or_crash(prompts, completions, id=None, **columns):
    """letter_share, except that it hangs on rows whose id ends in 1 and kills its process on rows whose
    id ends in 2: those samples must score None and the step must go on."""
    for row_id in id or []:
        if str(row_id).endswith("1"):
            time.sleep(3600)
        if str(row_id).endswith("2"):
            os._exit(3)
    return letter_share(prompts, completions)


def letter_binary(prompts, completions, **columns):
    """1.0 when at least 1/8 of the characters are in a-m, else 0.0: a 0/1 reward (~1/3 pass at init)."""
    return [float(s >= 0.125) for s in letter_share(prompts, completions)]
