"""Measure the base model's competence on each kind of demo task, in chat format: pass@1 and pass@8 per kind,
without and with k solved exemplars as earlier turns (the privileged context the demo's teacher gets).

Keeps the kinds where RL has room (pass@8 well above pass@1); the table goes to docs/ARCHITECTURE.md.

    python scripts/measure_demo_kinds.py [--per-kind 16] [--model gemma3-270m] [--out runs/measure-kinds]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import make_demo_data  # noqa: E402

# measured and dropped from the demo data (make_demo_data.MATH_KINDS), kept here to re-measure
DROPPED = {"add2": ("add", (10, 49), (10, 49))}
make_demo_data.MATH_KINDS.update(DROPPED)


def rows_by_kind(per_kind: int, seed: int) -> dict[str, list[dict]]:
    rows = make_demo_data.generate(400, 200, seed=seed, exclude=set(), split="eval")
    kinds: dict[str, list[dict]] = {}
    for r in rows:
        group = r["kind"] if r["task"] == "math" else "code"
        kinds.setdefault(group, []).append(r)
    return {k: v[:per_kind] for k, v in sorted(kinds.items())}


def with_exemplars(rows: list[dict], pool: list[dict], k: int, seed: int) -> list[dict]:
    """Each row with k solved rows of the same task (from the training phrasings) as earlier turns."""
    rng = random.Random(seed)
    out = []
    for r in rows:
        shots = rng.sample([p for p in pool if p["task"] == r["task"]], k)
        out.append({**r, "messages": [m for s in shots for m in s["messages"]] + r["messages"]})
    return out


def main() -> None:
    from posttrain import evaluate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--per-kind", type=int, default=16)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--exemplars", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "measure-kinds")
    args = ap.parse_args()
    pool = make_demo_data.generate(200, 100, seed=5, exclude=set(), split="train")
    table = []
    for kind, rows in rows_by_kind(args.per_kind, seed=11).items():
        for shots in (0, args.exemplars):
            data_rows = with_exemplars(rows, pool, shots, seed=3) if shots else rows
            path = args.out / f"{kind}-{shots}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(r) + "\n" for r in data_rows))
            reward = "math" if rows[0]["task"] == "math" else "code"
            config = evaluate.Config(
                model=args.model,
                data=[str(path)],
                rewards=evaluate.scoring.Rewards(names=[reward], timeout=300.0),
                output_dir=str(args.out / f"{kind}-{shots}"),
                samples=args.samples,
                pass_k=[1, args.samples],
                max_new_tokens=40,
                overwrite=True,
                torch_threads=2,
            )
            report = json.loads((evaluate.run(config) / "report.json").read_text())["per_reward"][reward]
            table.append({"kind": kind, "exemplars": shots, **report})
            print(json.dumps(table[-1]), flush=True)
    (args.out / "table.json").write_text(json.dumps(table, indent=2))
    print(f"{'kind':10} {'shots':>5} {'greedy':>7} {'pass@1':>7} {'pass@' + str(args.samples):>7}")
    for t in table:
        print(
            f"{t['kind']:10} {t['exemplars']:>5} {t['greedy_accuracy']:>7.3f} {t['pass@1']:>7.3f} "
            f"{t['pass@' + str(args.samples)]:>7.3f}"
        )


if __name__ == "__main__":
    main()
