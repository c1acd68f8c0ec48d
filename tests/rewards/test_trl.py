"""TRL's own reward functions (the installed `trl.rewards`, not copies) through `rewards.score` and
`rewards.as_trl` give exactly what they give when called the way TRL's GRPOTrainer calls them."""

from trl.rewards import accuracy_reward, think_format_reward

from rewards import Reward, as_trl, score, trl_completions
from rewards.workers import Workers

PROMPTS = [
    [{"role": "system", "content": "Think first."}, {"role": "user", "content": "What is 1/3 + 0?"}],
    [{"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "user", "content": "Half of one?"}],
    [{"role": "user", "content": "Name a colour."}],
]
COMPLETIONS = [
    "<think>\nsimple\n</think>\nThe answer is $\\boxed{\\frac{1}{3}}$.",
    "<think>4</think> \\boxed{5}",
    "It is \\boxed{0.5}",
    "<think>\nhmm",
]
SOLUTIONS = ["\\frac{1}{3}", "4", "$\\frac{1}{2}$", "blue"]  # the last one does not parse: TRL scores None


def as_grpo_calls(fn, **extra):
    """`fn` called as GRPOTrainer._calculate_rewards calls a reward function on conversational data."""
    logged = []
    out = fn(
        prompts=PROMPTS,
        completions=[[{"role": "assistant", "content": c}] for c in COMPLETIONS],
        completion_ids=[[1, 2, 3]] * 4,
        solution=SOLUTIONS,
        trainer_state=None,
        log_extra=lambda column, values: logged.append(("extra", column, list(values))),
        log_metric=lambda name, value: logged.append(("metric", name, value)),
        **extra,
    )
    return out, logged


def test_trl_rewards_through_score_give_what_trl_computes():
    expected = {
        "accuracy_reward": as_grpo_calls(accuracy_reward)[0],
        "think_format_reward": as_grpo_calls(think_format_reward)[0],
    }
    assert expected == {"accuracy_reward": [1.0, 0.0, 1.0, None], "think_format_reward": [1.0, 1.0, 0.0, 0.0]}
    # posttrain's callers hand chat prompts and string completions, positionally, with the row's columns
    s = score(
        [
            Reward("trl.rewards:accuracy_reward", name="accuracy_reward"),
            Reward("trl.rewards:think_format_reward", name="think_format_reward"),
        ],
        PROMPTS,
        COMPLETIONS,
        {"solution": SOLUTIONS, "id": ["a", "b", "c", "d"]},
    )
    assert s.per_reward == expected
    assert s.reasons == {"accuracy_reward": [None] * 4, "think_format_reward": [None] * 4}
    # what accuracy_reward logs for TRL's completions table
    assert [entry[1] for entry in s.logs["accuracy_reward"]] == ["solution", "gold_parsed", "answer_parsed"]


def test_as_trl_is_called_by_trl_and_hands_the_logs_back():
    with Workers(processes=1) as workers:
        fn = as_trl(Reward("trl.rewards:accuracy_reward", name="accuracy_reward"), workers)
        assert as_grpo_calls(fn) == as_grpo_calls(accuracy_reward)  # scores and logs alike
        # what cannot cross to a worker (TRL's environments) is left behind, not an error
        out, _ = as_grpo_calls(fn, environments=[lambda: None] * 4)
        assert out == [1.0, 0.0, 1.0, None]


def test_the_completions_form_follows_the_prompts():
    assert trl_completions(["a", "b"], ["x", "y"]) == ["x", "y"]
    assert trl_completions(PROMPTS[:1], ["x"]) == [[{"role": "assistant", "content": "x"}]]
    already = [[{"role": "assistant", "content": "x"}]]
    assert trl_completions(PROMPTS[:1], already) == already
    try:
        trl_completions(["a", PROMPTS[0]], ["x", "y"])
    except ValueError as e:
        assert "mix" in str(e)
    else:
        raise AssertionError("mixed prompts must be refused")
