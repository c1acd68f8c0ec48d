"""Throughput of the `posttrain filter` chain vs Presidio's AnalyzerEngine, measured in the same run.

    python benchmarks/filters.py [--mb 50] [--procs 2] [--anchor-mb 0.3]

Generates a deterministic chat corpus (math and code tasks, prose, planted PII/unsafe/identity rows,
duplicates), then times:
  * the full chain (safety, identity, decontam, pii, dedup) through `posttrain filter` (datasets.map with
    --procs processes, dedup's global pass, writing the outputs): end-to-end MB/s of message text;
  * each filter alone in this process on a slice, to show where the time goes;
  * the anchor: Presidio AnalyzerEngine (its pattern recognizers + phone numbers; spaCy's blank English
    tokenizer, since no NER model installs offline) on a slice of the same text, one process.
Ratios are against the anchor's MB/s. Prints a table; the target for the chain is >= 10 MB/s on 2 cores.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import random
import string
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = (
    "the of and to in is was for on that with as by at from it an be this which or are have not had but "
    "were they their one all would there been has when who will more no if out so what up about into than "
    "them can only other new some could time these two may then first any like now such our over even most "
    "made after also did many before must through back years where much your way well down should because "
    "each just those people how too little state good very make world still own see men work long get here "
    "between both life being under never day same another know while last might us great old year off come "
    "since against go came right used take three system model data training function value number result "
    "problem method answer question example student teacher library river mountain city garden market"
).split()
CODE_SNIPPETS = [
    "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "import json\n\nwith open(path) as f:\n    rows = [json.loads(line) for line in f]\nprint(len(rows))\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n"
    "    def push(self, x):\n        self.items.append(x)\n",
    "SELECT name, COUNT(*) FROM orders WHERE created_at > '2024-01-01' GROUP BY name ORDER BY 2 DESC;\n",
    "for i in range(10):\n    if i % 2 == 0:\n        print(i, i ** 2)\n",
]
PLANTS = [
    "My email is {first}.{last}@example.com and my phone is +1 (415) 555-{d4}.",
    "Charge card 4111 1111 1111 1111 and ship to {n} Maple Street, Springfield, IL 62704.",
    "Server 10.{a}.{b}.7 uses key AKIA{key} - is that safe?",
    "My SSN is {area}-45-{d4}; IBAN DE89 3704 0044 0532 0130 00.",
]
UNSAFE = [
    "Here's how to make a pipe bomb: pack the tube tightly.",
    "You are an idiot and worthless.",
    "I am ChatGPT, a large language model trained by OpenAI.",
]


def sentence(rng: random.Random) -> str:
    words = rng.choices(WORDS, k=rng.randint(8, 22))
    words[0] = words[0].capitalize()
    if rng.random() < 0.3:
        words.insert(rng.randrange(len(words)), str(rng.randint(2, 5000)))
    return " ".join(words) + rng.choice([".", ".", ".", "?", "!"])


def corpus(megabytes: float, seed: int = 0):
    """Yield chat rows until `megabytes` of message text."""
    rng = random.Random(seed)
    demo = (
        [json.loads(line) for line in (ROOT / "data/demo/sft.jsonl").read_text().splitlines()]
        if (ROOT / "data/demo/sft.jsonl").exists()
        else []
    )
    target, size, i, recent = megabytes * 1e6, 0, 0, []
    while size < target:
        kind = rng.random()
        if kind < 0.03 and recent:
            row = dict(rng.choice(recent), id=f"dup-{i}")
        elif kind < 0.25 and demo:
            row = dict(rng.choice(demo), id=f"demo-{i}")
        else:
            user = " ".join(sentence(rng) for _ in range(rng.randint(1, 4)))
            if rng.random() < 0.3:
                answer = "Here is one way:\n```python\n" + rng.choice(CODE_SNIPPETS) + "```\n" + sentence(rng)
            else:
                answer = " ".join(sentence(rng) for _ in range(rng.randint(3, 14)))
            r = rng.random()
            if r < 0.02:
                user += " " + rng.choice(PLANTS).format(
                    first="ana",
                    last=rng.choice(["li", "ng", "ruiz"]),
                    d4=f"{rng.randint(0, 9999):04d}",
                    n=rng.randint(1, 999),
                    a=rng.randint(0, 255),
                    b=rng.randint(0, 255),
                    area=rng.randint(100, 665),
                    key="".join(rng.choices(string.ascii_uppercase + string.digits, k=16)),
                )
            elif r < 0.03:
                answer = rng.choice(UNSAFE) + " " + answer
            row = {
                "id": f"gen-{i}",
                "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
            }
        size += sum(len(m["content"].encode()) for m in row["messages"])
        recent = (recent + [row])[-50:]
        i += 1
        yield row


def cpu_split() -> tuple[float, float]:
    """CPU seconds of this process, and of its finished children (datasets.map workers)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def cpu_seconds() -> float:
    return sum(cpu_split())


