"""Reward calls in worker processes, each under a hard wall-clock timeout, each called as TRL calls it.

A reward that hangs, loops, segfaults, leaks memory or calls `os._exit` must cost only its own samples.
Threads cannot give that (nothing can stop a thread; math-verify's own timeout is `signal.alarm`, which
works only in a process's main thread), so every call runs in the main thread of a worker process
(`python -m rewards.workers`). A call that times out gets its worker killed (with its whole process
group) and replaced; a worker that dies is replaced. A failed batch call is then retried one sample at a
time, so only the samples that trigger the failure score None, each with its reason logged.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from rewards.contract import trl_completions

log = logging.getLogger("rewards")


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _readable(fd: int, timeout: float) -> bool:
    # poll, not select: select() fails outright on fd numbers >= 1024 (busy processes such as Ray workers).
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


class _Worker:
    def __init__(self, memory_mb: int | None):
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
            POSTTRAIN_REWARD_MEMORY_MB=str(memory_mb or 0),
            PYTHONUNBUFFERED="1",
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rewards.workers"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )

    def call(self, request: tuple, timeout: float) -> tuple[str, object]:
        """('ok', scores) | ('error' | 'memory' | 'timeout' | 'died', reason)."""
        data = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self.proc.stdin.write(struct.pack(">Q", len(data)) + data)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return "died", self._death()
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        buf, need = bytearray(), 8
        while len(buf) < need:
            left = deadline - time.monotonic()
            if left <= 0 or not _readable(fd, left):
                self.kill()
                return "timeout", f"no answer within {timeout:g} s (worker killed)"
            chunk = os.read(fd, max(need - len(buf), 1 << 20))
            if not chunk:
                return "died", self._death()
            buf += chunk
            if need == 8 and len(buf) >= 8:
                need = 8 + struct.unpack(">Q", buf[:8])[0]
        return pickle.loads(bytes(buf[8:need]))

    def _death(self) -> str:
        try:
            rc = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = self.proc.returncode
        how = f"signal {signal.Signals(-rc).name}" if rc is not None and rc < 0 else f"exit code {rc}"
        return f"worker process died ({how})"

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the reward's own children too
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


class Workers:
    """A few reward worker processes, started on demand and reused across calls."""

    def __init__(self, processes: int | None = None, memory_mb: int | None = 8192):
        self.processes = max(1, processes or min(4, _available_cores()))
        self.memory_mb = memory_mb
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._count = 0
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(self.processes, thread_name_prefix="reward")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _acquire(self) -> _Worker:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self._count < self.processes:
                self._count += 1
                return _Worker(self.memory_mb)
        return self._idle.get()

    def _release(self, worker: _Worker, status: str) -> None:
        if status in ("ok", "error") and worker.alive:
            self._idle.put(worker)
            return
        worker.kill()
        self._idle.put(_Worker(self.memory_mb))

    def call(self, reward, prompts: list, completions: list, columns: dict, extras: dict | None = None):
        """One reward call in a worker: ((scores, reasons, logs), None) or (None, why the call failed)."""
        worker = self._acquire()
        status = "died"
        try:
            status, payload = worker.call(
                (reward.spec, reward.options, prompts, completions, columns, extras or {}), reward.timeout
            )
        finally:
            self._release(worker, status)
        if status == "ok":
            return payload, None
        return None, f"{status}: {payload}"

    def score(self, rewards: list, prompts: list, completions: list, columns: dict, extras: dict | None = None):
        """Every reward on every sample, in calls of `reward.batch_size` samples spread over the workers, each
        called as TRL calls it (`rewards.trl_completions`; `extras`: keyword arguments that are not
        per-sample); a failed call is retried one sample at a time. -> (scores, reasons, logs) per reward."""
        n = len(completions)
        if len(prompts) != n or any(not isinstance(v, list) or len(v) != n for v in columns.values()):
            raise ValueError(f"prompts, completions and every column must be lists of the same length ({n})")
        clash = sorted({"prompts", "completions", "log_extra", "log_metric"} & (set(columns) | set(extras or {})))
        if clash:
            raise ValueError(f"columns named {clash} would clash with the reward's own arguments of those names")
        completions = trl_completions(prompts, completions)
        per = {r.name: [None] * n for r in rewards}
        reasons = {r.name: [None] * n for r in rewards}
        logs = {r.name: {} for r in rewards}  # by first sample of the call, so that they come out in order

        def submit(r, lo, hi):
            cols = {k: v[lo:hi] for k, v in columns.items()}
            return self._executor.submit(self.call, r, prompts[lo:hi], completions[lo:hi], cols, extras)

        calls = {
            (r.name, lo): (r, lo, min(lo + r.batch_size, n), submit(r, lo, min(lo + r.batch_size, n)))
            for r in rewards
            for lo in range(0, n, max(1, r.batch_size))
        }
        retries = {}
        for (name, lo), (r, lo, hi, future) in calls.items():
            result, reason = future.result()
            if result is not None:
                per[name][lo:hi], reasons[name][lo:hi], logs[name][lo] = result
            elif hi - lo == 1:
                reasons[name][lo] = reason
                log.warning("reward %s scored None for sample %d: %s", name, lo, reason)
            else:
                log.warning(
                    "reward %s failed on samples %d..%d (%s); retrying them one by one", name, lo, hi - 1, reason
                )
                for i in range(lo, hi):
                    retries[name, i] = submit(r, i, i + 1)
        for (name, i), future in retries.items():
            result, reason = future.result()
            if result is not None:
                (per[name][i],), (reasons[name][i],), logs[name][i] = result
            else:
                reasons[name][i] = reason
                log.warning("reward %s scored None for sample %d: %s", name, i, reason)
        return per, reasons, {name: [e for lo in sorted(by) for e in by[lo]] for name, by in logs.items()}

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        while True:
            try:
                self._idle.get_nowait().kill()
            except queue.Empty:
                break


def _picklable(value) -> bool:
    try:
        pickle.dumps(value)
    except Exception:  # noqa: BLE001 - a log entry that cannot cross is dropped, not the scores
        return False
    return True


def _serve() -> None:
    """Worker main loop: length-prefixed pickles in on stdin, out on a private copy of stdout."""
    import resource

    from rewards import contract

    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a reward's prints go to stderr, never into the protocol
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    memory_mb = int(os.environ.get("POSTTRAIN_REWARD_MEMORY_MB") or 0)
    if memory_mb:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, hard))  # soft only: children may set theirs
    loaded = {}

    def reply(obj) -> None:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        proto_out.write(struct.pack(">Q", len(data)) + data)
        proto_out.flush()

    while True:
        header = proto_in.read(8)
        if len(header) < 8:
            return
        spec, options, prompts, completions, columns, extras = pickle.loads(
            proto_in.read(struct.unpack(">Q", header)[0])
        )
        try:
            key = (spec, repr(sorted(options.items())))
            if key not in loaded:
                loaded[key] = contract.load(spec, **options)
            logs = []
            out = loaded[key](
                prompts=prompts,
                completions=completions,
                **columns,
                **extras,
                log_extra=lambda column, values, logs=logs: logs.append(("extra", column, list(values))),
                log_metric=lambda name, value, logs=logs: logs.append(("metric", name, value)),
            )
            n = len(completions)
            result = (
                contract.check_scores(out, n, spec),
                contract.check_reasons(out, n, spec),
                [e for e in logs if _picklable(e)],
            )
            reply(("ok", result))
        except MemoryError:
            reply(("memory", "MemoryError (worker replaced)"))
            os._exit(1)
        except BaseException as e:  # noqa: BLE001 - a reward's SystemExit/KeyboardInterrupt is its failure too
            reply(("error", f"{type(e).__name__}: {e}"[:2000]))


if __name__ == "__main__":
    _serve()
