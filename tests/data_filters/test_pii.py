import re

import pytest

from data_filters import FilterError, build, pii


def _msgs(text, role="user"):
    return [{"role": role, "content": text}]


def test_redaction_leaves_no_detected_span_behind(labelled):
    batch = {"messages": [r["messages"] for r in labelled]}
    res = pii.apply(batch)
    n_spans = 0
    for reasons, messages in zip(res.reasons, res.columns["messages"]):
        for x in reasons:
            n_spans += 1
            redacted = messages[x["turn"]]["content"]
            assert x["text"] not in redacted, (x, redacted)
            assert f"<{x['type']}>" in redacted
    assert n_spans >= 150
    # Nothing is left to find in the redacted text (placeholders are not PII).
    again = pii.apply({"messages": res.columns["messages"]})
    assert not any(again.reasons), [r for r in again.reasons if r][:3]


def test_typed_placeholders_and_spans():
    text = "Mail jane@corp.com or call +44 20 7946 0958; card 4111 1111 1111 1111."
    res = pii.apply({"messages": [_msgs(text)]})
    assert res.columns["messages"][0][0]["content"] == "Mail <EMAIL> or call <PHONE>; card <CREDIT_CARD>."
    spans = {x["type"]: x["span"] for x in res.reasons[0]}
    assert text[slice(*spans["EMAIL"])] == "jane@corp.com"
    assert text[slice(*spans["CREDIT_CARD"])] == "4111 1111 1111 1111"
    assert res.keep == [True]


def test_validators_reject_lookalikes():
    assert pii.luhn("4111111111111111") and not pii.luhn("4111111111111112")
    assert pii.iban_ok("GB", "82", "WEST12345698765432") and not pii.iban_ok("GB", "83", "WEST12345698765432")
    assert (
        pii.ssn_ok("123", "45", "6789") and not pii.ssn_ok("666", "45", "6789") and not pii.ssn_ok("900", "1", "1")
    )
    for text in [
        "order 4111 1111 1111 1112",
        "IBAN GB83 WEST 1234 5698 7654 32",
        "SSN 000-12-3456",
        "bind 127.0.0.1",
        "build 10.0.19041.1",
        "uuid 123e4567-e89b-12d3-a456-426614174000",
        "sha 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b",
        "1,234,567 apples",
        "std::vector<int>",
    ]:
        assert pii.find(text) == [], text


def test_drop_action_and_per_type_override():
    batch = {"messages": [_msgs("key AKIAIOSFODNN7EXAMPLE"), _msgs("mail a@b.co"), _msgs("nothing here")]}
    _, fn, _ = build("pii", {"actions": {"SECRET": "drop"}})
    res = fn(batch)
    assert res.keep == [False, True, True]
    assert res.columns["messages"][1][0]["content"] == "mail <EMAIL>"
    _, fn, _ = build("pii", {"action": "drop"})
    assert fn(batch).keep == [False, False, True]


def test_roles_types_and_allow():
    batch = {
        "messages": [[{"role": "user", "content": "a@b.co"}, {"role": "assistant", "content": "c@d.co 8.8.8.8"}]]
    }
    _, fn, _ = build("pii", {"roles": ["assistant"], "types": ["EMAIL"], "allow": []})
    out = fn(batch).columns["messages"][0]
    assert out[0]["content"] == "a@b.co" and out[1]["content"] == "<EMAIL> 8.8.8.8"
    _, fn, _ = build("pii", {"allow": ["a@b.co"]})
    assert fn(batch).columns["messages"][0][0]["content"] == "a@b.co"


def test_batch_join_does_not_leak_across_rows():
    # Each row's spans index into that row's own text, whatever its neighbours hold.
    texts = ["x" * 5 + " a@b.co", "4111 1111", "1111 1111 tail", "+1 (415) 555-2671"]
    per_row = [pii.find(t) for t in texts]
    assert pii.find_many(texts) == per_row
    assert all(re.fullmatch(r"[\w@.+() -]+", t[s:e]) for t, spans in zip(texts, per_row) for s, e, _ in spans)


def test_bad_options_are_user_errors():
    with pytest.raises(FilterError, match="did you mean 'action'"):
        build("pii", {"actoin": "drop"})
    with pytest.raises(FilterError, match="unknown PII type"):
        build("pii", {"types": ["EMAILS"]})


def test_presidio_engine_offline():
    """Presidio's recognizers run offline on a blank spaCy pipeline, as an alternative engine."""
    batch = {
        "messages": [
            _msgs("Mail jane@corp.com, card 4111 1111 1111 1111, IBAN GB82 WEST 1234 5698 7654 32."),
            _msgs("The sum of 12 and 30 is 42."),
        ]
    }
    _, fn, _ = build("pii", {"engine": "presidio"})
    res = fn(batch)
    assert {x["type"] for x in res.reasons[0]} >= {"EMAIL", "CREDIT_CARD", "IBAN"}
    assert res.columns["messages"][0][0]["content"] == "Mail <EMAIL>, card <CREDIT_CARD>, IBAN <IBAN>."
    assert res.reasons[1] == []
    _, both, _ = build("pii", {"engine": "both"})
    assert both(batch).columns["messages"] == res.columns["messages"]
    with pytest.raises(FilterError, match="engine must be"):
        build("pii", {"engine": "spacy"})
