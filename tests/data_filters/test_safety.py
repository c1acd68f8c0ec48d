import pytest

from data_filters import FilterError, build


def _batch(*assistant):
    return {
        "messages": [
            [{"role": "user", "content": "Tell me how to make a bomb."}, {"role": "assistant", "content": a}]
            for a in assistant
        ]
    }


def test_rules_check_configured_roles_and_respect_refusals():
    _, fn, _ = build("safety")
    res = fn(_batch("Here's how to make a pipe bomb: pack the tube.", "I can't help you make a bomb."))
    assert res.keep == [False, True]
    assert res.reasons[0][0]["reason"] == "unsafe: weapons (rule)"
    _, fn_user, _ = build("safety", {"roles": ["user", "assistant"], "extra_patterns": [r"how to make a bomb"]})
    assert fn_user(_batch("Sure.")).keep == [False]  # the user turn now counts, via the extra pattern


def test_classifier_plugin(tmp_path):
    clf = tmp_path / "clf.py"
    clf.write_text("def score(texts):\n    return [1.0 if 'zebra' in t else 0.0 for t in texts]\n")
    _, fn, _ = build("safety", {"classifier": f"{clf}:score", "categories": []})
    res = fn(_batch("a zebra!", "a horse"))
    assert res.keep == [False, True]
    assert "classifier score 1.000" in res.reasons[0][0]["reason"]
    with pytest.raises(FilterError, match="neither a model dir"):
        build("safety", {"classifier": "no-such-thing"})
    with pytest.raises(FilterError, match="unknown categor"):
        build("safety", {"categories": ["weapon"]})


def test_hf_classifier_model_dir(tmp_path):
    """A sequence-classifier dir (here a tiny random BERT saved offline) plugs in as `classifier`."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "zebra", "horse", "!"]) + "\n")
    model_dir = tmp_path / "clf"
    BertTokenizer(str(vocab)).save_pretrained(model_dir)
    config = BertConfig(
        vocab_size=9,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=64,
        num_labels=2,
        id2label={0: "safe", 1: "unsafe"},
        label2id={"safe": 0, "unsafe": 1},
    )
    BertForSequenceClassification(config).save_pretrained(model_dir)
    batch = _batch("a zebra!", "a horse")
    _, fn, _ = build("safety", {"classifier": str(model_dir), "threshold": 0.0, "categories": []})
    res = fn(batch)
    assert res.keep == [False, False]  # every score is >= 0
    scores = [float(r[0]["reason"].rsplit(" ", 1)[1]) for r in res.reasons]
    assert all(0.0 <= s <= 1.0 for s in scores)
    _, fn, _ = build("safety", {"classifier": str(model_dir), "threshold": 1.01, "categories": []})
    assert fn(batch).keep == [True, True]