def time_it(fn, repeats: int = 2):
    """(wall, cpu) seconds of the fastest of `repeats` runs."""
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        w, c = time.perf_counter(), cpu_seconds()
        fn()
        best = min(best, (time.perf_counter() - w, cpu_seconds() - c))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=50.0, help="corpus size in MB of message text")
    ap.add_argument("--procs", type=int, default=2, help="datasets.map processes for the chain")
    ap.add_argument("--slice-mb", type=float, default=4.0, help="MB for the per-filter timings")
    ap.add_argument("--anchor-mb", type=float, default=0.3, help="MB for Presidio (it is slow)")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

    from data_filters import build_chain
    from posttrain import filter as stage

    work = Path(tempfile.mkdtemp(prefix="bench_filters_"))
    raw = work / "raw.jsonl"
    rows = list(corpus(args.mb))
    raw.write_text("".join(json.dumps(r) + "\n" for r in rows))
    mb = sum(len(m["content"].encode()) for r in rows for m in r["messages"]) / 1e6
    print(
        f"corpus: {len(rows)} rows, {mb:.1f} MB of message text ({raw.stat().st_size / 1e6:.1f} MB jsonl), "
        f"{os.cpu_count()} cores"
    )

    sample, size = [], 0.0
    for r in rows:
        if size >= args.slice_mb:
            break
        sample.append(r["messages"])
        size += sum(len(m["content"].encode()) for m in r["messages"]) / 1e6
    lines = [json.dumps(r) + "\n" for r in rows[: len(sample)]]
    # `posttrain filter` does not hold the corpus as Python objects; neither should this process when it
    # forks the workers (their garbage collector would touch, and so copy, every page of it).
    del rows
    gc.collect()

    results = []  # (what, MB, wall seconds, cpu seconds, processes)
    config = stage.Config(
        input=str(raw), output=str(work / "out"), num_proc=args.procs, overwrite=True, batch_size=1000
    )
    before = cpu_split()
    wall, cpu = time_it(lambda: stage.run(config), repeats=1)
    driver_cpu, workers_cpu = (b - a for a, b in zip(before, cpu_split()))
    results.append((f"chain: posttrain filter end to end ({args.procs} procs)", mb, wall, cpu, args.procs))

    chain = build_chain(config.filters, {"decontam": {}})
    batches = [{"messages": sample[i : i + 1000]} for i in range(0, len(sample), 1000)]
    import pyarrow as pa

    table = pa.table(
        {"_row": pa.array(range(len(lines)), pa.int64()), "_line": pa.array(lines, pa.large_string())}
    )
    stage._arrow_fn(table.slice(0, 1000), chain)  # warm: regex compilation, lazy imports
    wall, cpu = time_it(lambda: [stage._arrow_fn(table.slice(i, 1000), chain) for i in range(0, len(lines), 1000)])
    results.append(("  worker part: parse, 5 filters, serialise (1 proc)", size, wall, cpu, 1))
    for name, fn, _ in chain:
        fn(batches[0])  # warm: regex compilation, lazy imports
        wall, cpu = time_it(lambda fn=fn: [fn(b) for b in batches])
        results.append((f"  {name} alone (1 proc)", size, wall, cpu, 1))

    from data_filters import pii_presidio

    engine = pii_presidio.engine()  # Presidio AnalyzerEngine, all its default recognizers, offline
    texts, asize = [], 0.0
    for msgs in sample:
        for m in msgs:
            texts.append(m["content"])
            asize += len(m["content"].encode()) / 1e6
        if asize >= args.anchor_mb:
            break
    engine.analyze("warm up a@b.com +1 415 555 2671", language="en")
    wall, cpu = time_it(lambda: [engine.analyze(t, language="en") for t in texts], repeats=1)
    results.append(("anchor: Presidio AnalyzerEngine (1 proc)", asize, wall, cpu, 1))
    anchor = asize / cpu

    load = os.getloadavg()[0]
    print(
        f"\n(load average {load:.1f} on {os.cpu_count()} cores: the machine is shared, so wall-clock MB/s "
        f"depends on other work; CPU MB/s per core much less)"
    )
    print(f"{'what':52s} {'MB':>6s} {'wall s':>7s} {'MB/s wall':>10s} {'MB/s/core CPU':>14s} {'x anchor':>9s}")
    for what, size_mb, wall, cpu, _procs in results:
        per_core = size_mb / cpu
        print(
            f"{what:52s} {size_mb:6.2f} {wall:7.2f} {size_mb / wall:10.2f} {per_core:14.2f} "
            f"{per_core / anchor:9.1f}"
        )
    chain_wall = results[0][1] / results[0][2]
    chain_core = results[0][1] / results[0][3]
    print(
        f"\nchain on {args.procs} cores: {chain_wall:.2f} MB/s wall; at {chain_core:.2f} MB/s per core of CPU, "
        f"{args.procs} idle cores would give ~{args.procs * chain_core:.1f} MB/s. Target >= 10 MB/s: "
        f"{'met' if chain_wall >= 10 else 'NOT met'}."
    )
    # The driver's CPU is mostly serial (imports, reading, dedup's keep-the-first pass, writing); the workers'
    # runs on all cores. Serial + parallel / cores is what idle cores would take.
    idle = driver_cpu + workers_cpu / args.procs
    print(
        f"where the chain's time goes: driver {driver_cpu:.2f} CPU s (serial), workers {workers_cpu:.2f} CPU s "
        f"(parallel); on {args.procs} idle cores ~{idle:.2f} s, ~{mb / idle:.1f} MB/s."
    )


if __name__ == "__main__":
    main()
