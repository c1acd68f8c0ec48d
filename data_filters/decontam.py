"""Decontamination: drop rows that share a word n-gram (13 by default) with an evaluation set.

Eval files are read once in the driver (`prepare`): every string in every row (prompt, answer, tests,
messages), lower-cased words, all n-grams into a set. A training turn is contaminated when any of its
n-grams is in that set. Eval texts shorter than n words are matched whole, as a contiguous word sequence.
The set holds word tuples, not hashes, so it means the same in every worker process.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import numpy as np

from data_filters.base import FAST, FilterError, FilterResult, poly_powers, turns, word_lines

DEFAULTS = {
    "eval_files": ["data/demo/eval_math.jsonl", "data/demo/eval_code.jsonl"],
    "n": 13,
    "roles": ["system", "user", "assistant"],
    "fields": [],  # eval row fields to read; [] = every string anywhere in the row
    "min_words": 6,  # eval texts shorter than this are too generic to match on
}

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def load_ngrams(paths, n: int, fields=(), min_words: int = 6) -> tuple[frozenset, frozenset, dict]:
    """(n-grams, whole short texts, stats) of the eval files; a missing or unreadable file is a FilterError."""

    grams, short, stats = set(), set(), {"files": {}, "texts": 0, "short_texts": 0}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FilterError(f"decontam: eval file not found: {path} (set decontam.eval_files)")
        rows = 0
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise FilterError(f"decontam: {path}:{lineno}: not valid JSON ({e.msg})") from None
                rows += 1
                values = [row.get(k) for k in fields] if fields and isinstance(row, dict) else [row]
                for text in _strings(values):
                    toks = words(text)
                    if len(toks) < min_words:
                        continue
                    stats["texts"] += 1
                    if len(toks) < n:
                        short.add(tuple(toks))
                        stats["short_texts"] += 1
                    else:
                        grams.update(zip(*(toks[i:] for i in range(n))))
        stats["files"][str(path)] = rows
    stats["ngrams"] = len(grams)
    return frozenset(grams), frozenset(short), stats


@functools.lru_cache(maxsize=4)
def _by_first(short: frozenset) -> dict[str, tuple[int, ...]]:
    """First word -> the lengths of the short eval texts starting with it, so only those windows are tried."""
    out: dict[str, set] = {}
    for s in short:
        out.setdefault(s[0], set()).add(len(s))
    return {k: tuple(sorted(v)) for k, v in out.items()}


@functools.lru_cache(maxsize=4)
def _vocab(ngrams: frozenset, short: frozenset) -> tuple[frozenset, int]:
    """Every eval word, and the shortest match length: a match needs that many eval words in a row."""
    vocab = {w for g in ngrams for w in g} | {w for s in short for w in s}
    lengths = [len(s) for s in short] + ([len(next(iter(ngrams)))] if ngrams else [])
    return frozenset(vocab), min(lengths, default=1)


def find(text: str, ngrams: frozenset, short: frozenset, n: int) -> tuple[int, int, str] | None:
    """The first contaminated (start, end, matched words) span of `text`, or None."""
    toks = words(text)
    vocab, shortest = _vocab(ngrams, short)
    hit = None
    # Only runs of >= `shortest` consecutive eval words can hold a match; finding them is one bytes regex.
    flags = bytes(w in vocab for w in toks)
    for run in re.finditer(b"\x01{%d,}" % shortest, flags):
        lo, hi = run.span()
        if hi - lo >= n:
            for i, g in enumerate(zip(*(toks[lo + j : hi] for j in range(n))), lo):
                if g in ngrams:
                    hit = (i, n)
                    break
        if hit is None and short:
            by_first = _by_first(short)
            for i in range(lo, hi):
                for k in by_first.get(toks[i], ()):
                    if i + k <= hi and tuple(toks[i : i + k]) in short:
                        hit = (i, k)
                        break
                if hit:
                    break
        if hit:
            break
    if hit is None:
        return None
    # Map the word window back to characters for the rejects file.
    spans = [m.span() for m in _WORD.finditer(text)]
    start, end = spans[hit[0]][0], spans[hit[0] + hit[1] - 1][1]
    return start, end, " ".join(toks[hit[0] : hit[0] + hit[1]])


def _window_hashes(data: bytes, k: int):
    """(hashes, line) of every run of k consecutive words inside one line of `data` (lines of words joined
    by single spaces): the polynomial hash (base.POLY_BASE, mod 2^32) of the run's bytes, all in numpy
    with prefix sums (as dedup.shingle_hashes does), so a run's hash does not depend on where it sits."""
    arr = np.frombuffer(data, np.uint8)
    n = len(arr)
    powers, inverse = poly_powers(n + 1)
    prefix = np.zeros(n + 1, np.uint32)
    np.cumsum(inverse[:n] * arr, dtype=np.uint32, out=prefix[1:])
    seps = np.flatnonzero(arr <= 32)  # spaces and line breaks: words are \w+ (or UTF-8), never below 33
    starts, ends = np.concatenate([[0], seps + 1]), np.concatenate([seps, [n]])
    line = np.concatenate([[0], np.cumsum(arr[seps] == 10)])  # the line each word is on
    i = np.arange(max(0, len(starts) - k + 1))
    i = i[line[i] == line[i + k - 1]]
    s, e = starts[i], ends[i + k - 1]
    return powers[np.maximum(e, 1) - 1] * (prefix[e] - prefix[s]), line[i]


