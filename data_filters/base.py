"""The filter contract and the few helpers every filter shares.

A filter is a pure function `fn(batch: dict[str, list]) -> FilterResult`: `batch` holds columns of equal
length (at least `messages`, a list of `{"role", "content"}` dicts per row). It returns a keep mask, the
columns it rewrote (e.g. redacted `messages`) and, per row, the reasons it dropped or changed that row.
Pure means no state between calls, so the same function runs under `datasets.map(batched=True,
num_proc=N)` and Ray Data's `map_batches` and gives the same answer.
"""

from __future__ import annotations

import bisect
import functools
import re
from typing import NamedTuple


class FilterError(ValueError):
    """Bad filter input (an unknown option, a missing eval file, a spec that names nothing): the stage that runs
    the filters turns it into its own one-line error."""


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


class Joined:
    """Texts joined by a separator once per subset of them, for literal triggers (str.find over one string)."""

    def __init__(self, texts: list[str], sep: str = "\x00"):
        self.texts, self.sep, self._cache = texts, sep, {}

    def containing(self, literals, idx: list[int]) -> list[int]:
        """The indices in `idx` whose text holds one of `literals`."""
        key = id(idx)
        if key not in self._cache:
            offsets, pos = [], 0
            for i in idx:
                offsets.append(pos)
                pos += len(self.texts[i]) + 1
            self._cache[key] = (idx, self.sep.join(self.texts[i] for i in idx), offsets)
        _, everything, offsets = self._cache[key]
        return [idx[j] for j in texts_containing(literals, everything, offsets)]


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
    """Defaults overlaid by `options`; an unknown option key is a FilterError naming the closest one."""
    import difflib

    for key in options:
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1, cutoff=0.0)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise FilterError(f"{name}: unknown option '{key}'{hint}; valid: {', '.join(defaults)}")
    return {**defaults, **options}


# ------------------------------------------------------------------------------------ RE2 candidate scans
# Python's `re` scans text at 5-40 MB/s; RE2 (google-re2, a DFA) at hundreds. On ASCII text RE2 and `re`
# agree on every construct RE2 accepts (classes, \b, case folding) once `\s` is spelled out, so an RE2
# copy of a pattern -- lookarounds dropped, which only widens it -- finds every ASCII text where the
# Python pattern matches, and few others. Filters use it to pick the texts their exact Python regexes
# then run on; texts with non-ASCII characters (where \w, \d, \s and case folding differ) keep the
# literal triggers.
_ASCII_SPACE = r"\t\n\x0b\x0c\r\x1c-\x1f "  # what `re`'s \s matches below 128 (RE2's \s lacks \v, \x1c-\x1f)


def _re2_source(pattern: str) -> str | None:
    """`pattern` in RE2 syntax, lookarounds dropped; None if it needs what RE2 lacks or anchors (^ $ \\A
    \\Z: in text joined from many they would not mean the start or end of one text)."""
    out, i, n, in_class = [], 0, len(pattern), False
    while i < n:
        c = pattern[i]
        if c == "\\":
            if i + 1 >= n:
                return None
            e = pattern[i + 1]
            if e.isdigit() and e != "0" or e in "AZzGN":
                return None  # back-references, anchors, named characters
            if e == "s":
                out.append(_ASCII_SPACE if in_class else f"[{_ASCII_SPACE}]")
            elif e == "S":
                if in_class:
                    return None
                out.append(f"[^{_ASCII_SPACE}]")
            else:
                out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            in_class = c != "]"
            out.append(c)
            i += 1
            continue
        if c == "[":
            in_class = True
            out.append(c)
            i += 1
            if pattern.startswith("^", i):
                out.append("^")
                i += 1
            if pattern.startswith("]", i):  # a leading ] is a literal
                out.append("\\]")
                i += 1
            continue
        if c in "^$":
            return None
        if c == "{" and re.match(r"\{,\d+\}", pattern[i:]):  # Python's {,n} is {0,n}; RE2 reads it literally
            out.append("{0")
            i += 1
            continue
        if c == "(" and pattern.startswith("?", i + 1):
            head = pattern[i + 2 : i + 4]
            if head[:1] in ("=", "!") or head in ("<=", "<!"):
                i = _group_end(pattern, i)  # a lookaround: drop it (only widens the match)
                if i is None:
                    return None
                continue
            if head[:1] in ("#", "(") or head == "P=":
                return None  # comments, conditionals, named back-references
        out.append(c)
        i += 1
    return "".join(out)


def _group_end(pattern: str, i: int) -> int | None:
    """Index just past the group opening at `i`."""
    depth, in_class, n = 0, False, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            if pattern.startswith("^", i + 1):
                i += 1
            if pattern.startswith("]", i + 1):
                i += 1
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


FAST = True  # False: no RE2 or numpy shortcuts, every text the plain way (the reference the tests compare with)


