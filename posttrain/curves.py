"""Smoothing for the training curves the stages plot (rl's reward_kl.png, the demo's demo.png)."""

from __future__ import annotations

import math


def smooth(values: list, window: int) -> list[float]:
    """Trailing moving average over the last `window` values that exist (None and NaN skipped; NaN where
    none does)."""
    out = []
    for i in range(len(values)):
        part = [v for v in values[max(0, i - window + 1) : i + 1] if v is not None and not math.isnan(v)]
        out.append(sum(part) / len(part) if part else math.nan)
    return out
