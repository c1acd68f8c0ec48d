"""Dedup: exact (hash of normalised text) and near-duplicate (MinHash LSH, as datasketch's) removal.

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

from data_filters.base import FAST, FilterError, FilterResult, poly_powers, word_lines

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


@functools.lru_cache(maxsize=8)
def _permutations(num_perm: int) -> np.ndarray:
    """datasketch's affine32 MinHash permutations for seed 1 (MinHash(num_perm, seed=1, scheme="affine32")
    .permutations; tested equal): odd a and b, drawn here so the filter need not import datasketch (and
    scipy, which it imports): that import was a third of a second of serial time per run."""
    gen = np.random.RandomState(1)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return np.array([a, b])


def new_minhash(num_perm: int):
    """A datasketch MinHash with the filter's permutations (seed 1, affine32, xxh32 shingle hash)."""
    import xxhash
    from datasketch import MinHash

    return MinHash(
        num_perm=num_perm,
        seed=1,
        hashfunc=xxhash.xxh32_intdigest,
        permutations=_permutations(num_perm),
        scheme="affine32",
    )


def shingle_hashes(texts: list[str], k: int) -> list[np.ndarray]:
    """uint32 hashes of each text's k-word shingles (texts: words joined by single spaces), all in numpy.

    A shingle's hash is the polynomial hash (base B = POLY_BASE, mod 2^32) of its bytes, " ".join(window).encode().
    With prefix sums G[t] = sum_{j<t} byte_j * B^-j, any span's hash is B^(end-1) * (G[end] - G[start]),
    so every shingle of the batch costs a few vector operations instead of a Python-level string and call.
    A text shorter than k words is one shingle.
    """
    return _shingle_hashes(b"\n".join(t.encode() or b"\x02" for t in texts), len(texts), k)


def _shingle_hashes(joined: bytes, rows: int, k: int) -> list[np.ndarray]:
    """shingle_hashes of `rows` texts already encoded and joined by \n (an empty one as \x02)."""
    h, bounds = _flat_shingle_hashes(joined, rows, k)
    return [h[bounds[r] : bounds[r + 1]] for r in range(rows)]


