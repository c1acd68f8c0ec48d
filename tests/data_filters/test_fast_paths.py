"""The fast paths (RE2 candidate scans, numpy word runs, vectorised dedup) give exactly what the plain
paths give: every filter's keep mask, reasons and rewritten columns, with base.FAST on and off."""

import random
import re

import pytest

from data_filters import base, build_chain, dedup, run_chain

ALL = ["safety", "identity", "decontam", "pii", "dedup"]
OPTIONS = {"safety": {"roles": ["user", "assistant"]}, "identity": {"roles": ["user", "assistant"]}}
WORDS = (
    "the of and to in is was for on that with as by at from it an be this which or are have not had but "
    "value number result problem method answer question student teacher river city garden market"
).split()
TRICKY = [
    "Ssn: 123-45-6789 and SOCIAL SECURITY no. 078051120",  # case variants of a case-insensitive trigger
    "API_KEY = 'Zx9fQ2LmN8pR4tV7' and PassWord: hunter2hunter2Xy9",
    "host 1:2:3:4:5:6:10.0.0.1 and fe80::1 and ::1",
    "you deserve die, honestly. You should kill yourself.",
    "I’m ChatGPT, made by OpenAI. As an OpenAI model I can’t.",
    "Call +1 (415) 555-2671\x1cnow; wire DE89 3704 0044 0532 0130 00\x0bplease",
    "ſsn 123-45-6789 and Kelvin K; café at 12 Main Street, Springfield, IL 62704",
    "naïve résumé — e-mail ana.li@example.com, ＡＰＩ key",
    "Dear Dr. Smith,\nRegards, Mr Bean",
    "",
]


def _corpus(labelled, n=1500, seed=3):
    rng = random.Random(seed)
    rows = [r["messages"] for r in labelled]
    for _ in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 60)))
        if rng.random() < 0.2:
            text += " " + rng.choice(TRICKY)
        if rng.random() < 0.1:
            text = text.upper()
        if rng.random() < 0.1:
            text = text.replace(" ", " é ", 1)
        rows.append(
            [{"role": "user", "content": text}, {"role": "assistant", "content": rng.choice(TRICKY + [text])}]
        )
    rows += rows[:200]  # exact copies for dedup
    return rows


def _run(rows, fast, monkeypatch):
    monkeypatch.setattr(base, "FAST", fast)
    chain = build_chain(ALL, OPTIONS)
    out = {}
    for name, fn, _ in chain:
        res = [fn({"messages": rows[i : i + 300]}) for i in range(0, len(rows), 300)]
        out[name] = [(r.keep, r.reasons, r.columns) for r in res]
    chained = run_chain(chain, {"messages": rows})
    kw = chain[-1][1].keywords
    out["decide"] = dedup.decide(
        chained["_dedup_hash"], chained["_dedup_minhash"], chained["_keep"], list(range(len(rows))), **kw
    )
    return out


def test_fast_and_plain_paths_agree(labelled, monkeypatch):
    rows = _corpus(labelled)
    fast, plain = _run(rows, True, monkeypatch), _run(rows, False, monkeypatch)
    for name in ALL + ["decide"]:
        assert fast[name] == plain[name], name
    assert sum(not k for k in fast["decide"].keep) >= 200  # the copies, at least


def test_re2_source():
    assert base._re2_source(r"(?<![\w.])a\s+b(?!\d)") == r"a[\t\n\x0b\x0c\r\x1c-\x1f ]+b"
    assert base._re2_source(r"[\s.]x") == r"[\t\n\x0b\x0c\r\x1c-\x1f .]x"
    assert base._re2_source(r"[]a](?=[)])") == r"[\]a]"
    assert base._re2_source(r"a{,3}b{2,}c\{,x") == r"a{0,3}b{2,}c\{,x"  # Python's {,n}
    for unsupported in (r"^a", r"a$", r"(a)\1", r"a\Z", r"(?P<x>a)(?P=x)", r"[\S]"):
        assert base._re2_source(unsupported) is None, unsupported


@pytest.mark.parametrize("text", TRICKY + ["  a,,b\t\tc  ", "\n\nx\n", "A_b-C9 d", "   ", "x"])
def test_word_lines_match_findall(text):
    texts = [t for t in (text, "Some  Words, here!", text[::-1]) if t.isascii()]
    want = "\n".join(" ".join(re.findall(r"\w+", t.lower())) for t in texts).encode()
    assert base.word_lines(texts) == want
