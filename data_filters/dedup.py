"""Dedup: exact (hash of normalised text) and near-duplicate (MinHash LSH, datasketch) removal.

Whether a row is a duplicate depends on every row before it, so this filter has two halves: `apply` is the
pure batch function (it computes each row's signatures and keeps everything), and `decide` is one
sequential pass over all signatures that keeps the first row of each duplicate cluster. The signatures are
most of the cost and run in parallel with the other filters; `decide` only touches hashes.
"""

from __future__ import annotations

import functools
import hashlib
import re

import numpy as np

from data_filters.base import FilterResult

DEFAULTS = {
    "exact": True,
    "near": True,
    "threshold": 0.8,  # estimated Jaccard similarity of word shingles at or above which rows are near-duplicates
    "num_perm": 128,
    "shingle": 5,  # words per shingle
    "roles": ["system", "user", "assistant"],
}

_WORD = re.compile(r"\w+")


def normalise(messages: list[dict], roles) -> list[str]:
    """Lower-cased words of the checked turns, turn by turn, punctuation and spacing dropped."""
    words = []
    for m in messages:
        if m["role"] in roles:
            words.append(m["role"])
            words += _WORD.findall(m["content"].lower())
    return words


@functools.lru_cache(maxsize=None)
def _scheme() -> dict:
    # datasketch >= 2 wants the scheme named when a MinHash is rebuilt from stored values; 1.x has one scheme.
    import inspect

    from datasketch import MinHash

    return {"scheme": "affine32"} if "scheme" in inspect.signature(MinHash).parameters else {}


@functools.lru_cache(maxsize=8)
def _permutations(num_perm: int):
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=1, **_scheme()).permutations


def new_minhash(num_perm: int):
    """A datasketch MinHash (seed 1, xxh32 shingle hash: stable across processes, faster than sha1)."""
    import xxhash
    from datasketch import MinHash

    perms = {"permutations": _permutations(num_perm)} if _scheme() else {}  # drawing them is the slow part
    return MinHash(num_perm=num_perm, seed=1, hashfunc=xxhash.xxh32_intdigest, **perms, **_scheme())


def minhash(words: list[str], k: int, m) -> list[int]:
    """The signature of a row's k-word shingles in the reusable MinHash `m` (the datasketch 1.x path)."""
    m.clear()
    m.update_batch([" ".join(words[i:i + k]).encode() for i in range(max(1, len(words) - k + 1))])
    return m.hashvalues.tolist()


_B = 0x01000193  # FNV prime: odd, so it has an inverse mod 2^32
_B_INV = pow(_B, -1, 1 << 32)


def shingle_hashes(texts: list[str], k: int) -> list[np.ndarray]:
    """uint32 hashes of each text's k-word shingles (texts: words joined by single spaces), all in numpy.

    A shingle's hash is the polynomial hash (base _B, mod 2^32) of its bytes, " ".join(window).encode().
    With prefix sums G[t] = sum_{j<t} byte_j * _B^-j, any span's hash is _B^(end-1) * (G[end] - G[start]),
    so every shingle of the batch costs a few vector operations instead of a Python-level string and call.
    A text shorter than k words is one shingle.
    """
    texts = [t or "\x02" for t in texts]  # an empty row still gets a (constant) shingle
    data = np.frombuffer("\n".join(texts).encode(), dtype=np.uint8).astype(np.uint32)
    n = len(data)
    powers = np.cumprod(np.full(n, _B, dtype=np.uint32), dtype=np.uint32)  # wraps mod 2^32, as intended
    powers = np.concatenate([np.ones(1, np.uint32), powers[:-1]])  # _B^j
    inv = np.cumprod(np.full(n, _B_INV, dtype=np.uint32), dtype=np.uint32)
    inv = np.concatenate([np.ones(1, np.uint32), inv[:-1]])  # _B^-j
    prefix = np.concatenate([np.zeros(1, np.uint32), np.cumsum(data * inv, dtype=np.uint32)])
    seps = np.flatnonzero((data == 32) | (data == 10))
    starts = np.concatenate([[0], seps + 1])
    ends = np.concatenate([seps, [n]])
    rows = np.searchsorted(np.flatnonzero(data == 10), starts, side="right")  # row of each word
    counts = np.bincount(rows, minlength=len(texts))
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    last = first + np.maximum(counts, 1) - 1
    i = np.arange(len(starts) - k + 1) if len(starts) >= k else np.arange(0)
    full = i[rows[i + k - 1] == rows[i]] if len(i) else i  # windows inside one row
    short = np.flatnonzero(counts < k)  # rows with fewer than k words: the whole row
    span_start = np.concatenate([starts[full], starts[first[short]]])
    span_end = np.concatenate([ends[full + k - 1], ends[last[short]]])
    span_row = np.concatenate([rows[full], short])
    h = powers[span_end - 1] * (prefix[span_end] - prefix[span_start])
    order = np.argsort(span_row, kind="stable")
    h, span_row = h[order], span_row[order]
    bounds = np.searchsorted(span_row, np.arange(len(texts) + 1))
    return [h[bounds[r]:bounds[r + 1]] for r in range(len(texts))]


