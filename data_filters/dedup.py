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


_WORD_HASH: dict[str, int] = {}


def _word_hash(word: str) -> int:
    import xxhash

    h = _WORD_HASH[word] = xxhash.xxh32_intdigest(word.encode())
    return h


def shingle_hashes(words: list[str], k: int) -> np.ndarray:
    """uint32 hashes of a row's k-word shingles: xxh32 per word (memoised: words repeat), combined over
    each window as a polynomial mod 2^32 in numpy, so no shingle string is ever built."""
    if len(_WORD_HASH) > 1 << 20:
        _WORD_HASH.clear()
    get = _WORD_HASH.get
    w = np.fromiter((get(x) or _word_hash(x) for x in words), dtype=np.uint32, count=len(words))
    n = max(1, len(w) - k + 1)
    h = np.zeros(n, dtype=np.uint32)
    for j in range(min(k, len(w))):
        h = h * np.uint32(0x01000193) + w[j:j + n]  # FNV prime; wraps mod 2^32
    return h


def _fmix32(h: np.ndarray) -> np.ndarray:
    # MurmurHash3's finalizer, which datasketch's affine32 scheme applies to every input hash.
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def signatures(rows: list[np.ndarray], permutations, chunk: int = 1 << 14) -> list[list[int]]:
    """datasketch affine32 MinHash signatures (min over a row's hashes of a * fmix(h) + b mod 2^32) for many
    rows in one numpy pass per chunk of hashes, instead of one small pass per row (tested bit-equal)."""
    a, b = (np.asarray(p, dtype=np.uint32) for p in permutations)
    out, i = [], 0
    while i < len(rows):
        j, size = i + 1, len(rows[i])
        while j < len(rows) and size + len(rows[j]) <= chunk:
            size += len(rows[j])
            j += 1
        phv = _fmix32(np.concatenate(rows[i:j]))[:, None] * a + b
        offsets = np.cumsum([0] + [len(r) for r in rows[i:j - 1]])
        out += np.minimum.reduceat(phv, offsets, axis=0).tolist()
        i = j
    return out


def apply(batch: dict[str, list], *, exact=True, near=True, threshold=0.8, num_perm=128, shingle=5,
          roles=("system", "user", "assistant")) -> FilterResult:
    words = [normalise(messages, roles) for messages in batch["messages"]]
    hashes = [hashlib.blake2b(" ".join(w).encode(), digest_size=16).hexdigest() for w in words]
    if not near:
        sigs = [[] for _ in words]
    elif _scheme():
        sigs = signatures([shingle_hashes(w, shingle) for w in words], _permutations(num_perm))
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