@functools.lru_cache(maxsize=4)
def _targets(ngrams: frozenset, short: frozenset) -> tuple[int, object]:
    """(k, a table marking them, the sorted hashes of the first k words of every eval n-gram and short
    text), k the fewest words any has: a match holds the first k words of what it matches."""
    k = min(len(g) for g in ngrams | short)
    lines = sorted({" ".join(g[:k]) for g in ngrams | short})
    hashes = np.unique(_window_hashes("\n".join(lines).encode(), k)[0])
    table = np.zeros(min(1 << 26, 1 << (4096 * len(hashes)).bit_length()), bool)
    table[hashes & np.uint32(len(table) - 1)] = True  # a one-hash Bloom filter: a lookup is one gather
    return k, table, hashes


def possible(texts: list[str], ngrams: frozenset, short: frozenset) -> list[bool]:
    """False for texts that cannot share a word run with the eval sets: ASCII texts none of whose runs of
    k words hashes like the start of an eval text. Other texts are True (`find` decides)."""
    out = [True] * len(texts)
    idx = [i for i, t in enumerate(texts) if t.isascii()] if FAST and (ngrams or short) else []
    if not idx:
        return out
    k, table, targets = _targets(ngrams, short)
    hashes, line = _window_hashes(word_lines([texts[i] for i in idx]), k)
    maybe = table[hashes & np.uint32(len(table) - 1)]
    hashes, line = hashes[maybe], line[maybe]
    found = np.minimum(np.searchsorted(targets, hashes), len(targets) - 1)
    hit = np.zeros(len(idx), bool)
    hit[line[targets[found] == hashes]] = True
    for j, i in enumerate(idx):
        out[i] = bool(hit[j])
    return out


def apply(
    batch: dict[str, list], *, ngrams=frozenset(), short=frozenset(), n=13, roles=("system", "user", "assistant")
) -> FilterResult:
    size = len(batch["messages"])
    keep, reasons = [True] * size, [[] for _ in range(size)]
    where = [(r, i, text) for r, messages in enumerate(batch["messages"]) for i, text in turns(messages, roles)]
    for (r, i, text), maybe in zip(where, possible([w[2] for w in where], ngrams, short)):
        if not maybe or not keep[r]:  # a row's first contaminated turn is its reason
            continue
        hit = find(text, ngrams, short, n)
        if hit:
            keep[r] = False
            reasons[r].append(
                {
                    "filter": "decontam",
                    "reason": f"shares a {n}-gram with an eval set",
                    "turn": i,
                    "span": [hit[0], hit[1]],
                    "text": text[hit[0] : hit[1]],
                }
            )
    return FilterResult(keep, {}, reasons)


def prepare(options: dict) -> dict:
    """Options -> `apply` keyword arguments: the eval n-gram sets replace the file list."""

    if int(options["n"]) < 1:
        raise FilterError(f"decontam: n must be >= 1, got {options['n']}")
    if not options["eval_files"]:
        raise FilterError("decontam: no eval_files given")
    grams, short, stats = load_ngrams(
        options["eval_files"], int(options["n"]), options["fields"], int(options["min_words"])
    )
    return {"ngrams": grams, "short": short, "n": int(options["n"]), "roles": options["roles"], "_stats": stats}
