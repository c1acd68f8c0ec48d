"""Untrusted code execution: bubblewrap namespaces + rlimits + wall-clock timeouts, and a pool.

    from sandboxes import Limits, Pool, run
    run("print(1 + 1)", limits=Limits(timeout=5))    # Result(status="ok", stdout="2\\n", ...)
    with Pool(Limits(timeout=5)) as pool:             # one warm sandbox per core
        results = pool.map(programs)
        judged = pool.map(programs, judges=judges)     # each beside a trusted judge: Result.verdict

Imports neither torch nor Ray at module level.
"""

from sandboxes.pool import Pool, available_cores, run_many
from sandboxes.sandbox import STATUSES, Limits, Result, Sandbox, SandboxUnavailable, check, run

__all__ = [
    "Limits",
    "Pool",
    "Result",
    "STATUSES",
    "Sandbox",
    "SandboxUnavailable",
    "available_cores",
    "check",
    "run",
    "run_many",
]
