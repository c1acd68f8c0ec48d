"""J-BOND on a 0/1 reward: how the tie rule changes learning (ALGORITHMS.md: with binary rewards the paper's
n = 2 signal rarely fires).

For each tie rule (paper, mid, random) and seed, J-BOND runs on the same task from the same init, and the
table reports the mean reward of the first and last 5 steps and the share of policy samples whose r_J is
non-zero (the backward term's signal; with ties="paper" it is −log 16 only when y fails and both anchors
pass). Run in one process, so the three rules see the same machine.

  .venv/bin/python benchmarks/ties.py                       # tiny Gemma 3, reward: >= 1/8 of chars in a-m
  .venv/bin/python benchmarks/ties.py --beta 1            # the backward term alone: where ties matter most
  .venv/bin/python benchmarks/ties.py --demo --steps 6      # demo SFT student, ground-truth math reward

The demo variant needs `make demo`'s runs/demo/sft; it reports the same columns on the demo math prompts.
"""

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from posttrain import rl
from posttrain.scoring import Rewards

TINY = dict(
    policy="tiny",
    data=["data/tiny/sft.jsonl"],
    rewards=Rewards(names=["tests/posttrain/rl_rewards.py:letter_binary"]),
    prompts_per_step=8,
    generation_batch=8,
    max_new_tokens=8,
    learning_rate=1e-2,
    eta=0.1,
    freeze_embeddings=False,
    torch_threads=1,
    bf16=False,
)
DEMO = dict(
    policy="runs/demo/sft",
    data=["data/demo/sft.jsonl"],
    rewards=Rewards(names=["math"]),
    prompts_per_step=8,
    generation_batch=4,
    max_new_tokens=48,
    learning_rate=1e-5,
    eta=0.05,
)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--demo", action="store_true")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--beta", type=float, default=0.5, help="1.0 = the backward (policy-gradient) term alone")
    args = ap.parse_args()
    base = DEMO if args.demo else TINY
    if args.demo:  # math prompts only
        rows = [
            r for r in map(json.loads, Path("data/demo/sft.jsonl").read_text().splitlines()) if r["task"] == "math"
        ]
    print(
        f"policy={base['policy']} rewards={base['rewards'].names} steps={args.steps} seeds={args.seeds} "
        f"beta={args.beta} load={os.getloadavg()[0]:.1f}"
    )
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.demo:
            data = Path(tmp) / "math.jsonl"
            data.write_text("".join(json.dumps(r) + "\n" for r in rows))
            base = {**base, "data": [str(data)]}
        for ties in ("paper", "mid", "random"):
            firsts, lasts, signal = [], [], []
            for seed in range(args.seeds):
                out = Path(tmp) / f"{ties}-{seed}"
                out.mkdir()
                rl.train(
                    rl.Config(
                        **base,
                        ties=ties,
                        seed=seed,
                        beta=args.beta,
                        steps=args.steps,
                        save_steps=10_000,
                        output_dir=str(out),
                    ),
                    out,
                )
                m = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
                firsts.append(statistics.mean(x["reward"] for x in m[:5]))
                lasts.append(statistics.mean(x["reward"] for x in m[-5:]))
                rolls = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
                signal.append(sum(r["bond_reward"] not in (0.0, None) for r in rolls) / len(rolls))
            table.append(
                (
                    ties,
                    statistics.mean(firsts),
                    statistics.mean(lasts),
                    statistics.mean(signal),
                    min(b - a for a, b in zip(firsts, lasts)),
                )
            )
    print(
        f"\n{'ties':<8}{'reward first 5':>15}{'reward last 5':>15}{'gain':>8}{'min gain/seed':>15}{'r_J != 0':>10}"
    )
    for ties, first, last, signal, worst in table:
        print(f"{ties:<8}{first:>15.3f}{last:>15.3f}{last - first:>8.3f}{worst:>15.3f}{signal:>10.1%}")
    print(f"(means over {args.seeds} seeds; load {os.getloadavg()[0]:.1f} at the end)")


if __name__ == "__main__":
    main()
