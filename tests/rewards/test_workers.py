"""A reward that hangs, loops, segfaults, leaks memory or calls os._exit costs only its own samples."""

from pathlib import Path

import pytest

from rewards import Reward, as_trl, score
from rewards.workers import Workers

EVIL = str(Path(__file__).with_name("evil.py"))


@pytest.fixture(scope="module")
def workers():
    with Workers(processes=2, memory_mb=1024) as w:
        yield w


@pytest.mark.parametrize("bad", ["hang", "loop", "segfault", "exit", "raise", "leak"])
def test_a_bad_sample_costs_only_itself(workers, bad):
    completions = ["ok", bad, "fine!"]
    # the leak must reach the memory limit before the timeout, even on a loaded machine
    timeout = 20.0 if bad == "leak" else 2.0
    s = score([Reward(f"{EVIL}:evil", timeout=timeout, name="evil")], ["p"] * 3, completions, {}, workers=workers)
    assert s.per_reward["evil"] == [2.0, None, 5.0]
    reason = s.reasons["evil"][1]
    expected = {
        "hang": "timeout",
        "loop": "timeout",
        "segfault": "SIGSEGV",
        "exit": "exit code 7",
        "raise": "KeyError",
        "leak": "memory",
    }[bad]
    assert expected in reason, reason
    assert s.reasons["evil"][0] is None and s.combined == [2.0, None, 5.0]
    # and the workers carry on
    again = score([Reward(f"{EVIL}:evil", name="evil")], ["p"], ["again"], {}, workers=workers)
    assert again.per_reward["evil"] == [5.0]


def test_prints_do_not_break_the_protocol(workers):
    s = score([Reward(f"{EVIL}:evil", name="evil")], ["p"] * 2, ["print", "x"], {}, workers=workers)
    assert s.per_reward["evil"] == [5.0, 1.0]


def test_contract_violations_are_reported(workers, caplog):
    s = score([Reward(f"{EVIL}:not_numbers", name="r")], ["p"] * 2, ["a", "b"], {}, workers=workers)
    assert s.per_reward["r"] == [None, None]
    assert all("non-number score" in r for r in s.reasons["r"])
    # A wrong-length batch is logged, then scored sample by sample (where a length of 1 is right).
    s = score([Reward(f"{EVIL}:wrong_length", name="r")], ["p"] * 2, ["a", "b"], {}, workers=workers)
    assert "must return a list of 2 scores" in caplog.text and s.per_reward["r"] == [1.0, 1.0]


def test_builtin_rewards_in_workers_with_weights(workers, caplog):
    caplog.set_level("INFO", logger="rewards")
    completions = ["The answer is \\boxed{4}", "The answer is \\boxed{5}"]
    s = score(
        [Reward("math", weight=2.0), Reward("format", weight=0.5)],
        ["q"] * 2,
        completions,
        {"answer": ["4", "4"]},
        workers=workers,
    )
    assert s.per_reward == {"math": [1.0, 0.0], "format": [1.0, 1.0]}
    assert s.combined == [2.5, 0.5]
    # each reward's scores are logged on their own
    assert "reward math: mean 0.5000 over 2 scored, 0 None" in caplog.text
    assert "reward format: mean 1.0000 over 2 scored, 0 None" in caplog.text


def test_length_mismatch_is_an_error(workers):
    with pytest.raises(ValueError, match="same length"):
        score([Reward("math")], ["q"], ["a", "b"], {}, workers=workers)


def test_as_trl_wraps_a_reward_for_trainers(workers):
    fn = as_trl(Reward(f"{EVIL}:evil", timeout=1.0, name="evil"), workers)
    assert fn.__name__ == "evil"
    # TRL passes extra keyword arguments, some per sample (completion_ids), some not (trainer_state)
    out = fn(
        prompts=["p"] * 3,
        completions=["ab", "hang", "abc"],
        completion_ids=[[1], [2], [3]],
        trainer_state=object(),
        answer=["x", "y", "z"],
    )
    assert out == [2.0, None, 3.0]


def test_calls_are_batched_and_a_failure_costs_only_its_batch(workers, caplog):
    completions = ["a", "bb", "raise", "dddd", "eeeee"]
    s = score([Reward(f"{EVIL}:evil", name="evil", batch_size=2)], ["p"] * 5, completions, {}, workers=workers)
    assert s.per_reward["evil"] == [1.0, 2.0, None, 4.0, 5.0]
    retried = [r for r in caplog.records if "retrying them one by one" in r.getMessage()]
    assert len(retried) == 1 and "samples 2..3" in retried[0].getMessage()  # only the failing call's batch
