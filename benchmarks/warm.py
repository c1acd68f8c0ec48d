"""WARM hot paths on this machine, each against an anchor measured in the same run.

1. Training M members: as parallel Ray tasks (the stage: CPUs / M each, one torch thread per CPU) against the
   anchor of the same M members run one after another, each with the whole machine (all CPUs, all threads).
2. Scoring: pairs/s of the weight-averaged RM (one model) against the anchor of the prediction ensemble
   (M separate RMs, scores averaged). Averaging must cost one model's inference, not M.

    .venv/bin/python benchmarks/warm.py [--model SPEC] [--steps 20] [--score-model SPEC] [--pairs 64]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _jobs(init: Path, root: Path, m: int, steps: int, threads: int) -> list[dict]:
    from transformers import AutoTokenizer

    from posttrain import artifacts, warm
    from posttrain import config as cfg

    config = dataclasses.replace(
        cfg.load(warm.Config, ROOT / "configs" / "tiny" / "rm.yaml"),
        max_steps=steps,
        save_steps=10_000,
        bf16=False,
    )
    tok = AutoTokenizer.from_pretrained(init)
    rows = warm.read_pairs(ROOT / "data" / "demo" / "prefs.jsonl")
    pairs = warm.encode_pairs(tok, rows[120:], 256)
    return [
        {
            "member": k,
            "label_noise": 0.0,
            "out": str(root / f"member-{k}"),
            "init": str(init),
            "init_sha256": artifacts.dir_sha256(init),
            "train": pairs,
            "eval": pairs[:8],
            "train_sha256": "bench",
            "seed": k,
            "learning_rate": 1e-4,
            "dropout": 0.05,
            "config": cfg.to_dict(config),
            "threads": threads,
            "progress": False,
        }
        for k in range(m)
    ]


def bench_training(spec: str, steps: int, cpus: int, work: Path) -> list[tuple]:
    from posttrain import cluster, warm

    init = warm.build_init(spec, work / "init", seed=0)
    cluster.run_tasks(warm.train_member, _jobs(init, work / "warmup", 1, 2, 1), num_cpus=1)  # start workers
    rows = []
    for m in (2, 4):
        t = time.perf_counter()
        for job in _jobs(init, work / f"seq{m}", m, steps, cpus):
            cluster.run_tasks(warm.train_member, [job], num_cpus=cpus)
        sequential = time.perf_counter() - t
        t = time.perf_counter()
        cluster.run_tasks(
            warm.train_member, _jobs(init, work / f"par{m}", m, steps, max(1, cpus // m)), num_cpus=cpus / m
        )
        parallel = time.perf_counter() - t
        rows.append((f"train M={m}, {steps} steps each", "one after another (anchor)", sequential, 1.0))
        rows.append(("", f"parallel Ray tasks ({cpus / m:g} CPU each)", parallel, sequential / parallel))
    return rows


def bench_scoring(spec: str, n_pairs: int, cpus: int, work: Path) -> list[tuple]:
    import torch
    from transformers import AutoTokenizer

    from posttrain import warm
    from rewards.reward_model import RewardModelScorer

    torch.set_num_threads(cpus)
    init = warm.build_init(spec, work / "score-init", seed=0)
    tok = AutoTokenizer.from_pretrained(init)
    pairs = warm.encode_pairs(tok, warm.read_pairs(ROOT / "data" / "demo" / "prefs.jsonl")[:n_pairs], 256)
    seqs = [p["chosen_ids"] for p in pairs] + [p["rejected_ids"] for p in pairs]
    rows = []
    for m in (2, 4):
        # M members with distinct weights; only their count matters for speed
        scorers = [RewardModelScorer(str(init), batch_size=16) for _ in range(m)]
        for k, s in enumerate(scorers):
            with torch.no_grad():
                s.model.score.weight.add_(0.01 * k)
        scorers[0].score_ids(seqs[:16])  # warm-up
        t = time.perf_counter()
        per_member = [s.score_ids(seqs) for s in scorers]
        [sum(v) / m for v in zip(*per_member)]
        ensemble = time.perf_counter() - t
        t = time.perf_counter()
        scorers[0].score_ids(seqs)  # the average is one model of the same size
        average = time.perf_counter() - t
        rows.append(
            (f"score {n_pairs} pairs, M={m}", f"ensemble of {m} RMs (anchor)", ensemble, 1.0, n_pairs / ensemble)
        )
        rows.append(("", "WARM average (one RM)", average, ensemble / average, n_pairs / average))
        del scorers
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default="tiny:hidden_size=256,intermediate_size=1024,num_hidden_layers=4,"
        "num_attention_heads=4,num_key_value_heads=1,head_dim=64,seed=3",
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--score-model",
        default=None,
        help="model for the scoring benchmark (default: --model; e.g. an SFT dir of the demo)",
    )
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--only", choices=["train", "score"], default=None, help="run one of the two benchmarks")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from posttrain import cluster

    os.environ.setdefault("POSTTRAIN_CACHE", str(Path(tempfile.gettempdir()) / "posttrain-bench-cache"))
    cpus = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="warm-bench-"))
    try:
        cluster.init(None)
        load_before = os.getloadavg()[0]
        train_rows = bench_training(args.model, args.steps, cpus, work) if args.only != "score" else []
        score_rows = (
            bench_scoring(args.score_model or args.model, args.pairs, cpus, work) if args.only != "train" else []
        )
        load_after = os.getloadavg()[0]
    finally:
        cluster.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    console = Console()
    table = Table(
        title=f"WARM training: {cpus} CPUs, load average {load_before:.1f} -> {load_after:.1f} (shared machine)"
    )
    for col in ("workload", "how", "wall s", "speed-up vs anchor"):
        table.add_column(col)
    for name, how, secs, ratio in train_rows:
        table.add_row(name, how, f"{secs:.1f}", f"{ratio:.2f}x")
    if train_rows:
        console.print(table)
    table = Table(title="WARM scoring: averaged RM vs prediction ensemble")
    for col in ("workload", "how", "wall s", "pairs/s", "throughput vs anchor"):
        table.add_column(col)
    for name, how, secs, ratio, rate in score_rows:
        table.add_row(name, how, f"{secs:.2f}", f"{rate:.1f}", f"{ratio:.2f}x")
    if score_rows:
        console.print(table)


if __name__ == "__main__":
    main()
