import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from posttrain import cli
from posttrain.evaluate import pass_at_k, summarize

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "data" / "demo"


def read_jsonl(path, *, skip_broken=False):
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if not skip_broken:
                raise
    return [r for r in rows if isinstance(r, dict)]


def user_texts(rows):
    """User turns, normalised (case, whitespace) so that near-copies count as the same prompt."""
    return {
        " ".join(m["content"].lower().split())
        for r in rows
        for m in r["messages"]
        if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str)
    }


def test_eval_files_are_disjoint_from_training_data():
    # (raw.jsonl, the filter stage's input, plants eval prompts on purpose for decontamination to remove)
    train = read_jsonl(DEMO / "sft.jsonl")
    for name in ("eval_math.jsonl", "eval_code.jsonl"):
        held_out = read_jsonl(DEMO / name)
        assert len(held_out) >= 30
        assert not user_texts(held_out) & user_texts(train), f"{name} prompts appear in the training data"
    code = read_jsonl(DEMO / "eval_code.jsonl")
    assert not {r["entry_point"] for r in code} & {r.get("entry_point") for r in train}


def test_eval_files_are_generated_deterministically(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_demo_data.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    for name in ("sft.jsonl", "eval_math.jsonl", "eval_code.jsonl"):
        assert (tmp_path / "demo" / name).read_bytes() == (DEMO / name).read_bytes(), name


def test_reference_replies_in_the_eval_files_score_full_marks():
    from rewards import Reward, score

    for name, reward in (("eval_math.jsonl", "math"), ("eval_code.jsonl", "code")):
        rows = read_jsonl(DEMO / name)
        columns = {k: [r.get(k) for r in rows] for k in ("answer", "prompt", "test", "entry_point")}
        s = score(
            [Reward(reward)],
            [r["messages"][:-1] for r in rows],
            [r["messages"][-1]["content"] for r in rows],
            columns,
        )
        assert s.per_reward[reward] == [1.0] * len(rows), (name, s.reasons)


@pytest.mark.parametrize(
    "n,c,k", [(n, c, k) for n in (1, 3, 5, 10) for c in range(n + 1) for k in (1, 2, 5) if k <= n]
)
def test_pass_at_k_is_the_unbiased_estimator(n, c, k):
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(exact)


def test_summarize_per_reward_and_overall():
    greedy = {"math": [1.0, 0.0, None], "code": [None, 1.0, 0.0]}
    sampled = {"math": [[1.0, 0.0], [0.0, 0.0], [None, None]], "code": [[None, None], [1.0, 1.0], [0.0, 1.0]]}
    report = summarize(["math", "code"], greedy, sampled, [1.0, 1.0, 0.0], [1, 2])
    math_, code, overall = report["per_reward"]["math"], report["per_reward"]["code"], report["overall"]
    assert math_ == {"rows": 2, "greedy_accuracy": 0.5, "sampled_mean": 0.25, "pass@1": 0.25, "pass@2": 0.5}
    assert code == {"rows": 2, "greedy_accuracy": 0.5, "sampled_mean": 0.75, "pass@1": 0.75, "pass@2": 1.0}
    # overall: a row passes when every reward that applies passes (row 1: math 0 and code 1 -> fails)
    assert overall["greedy_accuracy"] == pytest.approx(1 / 3)
    assert overall["pass@1"] == pytest.approx((0.5 + 0.0 + 0.5) / 3)
    assert overall["combined_greedy_mean"] == pytest.approx(2 / 3)
    # a scalar reward (the reward model) gets means only, and does not enter "overall"
    with_rm = summarize(
        ["math", "code", "reward_model"],
        {**greedy, "reward_model": [0.3, 0.9, 0.1]},
        {**sampled, "reward_model": [[0.2, 0.4], [0.9, 0.8], [0.1, 0.0]]},
        [1.0, 1.0, 0.0],
        [1, 2],
    )
    assert with_rm["per_reward"]["reward_model"] == {
        "rows": 3,
        "greedy_accuracy": pytest.approx(13 / 30),
        "sampled_mean": pytest.approx(2.4 / 6),
    }
    assert with_rm["overall"] == overall


PARITY = (
    "def parity(prompts, completions, **columns):  # chat prompts: completions are [{role, content}]\n"
    "    return [float(len(c[0]['content']) % 2 == 0) for c in completions]\n"
)


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    rows = read_jsonl(DEMO / "eval_math.jsonl")[:2] + read_jsonl(DEMO / "eval_code.jsonl")[:2]
    (d / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "parity.py").write_text(PARITY)
    return d


def run_eval(out, data_dir, *extra):
    from posttrain.models import tiny_model_dir

    argv = [
        "eval",
        "--model",
        str(tiny_model_dir()),
        "--data",
        str(data_dir / "mixed.jsonl"),
        "--rewards",
        f"math,code,{data_dir / 'parity.py'}:parity",
        "samples=3",
        "pass_k=[1,3]",
        "max_new_tokens=8",
        "batch_size=3",
        "torch_threads=1",
        f"output_dir={out}",
        *extra,
    ]
    return cli.main(argv)


def test_eval_end_to_end_on_a_tiny_model(tmp_path, eval_data, capsys):
    assert run_eval(tmp_path / "a", eval_data) == 0
    printed = capsys.readouterr().out
    assert "posttrain eval" in printed and "pass@3" in printed and "overall" in printed
    out = tmp_path / "a"
    assert (out / "DONE").is_file() and json.loads((out / "posttrain.json").read_text())["stage"] == "eval"
    report = json.loads((out / "report.json").read_text())
    per = report["per_reward"]
    parity_name = "parity"  # a module:function reward is named by its function
    assert (per["math"]["rows"], per["code"]["rows"], per[parity_name]["rows"]) == (2, 2, 4)
    records = read_jsonl(out / "completions.jsonl")
    assert len(records) == 4 and all(len(r["samples"]) == 3 for r in records)
    # the report's numbers are the estimator applied to the scores recorded per completion
    scores = [r["sample_scores"][parity_name] for r in records]
    expected = sum(pass_at_k(3, sum(s == 1.0 for s in row), 1) for row in scores) / 4
    assert per[parity_name]["pass@1"] == pytest.approx(expected)
    greedy = [float(len(r["greedy"]) % 2 == 0) for r in records]
    assert per[parity_name]["greedy_accuracy"] == pytest.approx(sum(greedy) / 4)
    for r in records:
        assert r["greedy_scores"]["math" if r["id"].startswith("math") else "code"] in (0.0, 1.0)
        assert r["greedy_scores"]["code" if r["id"].startswith("math") else "math"] is None
    metrics = json.loads((out / "metrics.jsonl").read_text())
    assert "overall/pass@3" in metrics and any((out / "tensorboard").iterdir())

    # same seed, same completions
    assert run_eval(tmp_path / "b", eval_data) == 0
    assert read_jsonl(tmp_path / "b" / "completions.jsonl") == records


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--rewards", "nonsense"], "unknown reward 'nonsense'"),
        (["pass_k=[5]"], "pass_k values [5]"),
        (["--data", "/no/such/file.jsonl"], "dataset not found"),
        (["rewards.weights=[1.0]"], "rewards.weights has 1 values for 3 rewards"),
        (["rewards.sandbox=docker"], "rewards.sandbox"),
        (["--model", "/no/such/model"], "model not found"),
        (["--rewards", "math,reward_model"], "needs rewards.reward_model=DIR"),
        (["--rewards", "reward_model", "--rewards.reward_model", "/no/such/rm"], "reward model not found"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, eval_data, capsys, extra, message):
    assert run_eval(tmp_path / "out", eval_data, *extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing half-made left behind


def test_unfinished_model_dir_is_refused(tmp_path, eval_data, capsys):
    model = tmp_path / "half"
    model.mkdir()
    (model / "posttrain.json").write_text("{}")
    (model / "config.json").write_text("{}")
    argv = [
        "eval",
        "--model",
        str(model),
        "--data",
        str(eval_data / "mixed.jsonl"),
        "--rewards",
        "math",
        f"output_dir={tmp_path / 'out'}",
    ]
    assert cli.main(argv) == 2
    assert "unfinished posttrain run" in capsys.readouterr().err


def test_greedy_only(tmp_path, eval_data):
    assert run_eval(tmp_path / "g", eval_data, "samples=0", "pass_k=[]") == 0
    report = json.loads((tmp_path / "g" / "report.json").read_text())
    assert report["samples"] == 0 and report["overall"]["rows"] == 4
    assert not [k for k in report["overall"] if k.startswith("pass@")]
    assert all(r["samples"] == [] for r in read_jsonl(tmp_path / "g" / "completions.jsonl"))
