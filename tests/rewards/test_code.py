import json
from pathlib import Path

import pytest

from rewards.code import code_reward, extract_code, function_task

ROOT = Path(__file__).resolve().parents[2]
ROW = {
    "prompt": 'from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    """Sum of xs."""\n',
    "test": "def check(candidate):\n    assert candidate([1, 2]) == 3\n    assert candidate([]) == 0\n"
    "    for n in range(3):\n        assert candidate([n]) == n\n    assert candidate([5]) == 6\n",
    "entry_point": "total",
}


def columns(n, row=ROW):
    return {k: [v] * n for k, v in row.items()}


@pytest.mark.parametrize(
    "text,code",
    [
        ("Here:\n```python\ndef f():\n    return 1\n```\nDone.", "def f():\n    return 1\n"),
        ("```py\na = 1\n```\nthen\n```python\nb = 2\n```", "b = 2\n"),  # the last Python block
        ("```\nx = 3\n```", "x = 3\n"),
        ("```bash\nls\n```", "ls\n"),
        ("```python\nunterminated = 1\n", "unterminated = 1\n"),
        ("def raw():\n    pass\n", "def raw():\n    pass\n"),
    ],
)
def test_extract_code(text, code):
    assert extract_code(text) == code


def test_humaneval_style_rows():
    good_def = "```python\ndef total(xs):\n    return sum(xs) if xs != [5] else 6\n```"
    body_only = "    return sum(xs) + (1 if xs == [5] else 0)\n"
    wrong = "```python\ndef total(xs):\n    return sum(xs)\n```"  # fails only the last assert
    crash = "```python\ndef total(xs):\n    raise ValueError\n```"
    scores = code_reward(["p"] * 4, [good_def, body_only, wrong, crash], **columns(4))
    assert scores == [1.0, 1.0, 0.0, 0.0]
    assert scores.reasons == [None, None, "wrong value", "exception: ValueError"]
    fractions = code_reward(["p"] * 4, [good_def, body_only, wrong, crash], fraction=True, **columns(4))
    assert fractions == [1.0, 1.0, 0.75, 0.0]  # 4 asserting statements in check(); the loop is one
    assert fractions.reasons == scores.reasons


def test_stub_imports_survive_a_full_redefinition():
    candidate, judge = function_task("def total(xs: List[int]) -> int:\n    return sum(xs)\n", ROW, fraction=False)
    assert "from typing import List" in candidate and ROW["test"] not in candidate  # the tests go to the judge
    assert repr(ROW["test"]) in judge
    assert code_reward(
        ["p"], ["def total(xs: List[int]) -> int:\n    return sum(xs) + (xs == [5])\n"], **columns(1)
    ) == [1.0]


def test_a_trl_user_gets_plain_floats_and_conversational_completions_work():
    completion = [
        {"role": "assistant", "content": "```python\ndef total(xs):\n    return sum(xs) + (xs == [5])\n```"}
    ]
    out = code_reward(
        prompts=[[{"role": "user", "content": "Sum them."}]],
        completions=[completion],
        completion_ids=[[1, 2]],
        trainer_state=None,
        log_extra=None,
        **columns(1),
    )
    assert out == [1.0] and isinstance(out, list) and all(type(x) is float for x in out)


def test_helpers_come_from_the_prompt_not_the_completion():
    row = {
        "prompt": 'def encode(s):\n    return s[::-1]\n\n\ndef decode(s):\n    """Undo encode."""\n',
        "test": "def check(candidate):\n    assert candidate(encode('abc')) == 'abc'\n",
        "entry_point": "decode",
    }
    # redefining the helper to match a wrong decode passed in the old single-program harness
    cheat = "def encode(s):\n    return s\n\ndef decode(s):\n    return s\n"
    honest = "def decode(s):\n    return s[::-1]\n"
    out = code_reward(["p"] * 2, [cheat, honest], **{k: [v] * 2 for k, v in row.items()})
    assert out == [0.0, 1.0] and out.reasons[0] == "wrong value"