@functools.lru_cache(maxsize=64)
def re2_set(patterns: tuple[tuple[str, int], ...]):
    """(RE2 Set of the (pattern, flags) RE2 can take, in ASCII text each matching at least where `re` does;
    for each of `patterns` its index in the set or None). The set is None if google-re2 is missing."""
    try:
        import re2
    except ImportError:  # a pinned dependency; without it, every text takes the slower triggers
        return None, [None] * len(patterns)
    options = re2.Options()
    options.max_mem = 256 << 20  # a Set searches with the DFA only; room for its states
    rset, index = re2.Set.SearchSet(options), []
    for pattern, flags in patterns:
        source = None if flags & (re.VERBOSE | re.MULTILINE | re.ASCII | re.LOCALE) else _re2_source(pattern)
        if source is not None:
            prefix = ("i" if flags & re.IGNORECASE else "") + ("s" if flags & re.DOTALL else "")
            try:
                re2.compile(source.encode(), options)  # Set.Add does not say why a pattern fails
                index.append(rset.Add(((f"(?{prefix})" if prefix else "") + source).encode()))
                continue
            except re2.error:
                pass
        index.append(None)
    if any(i is not None for i in index):
        rset.Compile()
    return rset, index


class AsciiTexts:
    """A batch's texts split into ASCII ones, which one RE2 Set pass per text sorts by the patterns that match
    in them, and the others, which literal triggers pick for `re`."""

    def __init__(self, texts: list[str]):
        self.texts = texts
        self.ascii = [i for i, t in enumerate(texts) if t.isascii()] if FAST else []
        self.other = [i for i, t in enumerate(texts) if not t.isascii()] if FAST else list(range(len(texts)))
        self.all = list(range(len(texts)))

    def candidates(self, patterns: list, triggers: list) -> list[list[int]]:
        """For each compiled `re` pattern, the sorted indices of the texts worth running it on: ASCII texts
        where its RE2 copy matches, and those of the others its `trigger(indices) -> indices` picks (all
        texts by trigger for a pattern RE2 cannot take)."""
        rset, index = re2_set(tuple((p.pattern, p.flags) for p in patterns)) if self.ascii else (None, ())
        hits: list[list[int]] = [[] for _ in patterns]
        if rset is not None and any(i is not None for i in index):
            where = {s: k for k, s in enumerate(index) if s is not None}
            for i in self.ascii:
                for s in rset.Match(self.texts[i].encode()) or ():
                    hits[where[s]].append(i)
        out = []
        for k, trigger in enumerate(triggers):
            if rset is None or index[k] is None:
                out.append(sorted(trigger(self.all)))
            elif self.other:
                out.append(sorted(hits[k] + list(trigger(self.other))))
            else:
                out.append(hits[k])
        return out


# ------------------------------------------------------------------------------------ words of ASCII text
# The `\w+` words of lower-cased ASCII text are its runs of [0-9a-z_] after lower-casing: one bytes.translate
# (other bytes -> space) and two numpy passes give every text's words joined by single spaces, ~10x faster
# than re.findall and a join per text.
_WORD_BYTES = bytes(
    c if 48 <= c <= 57 or 97 <= c <= 122 or c == 95 else c + 32 if 65 <= c <= 90 else 32 for c in range(256)
)


def word_lines(texts: list[str]) -> bytes:
    """ASCII `texts` as lines (joined by \n) of their words, " ".join(re.findall(r"\\w+", text.lower()))."""
    import numpy as np

    if not texts:
        return b""
    arr = np.frombuffer(" ".join(texts).encode("ascii").translate(_WORD_BYTES), np.uint8).copy()
    lengths = np.fromiter(map(len, texts), np.int64, len(texts))
    arr[np.cumsum(lengths + 1)[:-1] - 1] = 10  # the line breaks between texts (theirs are spaces now)
    space = arr == 32
    keep = ~space
    keep[:-1] |= ~space[1:] & (arr[1:] != 10)  # the last space of a run that a word follows
    arr = arr[keep]
    lead = arr == 32  # a space left at the start of a line
    lead[1:] &= arr[:-1] == 10
    return arr[~lead].tobytes()


# ------------------------------------------------------------------------------------ polynomial hashes
POLY_BASE = 0x01000193  # the FNV prime: odd, so it has an inverse mod 2^32


def poly_powers(n: int):
    """(POLY_BASE^j, POLY_BASE^-j) mod 2^32 as uint32 arrays of at least n entries (a power of two, at least
    2^20, so one table serves many batches): for prefix-sum polynomial hashes of byte spans."""
    return _poly_powers(max(1 << 20, 1 << max(n - 1, 0).bit_length()))


@functools.lru_cache(maxsize=2)
def _poly_powers(size: int):
    import numpy as np

    powers = np.ones(size, np.uint32)
    powers[1:] = np.cumprod(
        np.full(size - 1, POLY_BASE, np.uint32), dtype=np.uint32
    )  # wraps mod 2^32, as intended
    inverse = np.ones(size, np.uint32)
    inverse[1:] = np.cumprod(np.full(size - 1, pow(POLY_BASE, -1, 1 << 32), np.uint32), dtype=np.uint32)
    return powers, inverse