def _fmix32(h: np.ndarray) -> np.ndarray:
    # MurmurHash3's finalizer, which datasketch's affine32 scheme applies to every input hash.
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def signatures(rows: list[np.ndarray], permutations, chunk: int = 1 << 13) -> list[list[int]]:
    """datasketch affine32 MinHash signatures (min over a row's hashes of a * fmix(h) + b mod 2^32) for many
    rows in one numpy pass per chunk of hashes, instead of one small pass per row (tested bit-equal).
    Permutations along the first axis keep each row's minimum a contiguous reduction (4x faster)."""
    a, b = (np.asarray(p, dtype=np.uint32) for p in permutations)
    out, i = [], 0
    while i < len(rows):
        j, size = i + 1, len(rows[i])
        while j < len(rows) and size + len(rows[j]) <= chunk:
            size += len(rows[j])
            j += 1
        phv = np.multiply.outer(a, _fmix32(np.concatenate(rows[i:j])))
        phv += b[:, None]
        offsets = np.cumsum([0] + [len(r) for r in rows[i:j - 1]])
        out += np.minimum.reduceat(phv, offsets, axis=1).T.tolist()
        i = j
    return out


def apply(batch: dict[str, list], *, exact=True, near=True, threshold=0.8, num_perm=128, shingle=5,
          roles=("system", "user", "assistant")) -> FilterResult:
    words = [normalise(messages, roles) for messages in batch["messages"]]
    texts = [" ".join(w) for w in words]
    hashes = [hashlib.blake2b(t.encode(), digest_size=16).hexdigest() for t in texts]
    if not near:
        sigs = [[] for _ in words]
    elif _scheme():
        sigs = signatures(shingle_hashes(texts, shingle), _permutations(num_perm))
    else:
        m = new_minhash(num_perm)
        sigs = [minhash(w, shingle, m) for w in words]
    n = len(hashes)
    return FilterResult([True] * n, {"_dedup_hash": hashes, "_dedup_minhash": sigs}, [[] for _ in range(n)])


def decide(hashes: list[str], sigs: list, alive: list[bool], ids: list, *, exact=True, near=True, threshold=0.8,
           num_perm=128, shingle=5, roles=None) -> FilterResult:
    """Keep the first of each cluster among the `alive` rows (in order); others get a reason naming it."""
    from datasketch import MinHashLSH

    n = len(hashes)
    keep, reasons = [True] * n, [[] for _ in range(n)]
    first: dict[str, int] = {}
    # LSH only proposes candidates (its banding cannot be tuned for thresholds near 1); the decision is the
    # signatures' estimated Jaccard against `threshold`.
    lsh = MinHashLSH(threshold=min(threshold, 0.9), num_perm=num_perm) if near else None
    probe = new_minhash(num_perm)
    dtype = probe.hashvalues.dtype
    kept_sigs: dict[str, np.ndarray] = {}
    for r in range(n):
        if not alive[r]:
            continue
        if exact and hashes[r] in first:
            keep[r] = False
            reasons[r].append({"filter": "dedup", "reason": f"exact duplicate of row {ids[first[hashes[r]]]}"})
            continue
        first.setdefault(hashes[r], r)
        if lsh is not None:
            sig = np.asarray(sigs[r], dtype=dtype)
            probe.hashvalues = sig  # the LSH copies out the band hashes, so one object serves every row
            best = None
            for key in lsh.query(probe):
                sim = float(np.mean(kept_sigs[key] == sig))
                if sim >= threshold and (best is None or sim > best[1]):
                    best = (key, sim)
            if best is not None:
                keep[r] = False
                reasons[r].append({"filter": "dedup",
                                   "reason": f"near duplicate of row {ids[int(best[0])]} (jaccard~{best[1]:.2f})"})
                continue
            key = str(r)
            lsh.insert(key, probe)
            kept_sigs[key] = sig
    return FilterResult(keep, {}, reasons)


def prepare(options: dict) -> dict:
    from posttrain.errors import UserError

    if not 0.0 < float(options["threshold"]) <= 1.0:
        raise UserError(f"dedup: threshold must be in (0, 1], got {options['threshold']}")
    if int(options["num_perm"]) < 16 or int(options["shingle"]) < 1:
        raise UserError("dedup: num_perm must be >= 16 and shingle >= 1")
    return options
