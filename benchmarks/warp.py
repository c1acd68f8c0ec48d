"""WARP hot paths on this machine, each against an anchor measured in the same run.

1. Merging (this table): SLERP of M = 2 fine-tunes' task vectors (lambda = 0.5), then LITI towards the init
   (eta = 0.3), of a 270M-parameter model in fp32, each result written as an HF dir. posttrain.merging streams
   row blocks from the safetensors files to the output file; the anchor loads all M + 1 state dicts fully in
   fp32 and merges in memory (per-tensor SLERP in fp32, as a straightforward script would). Each variant runs
   in its own process, so its peak RSS (ru_maxrss) is its own; the fine-tunes are the init plus small random
   deltas (1e-3 of each tensor's std), saved once as HF dirs in a temp dir.
2. The M = 2 RL runs of one WARP iteration (the same two J-BOND runs: same init, configs and seeds, as
   posttrain.warp builds them), as M parallel Ray tasks with 1 CPU and 1 torch thread each (posttrain.warp.run_all)
   against the anchor, the same runs one after another in one process with 1 torch thread (identical configs,
   so the weights must come out equal), and one after another with every core's torch threads (what a run
   without Ray would use). Model: a small random Gemma 3 (`--rl-model`, default 6 layers, hidden 256, ~5M
   parameters; byte tokenizer), so the step's compute rather than Python overhead dominates. Each variant is
   its own process; the parallel time includes the Ray workers' imports (the sequential process imports first),
   not Ray's start-up (shown beside it).

    .venv/bin/python benchmarks/warp.py [--model gemma3-270m] [--chunk-elements 4194304] [--rl-model SPEC]
                                        [--rl-steps 4] [--skip merge|rl]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LAM, ETA, M = 0.5, 0.3, 2


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_fine_tunes(model: str, work: Path) -> dict:
    """The init's HF dir and M synthetic fine-tunes of it (init + 1e-3 * std * noise per float tensor)."""
    import torch
    from safetensors.torch import load_file, save_file

    from posttrain import merging, models

    init = models.resolve(model)
    state = (
        load_file(str(init / "model.safetensors"))
        if (init / "model.safetensors").is_file()
        else dict(merging.open_state(init))
    )
    g = torch.Generator().manual_seed(0)
    dirs = []
    for m in range(M):
        out = work / f"fine-tune-{m}"
        out.mkdir()
        tuned = {}
        for k, v in state.items():
            noise = torch.randn(v.shape, generator=g, dtype=torch.float32)
            tuned[k] = (v.float() + noise.mul_(1e-3 * float(v.float().std()) if v.numel() > 1 else 1e-3)).to(
                v.dtype
            )
        save_file(tuned, str(out / "model.safetensors"), metadata={"format": "pt"})
        del tuned
        shutil.copy2(init / "config.json", out / "config.json")
        dirs.append(str(out))
    return {
        "init": str(init),
        "fine_tunes": dirs,
        "params": sum(v.numel() for v in state.values()),
        "dtype": str(next(iter(state.values())).dtype),
    }


def merge_naive(init: str, fine_tunes: list[str], work: Path) -> dict:
    """The anchor: every state dict fully in memory in fp32, SLERP and LITI per tensor, saved at the end."""
    import math

    from safetensors.torch import load_file

    t0 = time.perf_counter()
    theta0 = {k: v.float() for k, v in load_file(str(Path(init) / "model.safetensors")).items()}
    tuned = [{k: v.float() for k, v in load_file(str(Path(d) / "model.safetensors")).items()} for d in fine_tunes]
    merged = {}
    for k, base in theta0.items():
        d1, d2 = tuned[0][k] - base, tuned[1][k] - base
        cos = float((d1 * d2).sum() / (d1.norm() * d2.norm()).clamp_min(1e-30))
        omega = math.acos(max(-1.0, min(1.0, cos)))
        if math.sin(omega) < 1e-4:
            merged[k] = base + (1 - LAM) * d1 + LAM * d2
        else:
            merged[k] = base + (math.sin((1 - LAM) * omega) * d1 + math.sin(LAM * omega) * d2) / math.sin(omega)
    _save_dir(merged, init, work / "naive-slerp")
    t1 = time.perf_counter()
    final = {k: (1 - ETA) * theta0[k] + ETA * merged[k] for k in theta0}
    _save_dir(final, init, work / "naive-liti")
    t2 = time.perf_counter()
    return {"slerp_s": t1 - t0, "liti_s": t2 - t1, "final": str(work / "naive-liti")}


def _save_dir(state: dict, like: str, out: Path) -> None:
    from safetensors.torch import save_file

    out.mkdir()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy2(Path(like) / "config.json", out / "config.json")