def test_assert_list_rows_and_fraction():
    tests = ["assert double(2) == 4", "assert double(0) == 0", "assert double(-1) == -3"]
    done = code_reward(
        ["p"] * 2, ["def double(x):\n    return 2 * x", "def double(x):\n    return x"], tests=[tests, tests]
    )
    assert done == [0.0, 0.0]
    assert code_reward(["p"], ["def double(x):\n    return 2 * x"], tests=[tests[:2]]) == [1.0]
    part = code_reward(
        ["p"] * 2,
        ["def double(x):\n    return 2 * x", "def double(x):\n    return x"],
        tests=[tests, tests],
        fraction=True,
    )
    assert part == pytest.approx([2 / 3, 1 / 3])
    assert part.reasons == ["wrong value", "wrong value"]


def test_assert_rows_may_call_several_functions_and_use_setup_names():
    tests = ["assert area(side) == 9", "assert perimeter(side) == 12", "assert sorted(pair()) == [1, 2]"]
    code = (
        "def area(s):\n    return s * s\n\ndef perimeter(s):\n    return 4 * s\n\ndef pair():\n    return (2, 1)\n"
    )
    assert code_reward(["p"], [code], tests=[tests], test_setup_code=["side = 3"]) == [1.0]
    missing = code_reward(
        ["p"], ["def area(s):\n    return s * s\n"], tests=[tests], test_setup_code=["side = 3"], fraction=True
    )
    assert missing == pytest.approx([1 / 3]) and missing.reasons == ["exception: NameError"]


def test_stdin_stdout_cases_are_compared_on_the_host():
    program = "import sys\nnums = list(map(int, sys.stdin.read().split()))\nprint(sum(nums))   \n\n"
    cols = {"input": [["1 2\n", "1\n", "0 0 0\n"]] * 3, "output": [["3\n", "1", "0\n\n"]] * 3}
    wrong = "import sys\nprint(len(sys.stdin.read().split()))\n"
    crash = "raise ValueError('no')\n"
    out = code_reward(["p"] * 3, [program, wrong, crash], **cols)
    assert out == [1.0, 0.0, 0.0]  # trailing whitespace does not count
    assert out.reasons == [None, "case 1 of 3: wrong output", "case 1 of 3: exception: ValueError"]
    part = code_reward(["p"] * 3, [program, wrong, crash], fraction=True, **cols)
    assert part == pytest.approx([1.0, 1 / 3, 0.0])  # `wrong` happens to be right for "1"
    single = code_reward(["p"], ["print(input()[::-1])"], input=["abc\n"], output=["cba"])
    assert single == [1.0]
    slow = code_reward(["p"], ["import time\ntime.sleep(60)"], input=[""], output=[""], timeout=1)
    assert slow == [0.0] and slow.reasons == ["case 1 of 1: timeout"]


@pytest.mark.parametrize(
    "cols,message",
    [
        ({"input": [["1", "2"]], "output": [["1"]]}, "2 inputs but 1 outputs"),
        ({"input": [[1]], "output": [["1"]]}, "column 'input' must be a string or a list of strings"),
        ({"tests": [[3]]}, "column 'tests' must be a string or a list of strings"),
    ],
)
def test_bad_rows_are_one_clear_error(cols, message):
    with pytest.raises(ValueError, match=message):
        code_reward(["p"], ["print(1)"], **cols)


def test_rows_whose_own_tests_do_not_run_are_not_scored():
    broken = {"prompt": "def f():\n    pass\n", "test": "def check(candidate:\n", "entry_point": "f"}
    no_check = {"prompt": "def f():\n    pass\n", "test": "x = 1\n", "entry_point": "f"}
    out = code_reward(
        ["p"] * 3, ["def f():\n    return 1\n"] * 3, **{k: [broken[k], no_check[k], ROW[k]] for k in broken}
    )
    assert out == [None, None, 0.0]
    assert out.reasons[:2] == ["the row's tests do not run (SyntaxError)", "the row's tests do not run (KeyError)"]


