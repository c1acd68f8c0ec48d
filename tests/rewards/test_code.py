import json
from pathlib import Path

import pytest

from rewards.code import build_program, code_reward, extract_code

ROOT = Path(__file__).resolve().parents[2]
ROW = {
    "prompt": "from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    \"\"\"Sum of xs.\"\"\"\n",
    "test": "def check(candidate):\n    assert candidate([1, 2]) == 3\n    assert candidate([]) == 0\n"
            "    for n in range(3):\n        assert candidate([n]) == n\n    assert candidate([5]) == 6\n",
    "entry_point": "total",
}


def columns(n, row=ROW):
    return {k: [v] * n for k, v in row.items()}


@pytest.mark.parametrize("text,code", [
    ("Here:\n```python\ndef f():\n    return 1\n```\nDone.", "def f():\n    return 1\n"),
    ("```py\na = 1\n```\nthen\n```python\nb = 2\n```", "b = 2\n"),  # the last Python block
    ("```\nx = 3\n```", "x = 3\n"),
    ("```bash\nls\n```", "ls\n"),
    ("```python\nunterminated = 1\n", "unterminated = 1\n"),
    ("def raw():\n    pass\n", "def raw():\n    pass\n"),
])
def test_extract_code(text, code):
    assert extract_code(text) == code


def test_humaneval_style_rows():
    good_def = "```python\ndef total(xs):\n    return sum(xs) if xs != [5] else 6\n```"
    body_only = "    return sum(xs) + (1 if xs == [5] else 0)\n"
    wrong = "```python\ndef total(xs):\n    return sum(xs)\n```"  # fails only the last assert
    crash = "```python\ndef total(xs):\n    raise ValueError\n```"
    scores = code_reward(["p"] * 4, [good_def, body_only, wrong, crash], **columns(4))
    assert scores == [1.0, 1.0, 0.0, 0.0]
    fractions = code_reward(["p"] * 4, [good_def, body_only, wrong, crash], fraction=True, **columns(4))
    assert fractions == [1.0, 1.0, 0.75, 0.0]  # 4 asserting statements in check(); the loop is one


def test_stub_imports_survive_a_full_redefinition():
    program = build_program("def total(xs: List[int]) -> int:\n    return sum(xs)\n", ROW, fraction=False,
                            token="T")
    assert program.startswith("from typing import List") and program.rstrip().endswith("print('T')")


def test_assert_list_rows_and_fraction():
    tests = ["assert double(2) == 4", "assert double(0) == 0", "assert double(-1) == -3"]
    done = code_reward(["p"] * 2, ["def double(x):\n    return 2 * x", "def double(x):\n    return x"],
                       tests=[tests, tests])
    assert done == [0.0, 0.0]
    assert code_reward(["p"], ["def double(x):\n    return 2 * x"], tests=[tests[:2]]) == [1.0]
    part = code_reward(["p"] * 2, ["def double(x):\n    return 2 * x", "def double(x):\n    return x"],
                       tests=[tests, tests], fraction=True)
    assert part == pytest.approx([2 / 3, 1 / 3])


@pytest.mark.parametrize("cheat", [
    "import sys\nsys.exit(0)",
    "import os\nos._exit(0)",
    "raise SystemExit",
    "def total(xs):\n    while True:\n        pass",
    "print('x' * (10 << 20))",
])
def test_cheats_and_failures_score_zero(cheat):
    assert code_reward(["p"], [cheat], timeout=2, **columns(1)) == [0.0]


def test_mbpp_style_rows():
    cols = {"test_list": [["assert area(2) == 4", "assert area(3) == 9"]] * 2,
            "test_setup_code": ["import math", "import math"]}
    assert code_reward(["p"] * 2, ["def area(s):\n    return int(math.pow(s, 2))", "def area(s):\n    return s"],
                       **cols) == [1.0, 0.0]


def test_rows_without_tests_are_not_scored():
    assert code_reward(["p", "p"], ["def f(): pass", "def f(): pass"], answer=["1", "2"]) == [None, None]
    mixed = code_reward(["p"] * 2, ["def total(xs):\n    return sum(xs) + (xs == [5])"] * 2,
                        prompt=[ROW["prompt"], None], test=[ROW["test"], None],
                        entry_point=[ROW["entry_point"], None])
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
