"""Wall time of `posttrain demo` (or `--quick`) per stage, against its budget (30 min full, 5 min quick).

Runs the demo in a fresh output root, by default with a fresh POSTTRAIN_CACHE too, so the GGUF
dequantisation and the teacher targets are included (what a first run on a new machine pays; the venv
install, ~75 s here, is not). The stages run one after another, so a stage's time is the gap between
its DONE file and the previous one's.

    .venv/bin/python benchmarks/demo.py [--quick] [--warm-cache] [--keep DIR] [--seed N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = ["filter", "sft", "rm", "eval-base", "eval-sft", "rl", "eval-rl"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="time `posttrain demo --quick`")
    parser.add_argument("--warm-cache", action="store_true", help="keep the user's POSTTRAIN_CACHE")
    parser.add_argument("--keep", help="write the stage outputs here and keep them (default: a temp dir)")
    parser.add_argument("--seed", type=int, help="every stage's seed (`posttrain demo seed=N`)")
    args = parser.parse_args()
    budget = 300.0 if args.quick else 1800.0

    work = Path(tempfile.mkdtemp(prefix="bench_demo_"))
    out = Path(args.keep) if args.keep else work / "runs"
    env = dict(os.environ)
    if not args.warm_cache:
        env["POSTTRAIN_CACHE"] = str(work / "cache")
    cmd = [sys.executable, "-m", "posttrain.cli", "demo", f"output_root={out}", "--overwrite"]
    if args.quick:
        cmd.append("--quick")
    if args.seed is not None:
        cmd.append(f"seed={args.seed}")
    load_before = os.getloadavg()[0]
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    total = time.time() - start
    load_after = os.getloadavg()[0]
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
        print(f"demo failed with exit {proc.returncode}")
        return 1

    from rich.console import Console
    from rich.table import Table

    what = "posttrain demo --quick" if args.quick else "posttrain demo"
    cache = "warm cache" if args.warm_cache else "fresh POSTTRAIN_CACHE (GGUF dequantised, teacher targets built)"
    table = Table(
        title=f"{what}: wall time per stage, {cache}; {os.cpu_count()} CPUs, "
        f"load {load_before:.1f} -> {load_after:.1f}"
    )
    for col in ("stage", "wall s", "share of budget"):
        table.add_column(col, justify="right")
    previous = start
    for stage in STAGES:
        done = (out / stage / "DONE").stat().st_mtime
        table.add_row(stage, f"{done - previous:.0f}", f"{(done - previous) / budget:.2f}")
        previous = done
    table.add_row("anchor: budget", f"{budget:.0f}", "1.00")
    table.add_row("total", f"{total:.0f}", f"{total / budget:.2f}")
    Console(width=120).print(table)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
