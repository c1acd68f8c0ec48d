"""Generate the demo chat data deterministically: math word problems and short code tasks.

Writes data/demo/sft.jsonl (training) and data/demo/eval_math.jsonl, data/demo/eval_code.jsonl (held out: no
eval prompt or function name appears in training, and the eval rows use phrasings that no training row uses).
Each row has a `kind` (add1, sub20, times, ...; the code family). Answers and unit tests stay as columns
(`answer`; HumanEval-style `prompt`/`test`/`entry_point`) for the RL and eval stages. (data/tiny/sft.jsonl is
a fixed test fixture made by an earlier version of this script: tests pin results to it.)

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


# Math kinds: (operation, operand ranges). The base model's pass@1/pass@8 on each, in chat format and with 3
# solved exemplars, is in docs/ARCHITECTURE.md ("Demo data", scripts/measure_demo_kinds.py); kinds are kept
# where the model has partial competence and RL has room (pass@8 well above pass@1). Two-digit sums
# (10-49 + 10-49) were measured and dropped: 0% greedy and 2% pass@1 even with the exemplars.
MATH_KINDS = {
    "add1": ("add", (1, 9), (1, 9)),  # one-digit sums
    "add21": ("add", (10, 89), (1, 9)),  # two-digit plus one-digit
    "sub20": ("sub", (5, 20), (1, 19)),  # differences within 20
    "times": ("mul", (2, 10), (2, 10)),  # times tables
}

# Phrasings per operation. The last EVAL_PHRASINGS of each list are held out: only eval rows use them, so the
# demo's table measures phrasings the student never trained on.
PHRASINGS = {
    "add": [
        "{name} has {a} {item}. {other} gives {name} {b} more. How many {item} does {name} have now?",
        "What is {a} + {b}?",
        "Add {a} and {b}.",
        "{name} picked {a} {item} in the morning and {b} in the afternoon. How many {item} did {name} pick "
        "altogether?",
        "There are {a} {item} in a bag and {b} {item} on the table. How many {item} are there in total?",
        "Compute the sum of {a} and {b}.",
        "{name} scored {a} points in the first game and {b} points in the second game. How many points did "
        "{name} score in all?",
        "A shelf holds {a} {item}. {name} puts {b} more {item} on it. How many {item} are on the shelf now?",
        "{a} + {b} = ?",
        "If you have {a} {item} and find {b} more, how many {item} do you have?",
        "What is {a} plus {b}?",
        "{name} walked {a} blocks to school and {b} blocks to the park. How many blocks did {name} walk?",
        "Find the total of {a} and {b}.",
        "A box has {a} red {item} and {b} blue {item}. How many {item} are in the box?",
    ],
    "sub": [
        "{name} had {a} {item} and gave {b} of them to {other}. How many {item} are left?",
        "What is {a} - {b}?",
        "Subtract {b} from {a}.",
        "There were {a} {item} in a jar. {name} took out {b}. How many {item} remain in the jar?",
        "A bus had {a} passengers. At the next stop, {b} got off. How many passengers are on the bus now?",
        "{name} has {a} {item}. {other} has {b}. How many more {item} does {name} have than {other}?",
        "{a} - {b} = ?",
        "{name} needs {a} {item} and already has {b}. How many more {item} does {name} need?",
        "What is {a} minus {b}?",
        "{name} baked {a} {item} and {other} ate {b} of them. How many {item} are left?",
        "Take {b} away from {a}. What do you get?",
        "What is the difference between {a} and {b}?",
        "A tree had {a} birds. {b} flew away. How many birds are still in the tree?",
        "{name} is {a} years old and {other} is {b}. How much older is {name}?",
    ],
    "mul": [
        "There are {a} boxes with {b} {item} in each box. How many {item} are there in total?",
        "What is {a} times {b}?",
        "Multiply {a} by {b}.",
        "{name} buys {a} packs of {item}. Each pack has {b} {item}. How many {item} does {name} buy?",
        "A garden has {a} rows of plants with {b} plants in each row. How many plants are in the garden?",
        "What is {a} x {b}?",
        "Each of {a} children has {b} {item}. How many {item} do the children have altogether?",
        "{a} * {b} = ?",
        "{name} reads {b} pages every day for {a} days. How many pages does {name} read?",
        "What is the product of {a} and {b}?",
        "Compute {a} multiplied by {b}.",
        "{a} tables have {b} legs each. How many legs are there in all?",
        "{name} puts {b} {item} on each of {a} plates. How many {item} are on the plates?",
        "How much is {a} groups of {b}?",
    ],
}
EVAL_PHRASINGS = 4
SYMBOL = {"add": "+", "sub": "-", "mul": "*"}


def _operands(rng: random.Random, op: str, ra: tuple[int, int], rb: tuple[int, int]) -> tuple[int, int]:
    a, b = rng.randint(*ra), rng.randint(*rb)
    if op == "sub" and b >= a:
        a, b = b + 1, a  # a positive difference
    return a, b


def _math_problem(rng: random.Random, split: str) -> tuple[str, str, str, str]:
    """(kind, question, worked answer, final answer) of a random kind, in a phrasing of `split`."""
    kind = rng.choice(sorted(MATH_KINDS))
    op, ra, rb = MATH_KINDS[kind]
    a, b = _operands(rng, op, ra, rb)
    ans = {"add": a + b, "sub": a - b, "mul": a * b}[op]
    phrasings = PHRASINGS[op]
    pool = phrasings[:-EVAL_PHRASINGS] if split == "train" else phrasings[-EVAL_PHRASINGS:]
    name, other = rng.sample(NAMES, 2)
    q = rng.choice(pool).format(name=name, other=other, item=rng.choice(ITEMS), a=a, b=b)
    return kind, q, f"{a} {SYMBOL[op]} {b} = {ans}. The answer is {ans}.", str(ans)


# One-line function families: (name, argument, what it does, body, test inputs); the body computes the
# expected values of the tests.
def _code_families(k: int) -> list[tuple]:
    return [
        ("add_k", "x", f"return x plus {k}", f"x + {k}", [(1,), (-3,), (10,)]),
        ("times_k", "x", f"return x multiplied by {k}", f"x * {k}", [(2,), (0,), (-4,)]),
        ("minus_k", "x", f"return x minus {k}", f"x - {k}", [(10,), (0,), (k,)]),
        ("square", "x", "return the square of x", "x * x", [(3,), (0,), (-5,)]),
        ("is_even", "n", "return True if n is even, else False", "n % 2 == 0", [(4,), (7,), (0,)]),
        ("first", "xs", "return the first element of the list xs", "xs[0]", [([5, 1],), ([9],)]),
        ("last", "xs", "return the last element of the list xs", "xs[-1]", [([5, 1],), ([9],)]),
        ("total", "xs", "return the sum of the numbers in xs", "sum(xs)", [([1, 2, 3],), ([],)]),
        ("biggest", "xs", "return the largest number in xs", "max(xs)", [([1, 7, 3],), ([-2, -9],)]),
        ("shout", "s", "return the string s in upper case", "s.upper()", [("hi",), ("",)]),
        ("backwards", "s", "return the string s reversed", "s[::-1]", [("abc",), ("",)]),
        ("size", "xs", "return the number of elements in xs", "len(xs)", [([1, 2, 3],), ([],)]),
        ("repeat_k", "s", f"return the string s repeated {k} times", f"s * {k}", [("ab",), ("",)]),
        (
            "drop_first_k",
            "xs",
            f"return the list xs without its first {k} elements",
            f"xs[{k}:]",
            [(list(range(12)),), ([],), ([1, 2],)],
        ),
        ("clip_k", "x", f"return x, but at most {k}", f"min(x, {k})", [(1,), (k + 5,), (k,)]),
        (
            "count_above",
            "xs",
            f"return how many numbers in xs are greater than {k}",
            f"sum(1 for v in xs if v > {k})",
            [([1, 5, 9, 12],), ([],), ([k, k + 1],)],
        ),
    ]


# Request phrasings; the last EVAL_CODE_PHRASINGS are held out for the eval rows.
CODE_PHRASINGS = [
    "Write a Python function `{sig}`. {Doc}.",
    "Implement `{sig}` in Python: it should {doc}.",
    "Define a Python function named {entry} that takes {arg} and should {doc}.",
    "Complete this Python function:\n\n{stub}",
    "I need a function `{sig}` that will {doc}. Write it in Python.",
    "Python: write `{sig}` to {doc}.",
    "Can you code a Python function {entry}({arg})? It has to {doc}.",
    "Give me Python code for `{sig}`, which must {doc}.",
]
EVAL_CODE_PHRASINGS = 2


def _code_task(rng: random.Random, split: str) -> dict:
    """A HumanEval-style task of a random family: function stub, reference solution, check(candidate) tests."""
    k = rng.randint(2, 9)
    base, arg, doc, body, cases = rng.choice(_code_families(k))
    entry = f"{base}_{rng.randint(0, 999)}"
    doc_sentence = doc[0].upper() + doc[1:]
    stub = f'def {entry}({arg}):\n    """{doc_sentence}."""\n'
    namespace: dict = {}
    exec(f"def f({arg}):\n    return {body}\n", namespace)
    expected = [namespace["f"](*c) for c in cases]
    calls = [f"candidate({', '.join(map(repr, c))})" for c in cases]
    asserts = "\n".join(f"    assert {call} == {e!r}" for call, e in zip(calls, expected))
    pool = CODE_PHRASINGS[:-EVAL_CODE_PHRASINGS] if split == "train" else CODE_PHRASINGS[-EVAL_CODE_PHRASINGS:]
    question = rng.choice(pool).format(
        sig=f"{entry}({arg})", entry=entry, arg=arg, doc=doc, Doc=doc_sentence, stub=stub
    )
    return {
        "kind": base,
        "prompt": stub,
        "solution": f"def {entry}({arg}):\n    return {body}\n",
        "test": f"def check(candidate):\n{asserts}\n",
        "entry_point": entry,
        "question": question,
    }


def math_row(rng: random.Random, idx: int, split: str) -> dict:
    kind, q, a, ans = _math_problem(rng, split)
    return {
        "id": f"math-{idx:05d}",
        "task": "math",
        "kind": kind,
        "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
        "answer": ans,
    }


def code_row(rng: random.Random, idx: int, split: str) -> dict:
    t = _code_task(rng, split)
    return {
        "id": f"code-{idx:05d}",
        "task": "code",
        "kind": t["kind"],
        "messages": [
            {"role": "user", "content": t["question"]},
            {"role": "assistant", "content": f"```python\n{t['solution']}```"},
        ],
        "prompt": t["prompt"],
        "test": t["test"],
        "entry_point": t["entry_point"],
    }


def generate(n_math: int, n_code: int, seed: int, exclude: set[str], split: str = "train") -> list[dict]:
    """Unique rows (by user prompt) in the phrasings of `split`, skipping prompts in `exclude`."""
    rng = random.Random(seed)
    rows, seen = [], set(exclude)
    for make, n in ((math_row, n_math), (code_row, n_code)):
        made = 0
        while made < n:
            row = make(rng, made, split)
            keys = {row["messages"][0]["content"]}
            if "entry_point" in row:  # and a function name of its own
                keys.add(f"entry_point:{row['entry_point']}")
            if keys & seen:
                continue
            seen |= keys
            rows.append(row)
            made += 1
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def main(out: Path) -> None:
    eval_rows = generate(60, 30, seed=1234, exclude=set(), split="eval")
    eval_prompts = {r["messages"][0]["content"] for r in eval_rows}
    eval_prompts |= {f"entry_point:{r['entry_point']}" for r in eval_rows if r["task"] == "code"}
    train = generate(300, 100, seed=7, exclude=eval_prompts)
    random.Random(0).shuffle(train)
    write_jsonl(out / "demo" / "sft.jsonl", train)
    write_jsonl(out / "demo" / "eval_math.jsonl", [r for r in eval_rows if r["task"] == "math"])
    write_jsonl(out / "demo" / "eval_code.jsonl", [r for r in eval_rows if r["task"] == "code"])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "data")
    main(parser.parse_args().out)
