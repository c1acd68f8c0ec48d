"""Precision and recall of each filter on the labelled fixtures (tests/data_filters/fixtures/labelled.jsonl).

Thresholds: structured PII (emails, phones, cards, IBANs, SSNs, IPs, secrets) recall >= 0.95 and precision
>= 0.9 overall, and recall >= 0.9 for each of those types; names and street addresses (rule-based, no NER
model offline) recall >= 0.8, precision >= 0.9; safety and self-identification rows precision >= 0.9,
recall >= 0.9. Most fixtures were written alongside the filters, so those figures are floors for
regressions, not estimates for real data. The rows marked "blind" were written after the filters were
tuned and not tuned against; on them alone (printed by test_blind_rows) the rule-based safety and identity
filters miss paraphrases -- recall 0.33 and 0.4 when written -- while their precision and the PII recall hold:
precision >= 0.9 for every filter and structured PII recall >= 0.9 are asserted there.
"""

from collections import Counter

from data_filters import identity, pii, safety

STRUCTURED = {"EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "SSN", "IP_ADDRESS", "SECRET"}


def _match(found_type, found_text, label):
    return found_type == label["type"] and (label["text"] in found_text or found_text in label["text"])


def _pii_counts(rows):
    res = pii.apply({"messages": [r["messages"] for r in rows]})
    tp, fp, fn = Counter(), Counter(), Counter()
    for row, reasons in zip(rows, res.reasons):
        found = [(x["type"], x["text"]) for x in reasons]
        for label in row["labels"]["pii"]:
            hit = any(_match(t, x, label) for t, x in found)
            (tp if hit else fn)[label["type"]] += 1
        for t, x in found:
            if not any(_match(t, x, label) for label in row["labels"]["pii"]):
                fp[t] += 1
    return tp, fp, fn


def _pr(tp, fp, fn):
    return tp / max(1, tp + fp), tp / max(1, tp + fn)


def test_structured_pii_precision_recall(labelled):
    tp, fp, fn = _pii_counts(labelled)
    s = lambda c: sum(v for k, v in c.items() if k in STRUCTURED)  # noqa: E731
    precision, recall = _pr(s(tp), s(fp), s(fn))
    print(f"structured PII: precision {precision:.3f} recall {recall:.3f} (tp {s(tp)}, fp {s(fp)}, fn {s(fn)})")
    assert s(tp) >= 100  # enough positives for the figures to mean something
    assert recall >= 0.95 and precision >= 0.9
    for kind in STRUCTURED:
        p, r = _pr(tp[kind], fp[kind], fn[kind])
        print(f"  {kind:12s} precision {p:.3f} recall {r:.3f}")
        assert tp[kind] >= 5 and r >= 0.9, kind


def test_names_and_addresses_precision_recall(labelled):
    tp, fp, fn = _pii_counts(labelled)
    for kind in ("NAME", "ADDRESS"):
        p, r = _pr(tp[kind], fp[kind], fn[kind])
        print(f"{kind}: precision {p:.3f} recall {r:.3f}")
        assert tp[kind] >= 5 and r >= 0.8 and p >= 0.9, kind


def _row_pr(rows, result, key):
    tp = fp = fn = 0
    for row, keep in zip(rows, result.keep):
        y, flagged = row["labels"][key], not keep
        tp += y and flagged
        fp += flagged and not y
        fn += y and not flagged
    assert tp + fn >= 20
    return _pr(tp, fp, fn)


def test_safety_precision_recall(labelled):
    res = safety.apply({"messages": [r["messages"] for r in labelled]})
    precision, recall = _row_pr(labelled, res, "unsafe")
    print(f"safety: precision {precision:.3f} recall {recall:.3f}")
    assert precision >= 0.9 and recall >= 0.9


def test_identity_precision_recall(labelled):
    opts = {k: v for k, v in identity.DEFAULTS.items()}
    res = identity.apply({"messages": [r["messages"] for r in labelled]}, **opts)
    precision, recall = _row_pr(labelled, res, "identity")
    print(f"identity: precision {precision:.3f} recall {recall:.3f}")
    assert precision >= 0.9 and recall >= 0.9


def test_blind_rows(labelled):
    blind = [r for r in labelled if r.get("blind")]
    assert len(blind) >= 50
    tp, fp, fn = _pii_counts(blind)
    s = lambda c: sum(v for k, v in c.items() if k in STRUCTURED)  # noqa: E731
    precision, recall = _pr(s(tp), s(fp), s(fn))
    print(f"blind structured PII: precision {precision:.3f} recall {recall:.3f}")
    assert precision >= 0.9 and recall >= 0.9
    for name, mod, key, opts in [
        ("safety", safety, "unsafe", {}),
        ("identity", identity, "identity", identity.DEFAULTS),
    ]:
        res = mod.apply({"messages": [r["messages"] for r in blind]}, **opts)
        flagged = [not k for k in res.keep]
        tp_ = sum(f and r["labels"][key] for f, r in zip(flagged, blind))
        fp_ = sum(f and not r["labels"][key] for f, r in zip(flagged, blind))
        fn_ = sum(not f and r["labels"][key] for f, r in zip(flagged, blind))
        p, r = _pr(tp_, fp_, fn_)
        print(f"blind {name}: precision {p:.3f} recall {r:.3f} ({tp_} of {tp_ + fn_} found)")
        assert p >= 0.9 and tp_ >= 1
