import json

from data_filters import build_chain, dedup, run_chain

LONG = (
    "The library opens at nine in the morning and closes at six in the evening on weekdays, while on "
    "weekends it opens an hour later and closes at four, except on public holidays when it stays shut. "
    "Members may borrow up to twelve books at a time for three weeks, renew them twice online, and reserve "
    "titles that are on loan; late returns cost ten cents a day, capped at the price of the book."
)
# ~80 words, 5-word shingles: one changed word alters 5 of ~76 shingles, Jaccard ~0.88 (one word in a
# 40-word text would be ~0.76, under the 0.8 default: near-dup detection needs some length to be sure).


def _row(user, assistant="Noted."):
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def _run(rows, **options):
    chain = build_chain(["dedup"], {"dedup": options} if options else None)
    out = run_chain(chain, {"messages": rows})
    ids = [f"r{i}" for i in range(len(rows))]
    res = dedup.decide(out["_dedup_hash"], out["_dedup_minhash"], out["_keep"], ids, **chain[0][1].keywords)
    return res


def test_exact_and_near_copies():
    rows = [
        _row(LONG),  # r0 original
        _row("  " + LONG.upper() + "  "),  # r1 exact after normalisation (case, spacing)
        _row(LONG.replace(",", " ,")),  # r2 exact after normalisation (punctuation)
        _row(LONG + " Thanks!"),  # r3 near copy: one word appended
        _row(LONG.replace("nine", "ten")),  # r4 near copy: one word changed
        _row("What is the boiling point of water at sea level in degrees Celsius and Fahrenheit?"),  # r5 distinct
        _row("Write a haiku about the first snow of winter falling on a quiet mountain village."),  # r6 distinct
    ]
    res = _run(rows)
    assert res.keep == [True, False, False, False, False, True, True]
    assert res.reasons[1][0]["reason"] == "exact duplicate of row r0"
    assert res.reasons[3][0]["reason"].startswith("near duplicate of row r0")


def test_threshold_is_configurable():
    rows = [_row(LONG), _row(LONG.replace("nine", "ten"))]
    assert _run(rows).keep == [True, False]
    assert _run(rows, threshold=0.99).keep == [True, True]  # one changed word is below 0.99 Jaccard
    assert _run(rows, near=False).keep == [True, True]


def test_rows_dropped_earlier_are_not_reference_copies():
    rows = [_row(LONG), _row(LONG)]
    chain = build_chain(["dedup"])
    out = run_chain(chain, {"messages": rows})
    res = dedup.decide(
        out["_dedup_hash"], out["_dedup_minhash"], [False, True], ["a", "b"], **chain[0][1].keywords
    )
    assert res.keep == [True, True]  # row a was dropped by an earlier filter, so b is the first copy kept
    assert json.loads(out["_reasons"][0]) == []


def _poly(data: bytes) -> int:
    h = 0
    for byte in data:
        h = (h * 0x01000193 + byte) % (1 << 32)
    return h


def test_shingle_hashes_and_signatures_match_references():
    """Vectorised shingle hashes equal a plain per-shingle polynomial hash; the batch signatures equal
    datasketch's MinHash (affine32, seed 1) updated with those hashes."""
    from datasketch import MinHash

    rows = [dedup.normalise(_row(t), ("user", "assistant")) for t in (LONG, "short one", "", LONG[:90], "é ü ß")]
    rows.append([])  # no checked turns at all
    texts = [" ".join(w) for w in rows]
    hashes = dedup.shingle_hashes(texts, 5)
    for words, h in zip(rows, hashes):
        grams = [" ".join(words[i : i + 5]) for i in range(len(words) - 4)] or [" ".join(words) or "\x02"]
        assert h.tolist() == [_poly(g.encode()) for g in grams]
    ours = dedup.signatures(hashes, dedup.new_minhash(128).permutations, chunk=40)  # several chunks
    for h, sig in zip(hashes, ours):
        m = MinHash(num_perm=128, seed=1, scheme="affine32", hashfunc=int)
        m.update_batch(h.tolist())
        assert m.hashvalues.tolist() == sig


def test_bands_and_permutations_are_datasketchs():
    """The filter draws datasketch's permutations and picks its LSH bands itself (no datasketch import at
    run time): equal to MinHash(seed=1, scheme="affine32") and MinHashLSH's over a grid of settings."""
    import numpy as np
    from datasketch import MinHash, MinHashLSH

    for num_perm in (16, 64, 128, 256):
        assert np.array_equal(
            dedup._permutations(num_perm), MinHash(num_perm=num_perm, seed=1, scheme="affine32").permutations
        )
        for threshold in np.arange(0.1, 0.91, 0.05):
            ours = dedup._bands(float(threshold), num_perm)
            try:
                theirs = MinHashLSH(threshold=float(threshold), num_perm=num_perm).hashranges
            except ValueError:  # datasketch refuses a single band; prepare() does too
                theirs = ours[:1]
            assert ours == theirs, (num_perm, threshold)
