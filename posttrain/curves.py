"""Smoothing and saving for the plots the stages write (rl's reward_kl.png, WARP's pareto.png, demo.png)."""

from __future__ import annotations

import math
import os
from pathlib import Path


def smooth(values: list, window: int) -> list[float]:
    """Trailing moving average over the last `window` values that exist (None and NaN skipped; NaN where
    none does)."""
    out = []
    for i in range(len(values)):
        part = [v for v in values[max(0, i - window + 1) : i + 1] if v is not None and not math.isnan(v)]
        out.append(sum(part) / len(part) if part else math.nan)
    return out


def save_figure(fig, path: Path) -> None:
    """A matplotlib figure as a PNG, written to a temp name and renamed (a reader never sees half a file)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
