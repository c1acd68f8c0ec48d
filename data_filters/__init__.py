"""Composable data filters over batches: PII, safety, self-identification, dedup, decontamination.

    chain = build_chain(["pii", "safety", "dedup"], {"pii": {"action": "drop"}})
    out = run_chain(chain, {"messages": [...], ...})   # + "_keep", "_reasons" columns

Each filter is a module with `DEFAULTS` (its options), an optional `prepare(options)` run once in the
driver (validation, loading eval sets), and `apply(batch, **options) -> FilterResult`, the pure batch
function. A user filter plugs in as "pkg.mod:fn" or "path/file.py:fn" with the same `fn(batch)` contract.
Imports neither torch nor Ray at module level.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.util
import json
from pathlib import Path

from data_filters.base import FilterError, FilterResult

__all__ = ["FILTERS", "FilterError", "FilterResult", "build", "build_chain", "run_chain", "load_callable"]

FILTERS = {name: f"data_filters.{name}" for name in ("pii", "safety", "identity", "dedup", "decontam")}


def load_callable(spec: str, what: str):
    """'pkg.mod:fn' or 'path/to/file.py:fn' -> the function; errors are FilterErrors naming `what`."""

    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise FilterError(f"{what}: {spec!r} is not of the form 'module:function' or 'file.py:function'")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise FilterError(f"{what}: file not found: {path}")
            mod_spec = importlib.util.spec_from_file_location(f"_user_{path.stem}", path)
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except ImportError as e:
        raise FilterError(f"{what}: cannot import {target!r}: {e}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise FilterError(f"{what}: {target!r} has no function {attr!r}")
    return fn


def module(name: str):

    if name not in FILTERS:
        close = difflib.get_close_matches(name, list(FILTERS), n=1, cutoff=0.0)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise FilterError(
            f"unknown filter '{name}'{hint}; valid filters: {', '.join(FILTERS)}, or 'module:function'"
        )
    return importlib.import_module(FILTERS[name])


def build(name: str, options: dict | None = None):
    """(name, fn, info): `fn(batch) -> FilterResult`, picklable (a partial of a module function)."""
    from data_filters.base import check_options

    if ":" in name:
        if options:
            raise FilterError(f"filter {name}: options are only for built-in filters")
        return name, load_callable(name, f"filter {name}"), {}
    mod = module(name)
    opts = check_options(name, dict(options or {}), mod.DEFAULTS)
    if hasattr(mod, "prepare"):
        opts = mod.prepare(opts)
    info = {k: v for k, v in opts.items() if k.startswith("_")}
    return name, functools.partial(mod.apply, **{k: v for k, v in opts.items() if not k.startswith("_")}), info


def build_chain(names: list[str], options: dict[str, dict] | None = None) -> list[tuple[str, object, dict]]:

    options = options or {}
    if len(set(names)) != len(names):
        raise FilterError(f"filters: a filter is listed twice in {names}")
    for key in options:
        if key not in names:
            raise FilterError(f"options given for filter '{key}', which is not in filters {names}")
    return [build(name, options.get(name)) for name in names]


def run_chain(chain, batch: dict[str, list]) -> dict[str, list]:
    """Apply the filters in order: each sees the previous ones' rewrites and only the rows still kept.

    Returns the batch's columns (rewritten where a filter rewrote them) plus `_keep` (bool) and `_reasons`
    (a JSON list per row of every reason, from the first redaction to the dropping filter).
    """
    n = len(batch["messages"])
    out = {k: list(v) for k, v in batch.items()}
    keep = [True] * n
    reasons: list[list[dict]] = [[] for _ in range(n)]
    for name, fn, _ in chain:
        alive = [r for r in range(n) if keep[r]]
        if not alive:
            break
        sub = out if len(alive) == n else {k: [v[r] for r in alive] for k, v in out.items()}
        result = fn(sub)
        if len(result.keep) != len(alive) or len(result.reasons) != len(alive):
            raise ValueError(f"filter {name} returned {len(result.keep)} rows for a batch of {len(alive)}")
        for col, values in result.columns.items():
            if col not in out:
                out[col] = [None] * n
            for j, r in enumerate(alive):
                out[col][r] = values[j]
        for j, r in enumerate(alive):
            keep[r] = bool(result.keep[j])
            for reason in result.reasons[j]:
                reasons[r].append({"filter": name, **reason})
    out["_keep"] = keep
    out["_reasons"] = [json.dumps(r, ensure_ascii=False) if r else "[]" for r in reasons]
    return out