def merge_streamed(init: str, fine_tunes: list[str], work: Path, chunk_elements: int) -> dict:
    """posttrain.merging: slerp to an HF dir, then liti from it to another, both streamed block by block."""
    from posttrain import merging

    t0 = time.perf_counter()
    slerp_dir = merging.slerp(init, fine_tunes, lam=LAM, out_dir=work / "slerp", chunk_elements=chunk_elements)
    t1 = time.perf_counter()
    final = merging.liti(init, slerp_dir, ETA, out_dir=work / "liti", chunk_elements=chunk_elements)
    t2 = time.perf_counter()
    return {"slerp_s": t1 - t0, "liti_s": t2 - t1, "final": str(final)}


def max_difference(a: str, b: str) -> dict:
    """Largest |a - b| over all weights of two models (read tensor by tensor), absolute and relative to the
    largest |b| of that tensor (fp32 rounding is ~6e-8 of it)."""
    from posttrain import merging

    sa, sb = merging.open_state(a), merging.open_state(b)
    worst_abs, worst_rel = 0.0, 0.0
    for k in sa:
        diff = float((sa[k].double() - sb[k].double()).abs().max())
        worst_abs, worst_rel = max(worst_abs, diff), max(worst_rel, diff / max(float(sb[k].abs().max()), 1e-30))
    return {"max_abs_diff": worst_abs, "max_rel_diff": worst_rel}


RL_MODEL = "tiny:hidden_size=256,intermediate_size=1024,num_attention_heads=4,head_dim=64"


def rl_jobs(args: argparse.Namespace, work: Path, cpus_per_run: float) -> tuple[object, list[dict]]:
    """The M runs of WARP's first iteration from the rl model, exactly as posttrain.warp builds them."""
    from posttrain import models, rl, warp
    from posttrain.scoring import Rewards

    inner = rl.Config(
        algorithm="bond",
        data=[str(ROOT / "data" / "tiny" / "sft.jsonl")],
        rewards=Rewards(names=["math", "format"], workers=1),
        steps=args.rl_steps,
        prompts_per_step=8,
        generation_batch=4,
        max_new_tokens=32,
        learning_rate=1e-3,
        save_steps=1000,
        bf16=False,
    )
    config = warp.Config(runs=M, run_cpus=cpus_per_run, policy=args.rl_model, output_dir=str(work), inner=inner)
    return config, warp.run_jobs(config, models.resolve(args.rl_model), work / "iter-1", 1)


def rl_variant(name: str, args: argparse.Namespace, work: Path) -> dict:
    from posttrain import cluster, warp

    if name == "rl-parallel":
        config, jobs = rl_jobs(args, work / name, 1)
        t0 = time.perf_counter()
        cluster.init(None)
        t1 = time.perf_counter()
        warp.run_all(warp.train_run, jobs, config, "rl runs")
        t2 = time.perf_counter()
        cluster.shutdown()
        return {"wall_s": t2 - t1, "ray_start_s": t1 - t0, "runs": [j["out"] for j in jobs]}
    threads = 1 if name == "rl-sequential-1" else os.cpu_count() or 1
    _, jobs = rl_jobs(args, work / name, threads)
    t0 = time.perf_counter()
    for job in jobs:
        warp.train_run(job)
    return {"wall_s": time.perf_counter() - t0, "runs": [j["out"] for j in jobs], "threads": threads}