def _flat_shingle_hashes(joined: bytes, rows: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(every row's shingle hashes back to back, row r's at [bounds[r], bounds[r + 1]))."""
    data = np.frombuffer(joined, dtype=np.uint8)
    n = len(data)
    powers, inv = poly_powers(n + 1)
    prefix = np.zeros(n + 1, np.uint32)
    np.cumsum(inv[:n] * data, dtype=np.uint32, out=prefix[1:])
    seps = np.flatnonzero((data == 32) | (data == 10))
    starts = np.concatenate([[0], seps + 1])
    ends = np.concatenate([seps, [n]])
    word_rows = np.concatenate([[0], np.cumsum(data[seps] == 10)])  # row of each word: line breaks before it
    counts = np.bincount(word_rows, minlength=rows)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    last = first + np.maximum(counts, 1) - 1
    i = np.arange(len(starts) - k + 1) if len(starts) >= k else np.arange(0)
    full = i[word_rows[i + k - 1] == word_rows[i]] if len(i) else i  # windows inside one row, in row order
    short = np.flatnonzero(counts < k)  # rows with fewer than k words (no window): the whole row, one shingle
    bounds = np.zeros(rows + 1, np.int64)
    np.cumsum(np.where(counts < k, 1, counts - k + 1), out=bounds[1:])
    h = np.empty(bounds[-1], np.uint32)
    at_short = np.zeros(len(h), bool)
    at_short[bounds[short]] = True  # a short row's one shingle sits where its row starts
    s, e = starts[full], ends[full + k - 1]
    h[~at_short] = powers[e - 1] * (prefix[e] - prefix[s])
    s, e = starts[first[short]], ends[last[short]]
    h[at_short] = powers[e - 1] * (prefix[e] - prefix[s])
    return h, bounds


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
    return signature_array(rows, permutations, chunk).tolist()


def signature_array(rows: list[np.ndarray], permutations, chunk: int = 1 << 13) -> np.ndarray:
    """`signatures` as a (rows, num_perm) uint32 array."""
    bounds = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    return _flat_signatures(np.concatenate(rows) if rows else np.zeros(0, np.uint32), bounds, permutations, chunk)


def _flat_signatures(h: np.ndarray, bounds: np.ndarray, permutations, chunk: int = 1 << 13) -> np.ndarray:
    """Signatures of the rows whose hashes are h[bounds[r]:bounds[r + 1]] (each row has at least one)."""
    a, b = (np.asarray(p, dtype=np.uint32) for p in permutations)
    out, i, rows = [np.zeros((0, len(a)), np.uint32)], 0, len(bounds) - 1
    buffer = np.empty(
        len(a) * max(chunk, int(np.diff(bounds).max(initial=0))), np.uint32
    )  # reused: no page faults
    while i < rows:
        j = max(i + 1, int(np.searchsorted(bounds, bounds[i] + chunk, side="right")) - 1)  # rows i..j-1
        j = min(j, rows)
        lo, hi = bounds[i], bounds[j]
        phv = buffer[: len(a) * (hi - lo)].reshape(len(a), hi - lo)
        np.multiply(a[:, None], _fmix32(h[lo:hi])[None, :], out=phv)
        phv += b[:, None]
        out.append(np.minimum.reduceat(phv, bounds[i:j] - lo, axis=1).T)
        i = j
    return np.concatenate(out)


def texts(rows: list[list[dict]], roles) -> list[bytes]:
    """Each row's normalise()d words joined by single spaces, UTF-8: ASCII rows all at once (base.word_lines),
    the others one by one."""
    out: list = [None] * len(rows)
    ascii_rows, where = [], []
    for r, messages in enumerate(rows):
        text = " ".join(f"{m['role']} {m['content']}" for m in messages if m["role"] in roles)
        if FAST and text.isascii():
            ascii_rows.append(text)
            where.append(r)
        else:
            out[r] = " ".join(normalise(messages, roles)).encode()
    if ascii_rows:
        for r, line in zip(where, word_lines(ascii_rows).split(b"\n")):
            out[r] = line
    return out


def apply(
    batch: dict[str, list],
    *,
    exact=True,
    near=True,
    threshold=0.8,
    num_perm=128,
    shingle=5,
    roles=("system", "user", "assistant"),
) -> FilterResult:
    """Signatures only: `_dedup_hash` (hex digest of the normalised text) and `_dedup_minhash` (the MinHash
    signature as bytes: num_perm little-endian uint32s; b"" with near off)."""
    normalised = texts(batch["messages"], roles)
    hashes = [hashlib.blake2b(t, digest_size=16).hexdigest() for t in normalised]
    n = len(hashes)
    if not near:
        sigs = [b""] * n
    else:
        first = {}  # a signature depends on the text alone: one per distinct text
        for t, digest in zip(normalised, hashes):
            first.setdefault(digest, t)
        unique = list(first.values())
        h, bounds = _flat_shingle_hashes(b"\n".join(t or b"\x02" for t in unique), len(unique), shingle)
        data = _flat_signatures(h, bounds, _permutations(num_perm)).astype("<u4").tobytes()
        width = 4 * num_perm
        by_digest = {d: data[i * width : (i + 1) * width] for i, d in enumerate(first)}
        sigs = [by_digest[d] for d in hashes]
    return FilterResult([True] * n, {"_dedup_hash": hashes, "_dedup_minhash": sigs}, [[] for _ in range(n)])


@functools.lru_cache(maxsize=8)
def _bands(threshold: float, num_perm: int) -> list[tuple[int, int]]:
    """The bands datasketch's MinHashLSH(threshold=min(threshold, 0.9), num_perm) uses (tested equal): the b
    bands of r values minimising the sum of the false-positive and false-negative areas (its default equal
    weights), first minimum in its (b, r) order. Its integrals are polynomials of degree r * b <= num_perm,
    which Gauss-Legendre with num_perm / 2 + 1 nodes integrates exactly (datasketch uses scipy's quad)."""
    threshold = min(threshold, 0.9)
    pairs = np.array([(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)], float)
    nodes, weights = np.polynomial.legendre.leggauss(num_perm // 2 + 1)

    def area(lo, hi, fn):  # integral over [lo, hi] for every (b, r) at once
        s = (hi - lo) / 2 * nodes + (hi + lo) / 2
        return (hi - lo) / 2 * (fn(s[None, :], pairs[:, :1], pairs[:, 1:]) @ weights)

    false_positive = area(0.0, threshold, lambda s, b, r: 1 - (1 - s**r) ** b)
    false_negative = area(threshold, 1.0, lambda s, b, r: 1 - (1 - (1 - s**r) ** b))
    b, r = (int(x) for x in pairs[np.argmin(false_positive * 0.5 + false_negative * 0.5)])
    return [(i * r, (i + 1) * r) for i in range(b)]


def _signature_matrix(sigs, live: np.ndarray, num_perm: int) -> np.ndarray:
    """(len(live), num_perm) array of the signatures of rows `live`, given as a (rows, num_perm) array, as
    bytes (from apply) or as lists of ints."""
    if isinstance(sigs, np.ndarray):
        return sigs if len(live) == len(sigs) else sigs[live]
    picked = [sigs[r] for r in live.tolist()]
    if picked and isinstance(picked[0], (bytes, bytearray, memoryview)):
        joined = b"".join(picked)
        dtype = "<u4" if len(joined) == 4 * num_perm * len(picked) else "<u8"
        return np.frombuffer(joined, dtype).reshape(len(picked), num_perm)
    return np.asarray(picked, dtype=np.uint64).reshape(len(picked), num_perm)


def _band_groups(matrix: np.ndarray, bands) -> list[np.ndarray]:
    """Per band, the group of each row: rows with the same values in a band share a group. A band's values
    are packed into 64-bit words and mixed into one number to group by (an integer sort, not a sort of
    byte strings), then checked word by word, so the groups are exact."""
    out = []
    for start, end in bands:
        width = end - start
        words = -(-width * matrix.itemsize // 8)
        packed = np.zeros((len(matrix), words * 8 // matrix.itemsize), matrix.dtype)
        packed[:, :width] = matrix[:, start:end]
        packed = packed.view(np.uint64)
        mixed = packed[:, 0].copy()
        for j in range(1, words):
            mixed = mixed * np.uint64(0x9E3779B97F4A7C15) + packed[:, j]  # wraps mod 2^64, as intended
        _, first, inverse = np.unique(mixed, return_index=True, return_inverse=True)
        inverse = inverse.ravel()
        if not (packed == packed[first[inverse]]).all():  # two different bands mixed alike: sort the bytes
            raw = np.ascontiguousarray(matrix[:, start:end]).view(f"V{width * matrix.itemsize}").ravel()
            inverse = np.unique(raw, return_inverse=True)[1].ravel()
        out.append(inverse)
    return out


def decide(
    hashes: list[str],
    sigs,
    alive: list[bool],
    ids: list,
    *,
    exact=True,
    near=True,
    threshold=0.8,
    num_perm=128,
    shingle=5,
    roles=None,
) -> FilterResult:
    """Keep the first of each cluster among the `alive` rows (in order); others get a reason naming it.

    `sigs`: apply's `_dedup_minhash` per row, or all of them as one (rows, num_perm) array. Near duplicates
    as datasketch's MinHashLSH finds them (rows sharing a band of signature values are candidates; the
    decision is the signatures' estimated Jaccard against `threshold`, the most similar kept row named, the
    earliest on ties), but vectorised: bands are grouped with numpy first, and only rows that share a band
    with another row go through the sequential keep-the-first pass.
    """
    n = len(hashes)
    keep, reasons = [True] * n, [[] for _ in range(n)]
    live_rows = np.flatnonzero(np.asarray(alive, bool)) if n else np.zeros(0, np.int64)
    live = live_rows.tolist()
    if near and live:
        matrix = _signature_matrix(sigs, live_rows, num_perm)
        groups = _band_groups(matrix, _bands(threshold, num_perm))
        shared = np.zeros(len(live), bool)
        for inverse in groups:
            shared |= np.bincount(inverse)[inverse] > 1
        order = np.flatnonzero(shared)  # rows no band links to another row are never candidates nor have any
        keys = np.stack(groups, axis=1)[order].tolist() if len(order) else []
        positions = order.tolist()
    else:
        positions, keys = list(range(len(live))) if exact else [], []
    first: dict[str, int] = {}
    tables: list[dict] = [{} for _ in _bands(threshold, num_perm)] if near else []
    for j, p in enumerate(positions):
        r = live[p]
        if exact and hashes[r] in first:
            keep[r] = False
            reasons[r].append({"filter": "dedup", "reason": f"exact duplicate of row {ids[first[hashes[r]]]}"})
            continue
        first.setdefault(hashes[r], r)
        if not near:
            continue
        band_keys = keys[j]
        candidates = set()
        for table, key in zip(tables, band_keys):
            candidates.update(table.get(key, ()))
        if candidates:
            cands = sorted(candidates)
            sims = (matrix[cands] == matrix[p]).mean(axis=1)
            best = int(np.argmax(sims))  # the first maximum: the earliest row on ties
            if sims[best] >= threshold:
                keep[r] = False
                reasons[r].append(
                    {
                        "filter": "dedup",
                        "reason": f"near duplicate of row {ids[live[cands[best]]]} "
                        f"(jaccard~{float(sims[best]):.2f})",
                    }
                )
                continue
        for table, key in zip(tables, band_keys):
            table.setdefault(key, []).append(p)
    return FilterResult(keep, {}, reasons)


def prepare(options: dict) -> dict:

    if not 0.0 < float(options["threshold"]) <= 1.0:
        raise FilterError(f"dedup: threshold must be in (0, 1], got {options['threshold']}")
    if int(options["num_perm"]) < 16 or int(options["shingle"]) < 1:
        raise FilterError("dedup: num_perm must be >= 16 and shingle >= 1")
    if options["near"] and len(_bands(float(options["threshold"]), int(options["num_perm"]))) < 2:
        raise FilterError(
            f"dedup: threshold {options['threshold']} with num_perm {options['num_perm']} leaves one "
            "LSH band; raise num_perm or lower the threshold"
        )
    return options
