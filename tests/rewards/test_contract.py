import math
import textwrap

import pytest

import rewards
from rewards import Reward, RewardSpecError, check_scores, combine, completion_text, load


def test_load_builtins_module_and_file(tmp_path, monkeypatch):
    assert load("math").__name__ == "math_reward"
    assert load("code").__name__ == "code_reward"
    assert load("format").__name__ == "format_reward"
    assert load("reward_model", model="runs/rm").__name__ == "reward_model"
    assert load("rewards.math:math_reward") is load("math")
    f = tmp_path / "my_rewards.py"
    f.write_text(
        "def length(prompts, completions, scale=1.0, **kw):\n    return [scale * len(c) for c in completions]\n"
    )
    assert load(f"{f}:length")(["p"], ["abc"]) == [3]
    assert load(f"{f}:length", scale=2.0)(["p"], ["abc"]) == [6.0]
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load("my_rewards:length")(["p"], ["ab"]) == [2]


def test_a_trl_reward_plugs_in_unchanged(tmp_path):
    # A reward written for TRL's GRPOTrainer: conversational completions, extra kwargs it ignores.
    f = tmp_path / "trl_reward.py"
    f.write_text(
        textwrap.dedent("""
        import re
        def format_reward(completions, **kwargs):
            pattern = r"^<think>.*?</think>"
            contents = [c[0]["content"] for c in completions]
            return [1.0 if re.match(pattern, c) else 0.0 for c in contents]
    """)
    )
    fn = load(f"{f}:format_reward")
    completions = [
        [{"role": "assistant", "content": "<think>x</think> 4"}],
        [{"role": "assistant", "content": "4"}],
    ]
    assert fn(prompts=["a", "b"], completions=completions, answer=["4", "4"], trainer_state=None) == [1.0, 0.0]


@pytest.mark.parametrize(
    "spec,message",
    [
        ("nonsense", "unknown reward 'nonsense'"),
        ("", "non-empty"),
        ("no_such_module_xyz:fn", "cannot import no_such_module_xyz"),
        ("rewards.math:no_such_fn", "has no function 'no_such_fn'"),
        ("/no/such/file.py:fn", "file not found"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec, message):
    with pytest.raises(RewardSpecError, match=message):
        load(spec)


def test_completion_text_accepts_strings_and_messages():
    assert completion_text("hi") == "hi"
    assert completion_text([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]) == "ab"
    assert completion_text([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]) == "a"
    assert completion_text(None) == ""


def test_combine_is_the_weighted_sum_over_scores_present():
    scores = {"math": [1.0, None, 0.0, None], "code": [0.5, 1.0, None, None]}
    assert combine(scores, {"math": 2.0, "code": 0.5}) == [2.25, 0.5, 0.0, None]
    assert combine({}, {}) == []


def test_check_scores():
    assert check_scores([1, None, True, float("nan")], 4, "r") == [1.0, None, 1.0, None]
    with pytest.raises(RewardSpecError):
        check_scores([1.0], 2, "r")
    with pytest.raises(RewardSpecError):
        check_scores(["a"], 1, "r")
    assert math.isclose(check_scores([0.25], 1, "r")[0], 0.25)


def test_reward_names_default_to_spec_and_must_be_unique():
    assert Reward("math").name == "math"
    with pytest.raises(RewardSpecError, match="unique"):
        rewards.score([Reward("math"), Reward("math")], ["q"], ["a"], {"answer": ["1"]})


def test_format_reward():
    fmt = load("format")
    completions = [
        "The answer is 4.",
        "so 4",
        "```python\ndef f(): pass\n```",
        "def f(): pass",
        "\\boxed{4}<end_of_turn>",
    ]
    cols = {"task": ["math", "math", "code", "code", "math"], "test": [None, None, "t", "t", None]}
    assert fmt(["q"] * 5, completions, **cols) == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert fmt(["q"], ["```\nx\n```"], tests=[["assert x"]]) == [1.0]  # rows with tests are code rows
