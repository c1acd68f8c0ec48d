import json

import pytest

from data_filters import FilterError, build

EVAL_Q = (
    "A farmer has seventeen sheep and all but nine run away through a hole in the fence; "
    "how many sheep does the farmer have left at the end of the day?"
)


@pytest.fixture
def eval_file(tmp_path):
    path = tmp_path / "eval.jsonl"
    rows = [
        {"id": "e0", "question": EVAL_Q, "answer": "9"},
        {"id": "e1", "messages": [{"role": "user", "content": "Name three primary colours of light please."}]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _batch(*texts):
    return {"messages": [[{"role": "user", "content": t}, {"role": "assistant", "content": "ok"}] for t in texts]}


def test_ngram_overlap(eval_file):
    words = EVAL_Q.split()
    copy13 = "Quick question: " + " ".join(words[3:16]) + " - thoughts?"  # exactly 13 eval words
    copy12 = "Quick question: " + " ".join(words[3:15]) + " - thoughts?"  # 12: below n
    reworded = "A shepherd owns 17 sheep; every sheep except nine escapes. How many remain?"
    _, fn, info = build("decontam", {"eval_files": [str(eval_file)]})
    res = fn(_batch(EVAL_Q.upper(), copy13, copy12, reworded, "Name three primary colours of light please!"))
    assert res.keep == [False, False, True, True, False]
    assert res.reasons[1][0]["reason"] == "shares a 13-gram with an eval set"
    text = copy13
    start, end = res.reasons[1][0]["span"]
    assert text[start:end].lower().split() == [w.lower() for w in words[3:16]]


def test_n_is_configurable(eval_file):
    words = EVAL_Q.split()
    copy8 = " ".join(words[5:13])
    _, fn13, _ = build("decontam", {"eval_files": [str(eval_file)]})
    _, fn8, _ = build("decontam", {"eval_files": [str(eval_file)], "n": 8})
    assert fn13(_batch(copy8)).keep == [True]
    assert fn8(_batch(copy8)).keep == [False]


def test_missing_or_bad_eval_file(tmp_path, eval_file):
    with pytest.raises(FilterError, match="eval file not found: .*nope.jsonl"):
        build("decontam", {"eval_files": [str(eval_file), str(tmp_path / "nope.jsonl")]})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"q": "fine"}\n{oops\n')
    with pytest.raises(FilterError, match="bad.jsonl:2"):
        build("decontam", {"eval_files": [str(bad)]})


def test_default_eval_files_are_the_projects_held_out_sets():
    from data_filters import decontam

    assert decontam.DEFAULTS["eval_files"] == ["data/demo/eval_math.jsonl", "data/demo/eval_code.jsonl"]
    assert decontam.DEFAULTS["n"] == 13
