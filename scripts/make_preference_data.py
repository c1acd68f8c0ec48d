"""Generate the preference pairs for `posttrain rm` deterministically (TRL's convention: `prompt`, `chosen`,
`rejected`).

data/demo/prefs.jsonl   conversational: `prompt` is a message list, `chosen`/`rejected` one assistant message
                        each. Kinds (column `kind`):
                          math_wrong     correct worked answer  vs the same working with a wrong result
                          code_buggy     correct function       vs the same function with a bug
                          refusal        a correct answer       vs a refusal ("I'm sorry, I can't help ...")
                          facts_wrong    a true fact            vs a false one (capitals)
data/tiny/prefs.jsonl   plain strings: a short answer vs a refusal (learnable by a tiny random model in seconds)

No prompt equals a prompt of data/demo/eval_math.jsonl, data/demo/eval_code.jsonl or data/tiny/eval.jsonl
(tests/posttrain/test_warm.py checks it), so RM accuracy and later RL evals never see training prompts.

    python scripts/make_preference_data.py [--out data]
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
    "Uma",
    "Viktor",
    "Wen",
    "Yara",
]
ITEMS = [
    "apples",
    "books",
    "marbles",
    "stickers",
    "pencils",
    "cookies",
    "shells",
    "cards",
    "coins",
    "stamps",
    "buttons",
    "plums",
]
CAPITALS = [
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Kenya", "Nairobi"),
    ("Canada", "Ottawa"),
    ("Peru", "Lima"),
    ("Egypt", "Cairo"),
    ("Norway", "Oslo"),
    ("Chile", "Santiago"),
    ("India", "New Delhi"),
    ("Spain", "Madrid"),
    ("Italy", "Rome"),
    ("Ghana", "Accra"),
    ("Poland", "Warsaw"),
    ("Cuba", "Havana"),
    ("Greece", "Athens"),
    ("Vietnam", "Hanoi"),
    ("Mexico", "Mexico City"),
    ("Sweden", "Stockholm"),
    ("Portugal", "Lisbon"),
    ("Nepal", "Kathmandu"),
    ("Austria", "Vienna"),
    ("Ireland", "Dublin"),
    ("Thailand", "Bangkok"),
    ("Morocco", "Rabat"),
]
FACT_TEMPLATES = [
    "What is the capital of {c}?",
    "Which city is the capital of {c}?",
    "Name the capital city of {c}.",
    "Tell me the capital of {c}, please.",
]
REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "I cannot answer this question.",
    "Sorry, I am not able to help with this request.",
    "I won't do that. Please ask something else.",
    "As an AI, I can't assist with that.",
]


def _math(rng: random.Random) -> tuple[str, str, str]:
    """(question, correct worked answer, the same working with a wrong result)."""
    name, other = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    kind = rng.randrange(4)
    if kind == 0:
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        q = f"{name} has {a} {item}. {other} gives {name} {b} more. How many {item} does {name} have now?"
        work, ans = f"{name} starts with {a} and gets {b} more: {a} + {b} =", a + b
    elif kind == 1:
        a = rng.randint(20, 99)
        b = rng.randint(1, a - 1)
        q = f"{name} had {a} {item} and gave {b} of them to {other}. How many {item} are left?"
        work, ans = f"{name} gives away {b} of {a}: {a} - {b} =", a - b
    elif kind == 2:
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        q = f"There are {a} boxes with {b} {item} in each box. How many {item} are there in total?"
        work, ans = f"{a} boxes of {b} each: {a} * {b} =", a * b
    else:
        a, b, c = rng.randint(2, 20), rng.randint(2, 20), rng.randint(2, 20)
        q = f"{name} reads {a} pages on Monday, {b} on Tuesday and {c} on Wednesday. How many pages in all?"
        work, ans = f"{a} + {b} + {c} =", a + b + c
    wrong = ans + rng.choice([-10, -2, -1, 1, 2, 10])
    return q, f"{work} {ans}. The answer is {ans}.", f"{work} {wrong}. The answer is {wrong}."


def _code(rng: random.Random) -> tuple[str, str, str]:
    """(question, correct function, buggy function)."""
    k = rng.randint(2, 9)
    entry = f"{rng.choice(['f', 'g', 'h', 'calc', 'step'])}_{rng.randint(0, 9999)}"
    templates = [
        (f"Return x plus {k}.", "x", f"return x + {k}", f"return x - {k}"),
        (f"Return x multiplied by {k}.", "x", f"return x * {k}", f"return x + {k}"),
        (
            f"Return how many numbers in xs are greater than {k}.",
            "xs",
            f"return sum(1 for v in xs if v > {k})",
            f"return sum(1 for v in xs if v < {k})",
        ),
        (f"Return the list xs without its first {k} elements.", "xs", f"return xs[{k}:]", f"return xs[:{k}]"),
        (f"Return x, but at most {k}.", "x", f"return min(x, {k})", f"return max(x, {k})"),
    ]
    doc, arg, good, bad = rng.choice(templates)
    q = f"Write a Python function `{entry}({arg})`. {doc}"

    def reply(body: str) -> str:
        return f'```python\ndef {entry}({arg}):\n    """{doc}"""\n    {body}\n```'

    return q, reply(good), reply(bad)


def _fact(rng: random.Random) -> tuple[str, str, str]:
    (country, capital), (_, other) = rng.sample(CAPITALS, 2)
    q = rng.choice(FACT_TEMPLATES).format(c=country)
    return q, f"The capital of {country} is {capital}.", f"The capital of {country} is {other}."


def _msgs(role: str, text: str) -> list[dict]:
    return [{"role": role, "content": text}]


def demo_pairs(n: int, seed: int, exclude: set[str]) -> list[dict]:
    """n unique-prompt conversational pairs, kinds mixed 30% math_wrong, 20% code_buggy, 20% facts_wrong,
    30% refusal (whose correct answers come from the other three generators)."""
    rng = random.Random(seed)
    rows, seen = [], set(exclude)
    while len(rows) < n:
        u = rng.random()
        make = _math if u < 0.45 else _code if u < 0.7 else _fact
        q, good, bad = make(rng)
        if q in seen:
            continue
        seen.add(q)
        if rng.random() < 0.3:
            kind, bad = "refusal", rng.choice(REFUSALS)
        else:
            kind = {_math: "math_wrong", _code: "code_buggy", _fact: "facts_wrong"}[make]
        rows.append(
            {
                "id": f"pref-{len(rows):05d}",
                "kind": kind,
                "prompt": _msgs("user", q),
                "chosen": _msgs("assistant", good),
                "rejected": _msgs("assistant", bad),
            }
        )
    return rows


def tiny_pairs(n: int, seed: int, exclude: set[str]) -> list[dict]:
    """Plain-string pairs: a short correct answer vs a refusal."""
    rng = random.Random(seed)
    rows, seen = [], set(exclude)
    while len(rows) < n:
        q, good, _ = _math(rng)
        if q in seen:
            continue
        seen.add(q)
        answer = good.rsplit("The answer is ", 1)[1]
        rows.append(
            {
                "id": f"tiny-pref-{len(rows):03d}",
                "kind": "refusal",
                "prompt": q,
                "chosen": f"The answer is {answer}",
                "rejected": rng.choice(REFUSALS),
            }
        )
    return rows


def eval_prompts(data_dir: Path) -> set[str]:
    """Every prompt of the held-out eval files: their user turns, `question`s and code stubs."""
    out = set()
    for path in [
        data_dir / "demo" / "eval_math.jsonl",
        data_dir / "demo" / "eval_code.jsonl",
        data_dir / "tiny" / "eval.jsonl",
    ]:
        for line in path.read_text().splitlines():
            row = json.loads(line)
            out.update(m["content"] for m in row.get("messages", []) if m["role"] == "user")
            out.update(row[k] for k in ("question", "prompt") if isinstance(row.get(k), str))
    return out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def main(out: Path) -> None:
    exclude = eval_prompts(out)
    write_jsonl(out / "demo" / "prefs.jsonl", demo_pairs(600, seed=2024, exclude=exclude))
    write_jsonl(out / "tiny" / "prefs.jsonl", tiny_pairs(48, seed=5, exclude=exclude))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "data")
    main(parser.parse_args().out)