def test_a_rows_tests_judged_again_give_the_same_verdicts():
    """The judge server keeps each row's compiled tests: a row judged many times (RL's samples per prompt),
    in both modes and interleaved with other rows, scores as if judged alone; a row whose tests do not
    compile is refused every time."""
    right, wrong = "def total(xs):\n    return sum(xs)\n", "def total(xs):\n    return 0\n"
    tests = ["assert double(2) == 4", "assert double(0) == 0", "assert double(-1) == -3"]
    broken = {"prompt": "def f():\n    pass\n", "test": "def check(candidate:\n", "entry_point": "f"}
    for _ in range(3):  # one worker: every judge runs in the same judge server
        assert code_reward(["p"] * 2, [right, wrong], workers=1, **columns(2)) == [0.0, 0.0]
        assert code_reward(["p"] * 2, [right, wrong], workers=1, fraction=True, **columns(2)) == pytest.approx(
            [3 / 4, 1 / 4]
        )
        doubles = ["def double(x):\n    return 2 * x", "def double(x):\n    return x"]
        assert code_reward(["p"] * 2, doubles, workers=1, tests=[tests[:2]] * 2) == [1.0, 0.0]
        assert code_reward(["p"] * 2, doubles, workers=1, tests=[tests] * 2, fraction=True) == pytest.approx(
            [2 / 3, 1 / 3]
        )
        refused = code_reward(["p"], ["def f():\n    return 1\n"], workers=1, **columns(1, broken))
        assert refused == [None] and refused.reasons == ["the row's tests do not run (SyntaxError)"]


@pytest.mark.parametrize(
    "cheat",
    [
        "import sys\nsys.exit(0)",
        "import os\nos._exit(0)",
        "raise SystemExit",
        "def total(xs):\n    while True:\n        pass",
        "print('x' * (10 << 20))",
    ],
)
def test_cheats_and_failures_score_zero(cheat):
    out = code_reward(["p"], [cheat], timeout=2, **columns(1))
    assert out == [0.0] and out.reasons[0]


def test_mbpp_style_rows():
    cols = {
        "test_list": [["assert area(2) == 4", "assert area(3) == 9"]] * 2,
        "test_setup_code": ["import math", "import math"],
    }
    assert code_reward(
        ["p"] * 2, ["def area(s):\n    return int(math.pow(s, 2))", "def area(s):\n    return s"], **cols
    ) == [1.0, 0.0]


def test_rows_without_tests_are_not_scored():
    assert code_reward(["p", "p"], ["def f(): pass", "def f(): pass"], answer=["1", "2"]) == [None, None]
    mixed = code_reward(
        ["p"] * 2,
        ["def total(xs):\n    return sum(xs) + (xs == [5])"] * 2,
        prompt=[ROW["prompt"], None],
        test=[ROW["test"], None],
        entry_point=[ROW["entry_point"], None],
    )
    assert mixed == [1.0, None]


def test_trl_style_prompt_positional_is_the_stub():
    cols = {k: v for k, v in columns(1).items() if k != "prompt"}
    assert code_reward([ROW["prompt"]], ["    return sum(xs) + (xs == [5])\n"], **cols) == [1.0]


def test_demo_eval_reference_solutions_pass():
    rows = [json.loads(line) for line in (ROOT / "data/demo/eval_code.jsonl").read_text().splitlines()]
    completions = [r["messages"][-1]["content"] for r in rows]
    cols = {k: [r[k] for r in rows] for k in ("prompt", "test", "entry_point")}
    assert code_reward(["p"] * len(rows), completions, **cols) == [1.0] * len(rows)
    assert code_reward(["p"] * len(rows), ["pass"] * len(rows), **cols) == [0.0] * len(rows)
