"""`posttrain eval` with TRL's own reward functions (the installed `trl.rewards`) on a conversational eval
file with a `solution` column: every sample gets exactly what TRL computes when it calls them."""

import json

from trl.rewards import accuracy_reward, think_format_reward

from posttrain import cli

ROWS = [
    {
        "id": "a",
        "messages": [
            {"role": "system", "content": "Reason in <think> tags."},
            {"role": "user", "content": "What is 1/3 + 0?"},
        ],
        "solution": "\\frac{1}{3}",
    },
    {
        "id": "b",
        "messages": [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}],
        "solution": "4",
    },
    {"id": "c", "messages": [{"role": "user", "content": "A colour?"}], "solution": "blue"},  # gold unparseable
]


def test_posttrain_eval_scores_trl_rewards_as_trl_does(tmp_path):
    from posttrain.models import tiny_model_dir

    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = tmp_path / "out"
    argv = [
        "eval",
        "--model",
        str(tiny_model_dir()),
        "--data",
        str(data),
        "--rewards",
        "trl.rewards:accuracy_reward,trl.rewards:think_format_reward",
        "samples=2",
        "pass_k=[1]",
        "max_new_tokens=8",
        "batch_size=3",
        "torch_threads=1",
        f"output_dir={out}",
    ]
    assert cli.main(argv) == 0
    records = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["a", "b", "c"]
    for name, fn in (("accuracy_reward", accuracy_reward), ("think_format_reward", think_format_reward)):
        for key, texts in (
            ("greedy_scores", [[r["greedy"]] for r in records]),
            ("sample_scores", [r["samples"] for r in records]),
        ):
            prompts = [[m for m in row["messages"] if m["role"] != "assistant"] for row in ROWS]
            flat = [(p, t, row["solution"]) for p, ts, row in zip(prompts, texts, ROWS) for t in ts]
            trl = fn(
                prompts=[p for p, _, _ in flat],
                completions=[[{"role": "assistant", "content": t}] for _, t, _ in flat],
                completion_ids=[[0]] * len(flat),
                solution=[s for _, _, s in flat],
                trainer_state=None,
                log_extra=lambda *a: None,
                log_metric=lambda *a: None,
            )
            got = [r[key][name] for r in records]
            got = [s for row in got for s in (row if isinstance(row, list) else [row])]
            assert got == trl, (name, key)
        assert all(r["greedy_scores"][name] is not None or name == "accuracy_reward" for r in records)
    assert records[2]["greedy_scores"]["accuracy_reward"] is None  # what TRL gives an unparseable gold
    assert "greedy_reasons" in records[0] and not records[0]["greedy_reasons"]  # no call failed
