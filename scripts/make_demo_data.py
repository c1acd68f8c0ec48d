"""Generate the demo chat data deterministically: math word problems and short code tasks.

Writes data/demo/sft.jsonl (training), data/demo/eval_math.jsonl and data/demo/eval_code.jsonl (held out:
no eval prompt appears in training), and data/tiny/sft.jsonl (a few short rows for tests). Answers and unit
tests stay as columns (`answer`; HumanEval-style `prompt`/`test`/`entry_point`) for the RL and eval stages.

    python scripts/make_demo_data.py [--out data]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

NAMES = [
    "Ana",
    "Ben",
    "Chen",
    "Dara",
    "Eli",
    "Fatima",
    "Goran",
    "Hana",
    "Ivan",
    "Jade",
    "Kofi",
    "Lena",
    "Mateo",
    "Nia",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sami",
    "Tess",
]
ITEMS = ["apples", "books", "marbles", "stickers", "pencils", "cookies", "shells", "cards", "coins", "stamps"]


def _math_problem(rng: random.Random) -> tuple[str, str, str]:
    """(question, worked answer, final answer) from one of a few templates."""
    name, other = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    kind = rng.randrange(6)
    if kind == 0:
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        q = f"{name} has {a} {item}. {other} gives {name} {b} more. How many {item} does {name} have now?"
        work, ans = f"{name} starts with {a} and gets {b} more: {a} + {b} = {a + b}.", a + b
    elif kind == 1:
        a = rng.randint(20, 99)
        b = rng.randint(1, a - 1)
        q = f"{name} had {a} {item} and gave {b} of them to {other}. How many {item} are left?"
        work, ans = f"{name} gives away {b} of {a}: {a} - {b} = {a - b}.", a - b
    elif kind == 2:
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        q = f"There are {a} boxes with {b} {item} in each box. How many {item} are there in total?"
        work, ans = f"{a} boxes of {b} each: {a} * {b} = {a * b}.", a * b
    elif kind == 3:
        b, ans = rng.randint(2, 9), rng.randint(2, 15)
        a = b * ans
        q = f"{name} shares {a} {item} equally among {b} friends. How many {item} does each friend get?"
        work = f"{a} shared among {b}: {a} / {b} = {ans}."
    elif kind == 4:
        price, n, paid = rng.randint(2, 9), rng.randint(2, 6), 50
        q = (
            f"{name} buys {n} notebooks at {price} dollars each and pays with a {paid} dollar bill. "
            f"How much change does {name} get?"
        )
        cost = price * n
        work, ans = (
            f"The notebooks cost {n} * {price} = {cost} dollars, so the change is {paid} - {cost} = "
            f"{paid - cost} dollars.",
            paid - cost,
        )
    else:
        a, b, c = rng.randint(2, 20), rng.randint(2, 20), rng.randint(2, 20)
        q = f"{name} reads {a} pages on Monday, {b} on Tuesday and {c} on Wednesday. How many pages in all?"
        work, ans = f"{a} + {b} + {c} = {a + b + c}.", a + b + c
    return q, f"{work} The answer is {ans}.", str(ans)


def _code_task(rng: random.Random) -> dict:
    """A HumanEval-style task: function stub, reference solution, check(candidate) tests."""
    k = rng.randint(2, 9)
    name_suffix = rng.randint(0, 999)
    templates = [
        ("add_k", f"Return x plus {k}.", "x", f"return x + {k}", [(1,), (-3,), (10,)], lambda x: x + k),
        ("times_k", f"Return x multiplied by {k}.", "x", f"return x * {k}", [(2,), (0,), (-4,)], lambda x: x * k),
        (
            "count_above",
            f"Return how many numbers in xs are greater than {k}.",
            "xs",
            f"return sum(1 for v in xs if v > {k})",
            [([1, 5, 9, 12],), ([],), ([k, k + 1],)],
            lambda xs: sum(1 for v in xs if v > k),
        ),
        (
            "sum_multiples",
            f"Return the sum of the numbers in xs that are multiples of {k}.",
            "xs",
            f"return sum(v for v in xs if v % {k} == 0)",
            [([k, 2 * k, 3],), ([1],), ([0, k * 5],)],
            lambda xs: sum(v for v in xs if v % k == 0),
        ),
        (
            "repeat_k",
            f"Return the string s repeated {k} times.",
            "s",
            f"return s * {k}",
            [("ab",), ("",), ("x",)],
            lambda s: s * k,
        ),
        (
            "drop_first_k",
            f"Return the list xs without its first {k} elements.",
            "xs",
            f"return xs[{k}:]",
            [(list(range(12)),), ([],), ([1, 2],)],
            lambda xs: xs[k:],
        ),
        (
            "clip_k",
            f"Return x, but at most {k}.",
            "x",
            f"return min(x, {k})",
            [(1,), (k + 5,), (k,)],
            lambda x: min(x, k),
        ),
    ]
    base, doc, arg, body, cases, fn = rng.choice(templates)
    entry = f"{base}_{name_suffix}"
    stub = f'def {entry}({arg}):\n    """{doc}"""\n'
    asserts = "\n".join(f"    assert candidate({', '.join(map(repr, c))}) == {fn(*c)!r}" for c in cases)
    return {
        "prompt": stub,
        "solution": f"    {body}\n",
        "test": f"def check(candidate):\n{asserts}\n",
        "entry_point": entry,
        "question": f"Write a Python function `{entry}({arg})`. {doc}",
    }


def math_row(rng: random.Random, idx: int) -> dict:
    q, a, ans = _math_problem(rng)
    return {
        "id": f"math-{idx:05d}",
        "task": "math",
        "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
        "answer": ans,
    }


def code_row(rng: random.Random, idx: int) -> dict:
    t = _code_task(rng)
    reply = f"```python\n{t['prompt']}{t['solution']}```"
    return {
        "id": f"code-{idx:05d}",
        "task": "code",
        "messages": [{"role": "user", "content": t["question"]}, {"role": "assistant", "content": reply}],
        "prompt": t["prompt"],
        "test": t["test"],
        "entry_point": t["entry_point"],
    }


def generate(n_math: int, n_code: int, seed: int, exclude: set[str]) -> list[dict]:
    """Unique rows (by user prompt), skipping prompts in `exclude`."""
    rng = random.Random(seed)
    rows, seen = [], set(exclude)
    for make, n in ((math_row, n_math), (code_row, n_code)):
        made = 0
        while made < n:
            row = make(rng, made)
            prompt = row["messages"][0]["content"]
            if prompt in seen:
                continue
            seen.add(prompt)
            rows.append(row)
            made += 1
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def main(out: Path) -> None:
    eval_rows = generate(60, 30, seed=1234, exclude=set())
    eval_prompts = {r["messages"][0]["content"] for r in eval_rows}
    train = generate(300, 100, seed=7, exclude=eval_prompts)
    random.Random(0).shuffle(train)
    write_jsonl(out / "demo" / "sft.jsonl", train)
    write_jsonl(out / "demo" / "eval_math.jsonl", [r for r in eval_rows if r["task"] == "math"])
    write_jsonl(out / "demo" / "eval_code.jsonl", [r for r in eval_rows if r["task"] == "code"])
    write_jsonl(out / "tiny" / "sft.jsonl", generate(12, 4, seed=99, exclude=eval_prompts))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "data")
    main(parser.parse_args().out)