def _variant(name: str, args: argparse.Namespace) -> None:
    """Run one variant in this (fresh) process and print its RESULT line."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    work = Path(args.work)
    setup = json.loads((work / "setup.json").read_text()) if name in ("naive", "streamed") else None
    base_rss = _peak_rss_mb()
    if name == "setup":
        result = make_fine_tunes(args.model, work)
        (work / "setup.json").write_text(json.dumps(result))
    elif name == "naive":
        result = merge_naive(setup["init"], setup["fine_tunes"], work)
    elif name == "streamed":
        result = merge_streamed(setup["init"], setup["fine_tunes"], work, args.chunk_elements)
    elif name.startswith("rl-"):
        result = rl_variant(name, args, work)
    else:  # check
        result = max_difference(args.a, args.b)
    print("RESULT " + json.dumps({**result, "peak_rss_mb": _peak_rss_mb(), "rss_after_imports_mb": base_rss}))


def _run(name: str, args: argparse.Namespace, *extra: str) -> dict:
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--variant",
            name,
            "--work",
            args.work,
            "--model",
            args.model,
            "--chunk-elements",
            str(args.chunk_elements),
            "--rl-model",
            args.rl_model,
            "--rl-steps",
            str(args.rl_steps),
            *extra,
        ],
        capture_output=True,
        text=True,
    )
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        raise SystemExit(f"variant {name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[0][7:])


def bench_merge(args: argparse.Namespace) -> tuple[dict, list[dict], dict]:
    setup = _run("setup", args)
    rows = [
        dict(_run("naive", args), variant=f"anchor: {M + 1} fp32 state dicts in memory"),
        dict(_run("streamed", args), variant="posttrain.merging, streamed"),
    ]
    diff = _run("check", args, "--a", rows[1]["final"], "--b", rows[0]["final"])
    return setup, rows, diff


def merge_table(setup: dict, rows: list[dict], diff: dict, load: tuple[float, float]):
    from rich.table import Table

    anchor = rows[0]
    table = Table(
        title=f"WARP merge of a {setup['params'] / 1e6:.0f}M-parameter model ({setup['dtype']}): SLERP of "
        f"M={M} task vectors (lambda={LAM}) + LITI (eta={ETA}), each written as an HF dir; "
        f"{os.cpu_count()} CPUs, load average {load[0]:.1f} -> {load[1]:.1f} (shared machine)"
    )
    for col in ("variant", "slerp s", "liti s", "total s", "speed vs anchor", "peak RSS MB", "peak RSS vs anchor"):
        table.add_column(col, justify="right")
    for r in rows:
        total, anchor_total = r["slerp_s"] + r["liti_s"], anchor["slerp_s"] + anchor["liti_s"]
        table.add_row(
            r["variant"],
            f"{r['slerp_s']:.1f}",
            f"{r['liti_s']:.1f}",
            f"{total:.1f}",
            f"{anchor_total / total:.2f}x",
            f"{r['peak_rss_mb']:,.0f}",
            f"{r['peak_rss_mb'] / anchor['peak_rss_mb']:.2f}x",
        )
    table.caption = (
        f"peak RSS includes ~{rows[1]['rss_after_imports_mb']:.0f} MB of interpreter + torch; final "
        f"models: max |streamed - anchor| = {diff['max_abs_diff']:.1e}, {diff['max_rel_diff']:.1e} "
        "of the tensor's "
        f"largest weight (fp32 rounding: the anchor rounds each step, posttrain once from float64)"
    )
    return table


def bench_rl(args: argparse.Namespace) -> tuple[list[dict], dict]:
    rows = [
        dict(_run("rl-sequential-1", args), variant="anchor: one after another, 1 torch thread"),
        dict(_run("rl-sequential-all", args), variant=f"one after another, {os.cpu_count()} torch threads"),
        dict(_run("rl-parallel", args), variant=f"{M} Ray tasks in parallel, 1 CPU + 1 thread each"),
    ]
    diffs = [
        _run("check", args, "--a", str(Path(a) / "model.safetensors"), "--b", str(Path(b) / "model.safetensors"))
        for a, b in zip(rows[2]["runs"], rows[0]["runs"])
    ]
    return rows, {"max_abs_diff": max(d["max_abs_diff"] for d in diffs)}


def rl_table(args: argparse.Namespace, rows: list[dict], diff: dict, load: tuple[float, float]):
    from rich.table import Table

    anchor = rows[0]["wall_s"]
    table = Table(
        title=f"WARP: the M={M} J-BOND runs of one iteration ({args.rl_steps} steps x 8 prompts, 2 anchor "
        f"samples, 32 new tokens; model {args.rl_model}); {os.cpu_count()} CPUs, load average "
        f"{load[0]:.1f} -> {load[1]:.1f} (shared machine)"
    )
    for col in ("variant", "wall s", "wall s / M", "speed vs anchor", "Ray start-up s (not in wall)"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["variant"],
            f"{r['wall_s']:.1f}",
            f"{r['wall_s'] / M:.1f}",
            f"{anchor / r['wall_s']:.2f}x",
            f"{r['ray_start_s']:.1f}" if "ray_start_s" in r else "-",
        )
    table.caption = (
        f"same runs: parallel vs anchor weights max |diff| = {diff['max_abs_diff']:.1e} (identical "
        "configs, 1 thread each); the parallel wall time includes each Ray worker importing torch"
    )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="gemma3-270m", help="model spec of the init (default: the embedded 270M)"
    )
    parser.add_argument("--chunk-elements", type=int, default=1 << 22, help="posttrain.merging's row block size")
    parser.add_argument(
        "--rl-model", default=RL_MODEL, help="model spec of the RL runs' init (default: a small tiny)"
    )
    parser.add_argument("--rl-steps", type=int, default=4, help="steps per RL run")
    parser.add_argument("--skip", choices=("merge", "rl"), help="leave one table out")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--a", help=argparse.SUPPRESS)
    parser.add_argument("--b", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        _variant(args.variant, args)
        return

    from rich.console import Console

    console = Console(width=150)
    args.work = tempfile.mkdtemp(prefix="warp-bench-")
    try:
        if args.skip != "merge":
            load_before = os.getloadavg()[0]
            setup, rows, diff = bench_merge(args)
            console.print(merge_table(setup, rows, diff, (load_before, os.getloadavg()[0])))
        if args.skip != "rl":
            load_before = os.getloadavg()[0]
            rows, diff = bench_rl(args)
            console.print(rl_table(args, rows, diff, (load_before, os.getloadavg()[0])))
    finally:
        shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
