"""The filter contract and the few helpers every filter shares.

A filter is a pure function `fn(batch: dict[str, list]) -> FilterResult`: `batch` holds columns of equal
length (at least `messages`, a list of `{"role", "content"}` dicts per row). It returns a keep mask, the
columns it rewrote (e.g. redacted `messages`) and, per row, the reasons it dropped or changed that row.
Pure means no state between calls, so the same function runs under `datasets.map(batched=True,
num_proc=N)` and Ray Data's `map_batches` and gives the same answer.
"""

from __future__ import annotations

import bisect
from typing import NamedTuple


class FilterResult(NamedTuple):
    keep: list[bool]
    columns: dict[str, list]  # rewritten columns only ({} if the filter changes nothing)
    # per row: [{"filter", "reason", "turn", "span": [start, end], "type"?, "text"?}, ...]; a kept row with
    # reasons was redacted, a dropped row's reasons say why.
    reasons: list[list[dict]]


def turns(messages: list[dict], roles) -> list[tuple[int, str]]:
    """(turn index, content) of the turns whose role is in `roles`."""
    return [(i, m["content"]) for i, m in enumerate(messages) if m["role"] in roles]


def texts_containing(literals, everything: str, offsets: list[int]) -> list[int]:
    """Indices of the texts (joined into `everything`, text i starting at `offsets[i]`) that hold any of
    `literals`: str.find over the whole batch, jumping to the next text after a hit."""
    found = set()
    for lit in literals:
        i = everything.find(lit)
        while i != -1:
            j = bisect.bisect_right(offsets, i) - 1
            found.add(j)
            i = everything.find(lit, offsets[j + 1]) if j + 1 < len(offsets) else -1
    return sorted(found)


def redact(text: str, spans: list[tuple[int, int, str]]) -> str:
    """Replace each (start, end, placeholder) span; spans must be sorted and disjoint."""
    out, pos = [], 0
    for start, end, placeholder in spans:
        out.append(text[pos:start])
        out.append(placeholder)
        pos = end
    out.append(text[pos:])
    return "".join(out)


def merge_spans(spans: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Sort and merge overlapping (start, end, type) spans; the longer span's type wins."""
    merged: list[list] = []
    for start, end, kind in sorted(spans, key=lambda s: (s[0], -(s[1] - s[0]))):
        if merged and start < merged[-1][1]:
            last = merged[-1]
            if end - start > last[1] - last[0]:
                last[2] = kind
            last[1] = max(last[1], end)
        else:
            merged.append([start, end, kind])
    return [tuple(s) for s in merged]


def check_options(name: str, options: dict, defaults: dict) -> dict:
    """Defaults overlaid by `options`; an unknown option key is a UserError naming the closest one."""
    import difflib

    from posttrain.errors import UserError

    for key in options:
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1, cutoff=0.0)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"{name}: unknown option '{key}'{hint}; valid: {', '.join(defaults)}")
    return {**defaults, **options}
