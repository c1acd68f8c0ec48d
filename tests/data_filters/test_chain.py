import json

import pytest

from data_filters import FilterError, build_chain, run_chain


def test_unknown_filter_names_the_closest():
    with pytest.raises(FilterError, match="unknown filter 'dedupe' \\(did you mean 'dedup'\\?\\)"):
        build_chain(["pii", "dedupe"])
    with pytest.raises(FilterError, match="not in filters"):
        build_chain(["pii"], {"safety": {"roles": ["user"]}})


def test_chain_order_and_reasons():
    chain = build_chain(["pii", "identity", "safety"])
    batch = {
        "messages": [
            [
                {"role": "user", "content": "I'm jo@x.io"},
                {"role": "assistant", "content": "I am ChatGPT, hi jo@x.io"},
            ],
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "You are an idiot."}],
            [{"role": "user", "content": "mail jo@x.io"}, {"role": "assistant", "content": "Sure."}],
        ],
        "id": ["a", "b", "c"],
    }
    out = run_chain(chain, batch)
    assert out["_keep"] == [False, False, True]
    assert out["id"] == ["a", "b", "c"]
    r0 = json.loads(out["_reasons"][0])
    assert [x["filter"] for x in r0] == ["pii", "pii", "identity"]  # redactions, then the dropping filter
    assert json.loads(out["_reasons"][1])[0]["filter"] == "safety"
    assert out["messages"][2][0]["content"] == "mail <EMAIL>"


def test_user_filter_plugin(tmp_path):
    plugin = tmp_path / "myfilter.py"
    plugin.write_text(
        "from data_filters import FilterResult\n"
        "def short(batch):\n"
        "    keep = [len(m[-1]['content']) > 3 for m in batch['messages']]\n"
        "    return FilterResult(keep, {}, [[] if k else [{'reason': 'too short'}] for k in keep])\n"
    )
    chain = build_chain(["pii", f"{plugin}:short"])
    out = run_chain(
        chain, {"messages": [[{"role": "user", "content": "ok"}], [{"role": "user", "content": "long one"}]]}
    )
    assert out["_keep"] == [False, True]
    assert json.loads(out["_reasons"][0]) == [{"filter": f"{plugin}:short", "reason": "too short"}]
    with pytest.raises(FilterError, match="has no function 'nope'"):
        build_chain([f"{plugin}:nope"])
