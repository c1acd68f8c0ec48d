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


def new_minhash(num_perm: int):
    """A datasketch MinHash (seed 1, xxh32 shingle hash: stable across processes, faster than sha1)."""
    import xxhash
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=1, hashfunc=xxhash.xxh32_intdigest, **_scheme())


def minhash(words: list[str], k: int, m) -> list[int]:
    """The signature of a row's set of k-word shingles, computed in the reusable MinHash `m`."""
    m.clear()  # one MinHash per batch: drawing its permutations costs more than hashing a row
    m.update_batch([" ".join(words[i:i + k]).encode() for i in range(max(1, len(words) - k + 1))])
    return m.hashvalues.tolist()


def apply(batch: dict[str, list], *, exact=True, near=True, threshold=0.8, num_perm=128, shingle=5,
          roles=("system", "user", "assistant")) -> FilterResult:
    hashes, sigs = [], []
    m = new_minhash(num_perm) if near else None
    for messages in batch["messages"]:
        words = normalise(messages, roles)
        hashes.append(hashlib.blake2b(" ".join(words).encode(), digest_size=16).hexdigest())
        sigs.append(minhash(words, shingle, m) if near else [])
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
