"""Many sandboxed programs at once: one warm `Sandbox` per worker, as many workers as usable cores.

Each worker's sandbox runs one program at a time, so plain threads suffice to drive them (the work is in
the sandboxed processes). In RL this pool lives inside each Ray reward actor, sized to that actor's CPUs.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor

from sandboxes.sandbox import Limits, Result, Sandbox


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _cpus(workers: int, pin: bool | None) -> list[int | None]:
    """The CPU of each worker's sandbox. `pin=None` pins when the workers cover every usable core: the
    pool means to keep them all busy, and a sandbox whose judge, program and driving thread share a CPU
    saves a cross-CPU wake-up per message (measured in ARCHITECTURE "Sandbox")."""
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:  # no affinity API (not Linux): the scheduler places everything
        return [None] * workers
    if pin is None:
        pin = workers >= len(cores)
    return [cores[i % len(cores)] for i in range(workers)] if pin else [None] * workers


class Pool:
    def __init__(
        self, limits: Limits = Limits(), workers: int | None = None, preload: str = "", pin: bool | None = None
    ):
        self.limits = limits
        self.preload = preload  # trusted code every sandbox runs once, as the module `sandbox_preload`
        self.workers = max(1, workers or available_cores())
        self._cpus = _cpus(self.workers, pin)
        self._idle: queue.SimpleQueue[Sandbox] = queue.SimpleQueue()
        self._all: list[Sandbox] = []
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="sandbox")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _acquire(self) -> Sandbox:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if len(self._all) < self.workers:
                sandbox = Sandbox(self.limits, self.preload, self._cpus[len(self._all)])
                self._all.append(sandbox)
                return sandbox
        return self._idle.get()

    def run(
        self, code: str, stdin: str | None = None, judge: str | None = None, *, _move_thread: bool = False
    ) -> Result:
        sandbox = self._acquire()
        try:
            # The pool's own threads (map) move to the sandbox's CPU; a caller's thread is never moved.
            if _move_thread and sandbox.cpu is not None:
                os.sched_setaffinity(0, {sandbox.cpu})
            return sandbox.run(code, stdin, judge)
        finally:
            self._idle.put(sandbox)

    def map(
        self, codes: list[str], stdins: list[str | None] | None = None, judges: list[str | None] | None = None
    ) -> list[Result]:
        """Run every program (each beside its judge, where `judges` gives one), `workers` at a time; results
        in order."""
        for name, values in (("stdins", stdins), ("judges", judges)):
            if values is not None and len(values) != len(codes):
                raise ValueError(f"got {len(codes)} programs but {len(values)} {name}")
        stdins = stdins if stdins is not None else [None] * len(codes)
        judges = judges if judges is not None else [None] * len(codes)
        return list(self._executor.map(functools.partial(self.run, _move_thread=True), codes, stdins, judges))

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        with self._lock:
            for sandbox in self._all:
                sandbox.close()
            self._all.clear()


def run_many(
    codes: list[str],
    *,
    stdins: list[str | None] | None = None,
    judges: list[str | None] | None = None,
    limits: Limits = Limits(),
    workers: int | None = None,
) -> list[Result]:
    """One-off `Pool(limits, workers).map(codes, stdins, judges)`."""
    with Pool(limits, workers) as pool:
        return pool.map(codes, stdins, judges)
