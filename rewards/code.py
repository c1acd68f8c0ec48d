"""Code reward: run the completion's code against the row's tests in the sandbox, where it cannot forge the
verdict.

Rows carry one of
- HumanEval-style `prompt` (the function stub and any helpers), `test` (defining `check(candidate)`) and
  `entry_point`;
- MBPP-style `tests` (or `test_list`): assert statements that call the candidate's functions by name, and
  optionally `test_setup_code`;
- stdin/stdout cases: `input` and `output`, a string each or lists of them (competitive programming).
Reward 1.0 if every test passes, else 0.0 (`fraction=True`: the fraction that pass: asserting statements,
or cases); None where a row has no tests, its own tests do not run, or the sandbox failed. The scores come
as a list (what TRL expects) whose `.reasons` say why each failed sample failed.

Who decides: the completion's code runs in one sandboxed process, the candidate (`candidate_process.py`);
the tests run in another, the judge (`judge_process.py`), which calls the candidate's functions over a pipe
and gets back only plain data (`plain_data.py`) or an exception, and alone counts, on a pipe only it holds.
The helpers the tests use come from the row's prompt, never from the completion. A stdin/stdout program's
output is compared here, on the host: the expected output never enters the sandbox. The completion controls
everything inside its own process, and nothing it prints, writes, patches, reads, returns or kills can make
a test count as passed.
"""

from __future__ import annotations

import atexit
import json
import re
from pathlib import Path

import sandboxes
from rewards.contract import Scored, completion_text

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_POOLS: dict[tuple, sandboxes.Pool] = {}
_HERE = Path(__file__).parent
# The harness of both processes, compiled and imported once per sandbox (its zygote's `sandbox_preload`).
HARNESS = "\n".join(
    (_HERE / name).read_text() for name in ("plain_data.py", "candidate_process.py", "judge_process.py")
)
COLUMNS = ("prompt", "test", "entry_point", "tests", "test_list", "test_setup_code", "input", "output")
_STATUS_REASONS = {
    "timeout": "timeout",
    "memory": "out of memory",
    "output_limit": "output limit exceeded",
    "killed": "killed by a signal",
}


def extract_code(text: str) -> str:
    """The last fenced Python block (or the last fenced block of any language), else the raw text."""
    blocks = _FENCE.findall(text)
    python = [code for lang, code in blocks if lang.lower() in ("python", "py", "python3", "")]
    if python:
        return python[-1]
    if blocks:
        return blocks[-1][1]
    return text


def _defines(code: str, name: str) -> bool:
    return re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None


def _strings(value, column: str) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) for v in values):
        raise ValueError(
            f"code reward: column '{column}' must be a string or a list of strings, got {value!r:.100}"
        )
    return list(values)


def candidate_program(source: str) -> str:
    """The candidate process's program: the call server (`candidate_process.py`) on the completion's code."""
    return f"from sandbox_preload import serve\nserve({source!r})\n"


def function_task(code: str, row: dict, *, fraction: bool) -> tuple[str, str] | None:
    """(candidate program, judge program) for a row with function tests, or None if it has none."""
    prompt, test, entry_point = (row.get(k) for k in ("prompt", "test", "entry_point"))
    if test and entry_point:
        # A completion that defines the function replaces the stub (whose docstring-only body is valid
        # Python, so the stub's imports and helpers stay); otherwise it continues the stub's body.
        head = prompt or ""
        source = f"{head}\n{code}" if _defines(code, entry_point) else f"{head}{code}"
        call = f"judge_check({head!r}, {test!r}, {entry_point!r}, {fraction!r})"
    elif row.get("tests") or row.get("test_list"):
        tests = _strings(row.get("tests") or row.get("test_list"), "tests")
        setup = row.get("test_setup_code") or ""
        source = f"{code}\n{setup}"  # MBPP's setup (imports, classes) is the solution's context too, as it was
        call = f"judge_asserts({setup!r}, {tests!r}, {fraction!r})"
    else:
        return None
    return candidate_program(source), f"from sandbox_preload import {call.split('(')[0]}\n{call}\n"


def stdio_cases(row: dict) -> list[tuple[str, str]] | None:
    """(stdin, expected stdout) pairs of a row with `input`/`output` columns, or None if it has none."""
    if row.get("input") is None or row.get("output") is None:
        return None
    inputs, outputs = _strings(row["input"], "input"), _strings(row["output"], "output")
    if len(inputs) != len(outputs) or not inputs:
        raise ValueError(f"code reward: {len(inputs)} inputs but {len(outputs)} outputs in a row")
    return list(zip(inputs, outputs))


def _normalised(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.rstrip().splitlines())


def _status_reason(result: sandboxes.Result) -> str:
    if result.status in _STATUS_REASONS:
        return _STATUS_REASONS[result.status]
    last = result.stderr.strip().splitlines()[-1:] or [""]
    error = last[0].split(":", 1)[0]
    return f"exception: {error}" if error.isidentifier() else f"exit code {result.returncode}"


def judged_score(result: sandboxes.Result, fraction: bool) -> tuple[float | None, str | None]:
    """Score and reason from a judged run's verdict (the judge's own output, which the candidate cannot write)."""
    if result.status == "sandbox_error":
        return None, f"sandbox error: {result.stderr[-300:]}"
    total, passed, done, reason = None, set(), False, None
    for line in (result.verdict or "").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if "error" in entry:
            return None, str(entry["error"])
        if total is None and isinstance(entry.get("total"), int) and entry["total"] > 0:
            total = entry["total"]
        elif total is not None and isinstance(entry.get("passed"), int) and 0 <= entry["passed"] < total:
            passed.add(entry["passed"])
        elif "failed" in entry and reason is None:
            reason = str(entry.get("reason"))
        done = done or entry.get("done") is True
    if reason == "the candidate process exited":
        reason += f" ({_exit_reason(result)})"
    if total is None:
        return 0.0, reason or _status_reason(result)
    score = len(passed) / total if fraction else float(done and len(passed) == total)
    if score == 1.0:
        return score, None
    return score, reason or ("timeout" if result.status == "timeout" else _status_reason(result))


def _exit_reason(result: sandboxes.Result) -> str:
    """How a judged run's candidate process ended, in words."""
    if result.program_status in _STATUS_REASONS:
        return _STATUS_REASONS[result.program_status]
    if result.returncode is not None and result.returncode < 0:
        return f"signal {-result.returncode}"
    return f"exit code {result.returncode}"


def stdio_score(
    results: list[sandboxes.Result], expected: list[str], fraction: bool
) -> tuple[float | None, str | None]:
    """Score and reason of a program over its stdin/stdout cases, compared here (never in the sandbox)."""
    reasons = []
    for k, (result, want) in enumerate(zip(results, expected)):
        if result.status == "sandbox_error":
            return None, f"sandbox error: {result.stderr[-300:]}"
        if result.status != "ok":
            reasons.append(f"case {k + 1} of {len(expected)}: {_status_reason(result)}")
        elif _normalised(result.stdout) != _normalised(want):
            reasons.append(f"case {k + 1} of {len(expected)}: wrong output")
    failed = len(reasons)
    score = 1 - failed / len(expected) if fraction else float(failed == 0)
    return score, reasons[0] if reasons else None


def _pool(limits: sandboxes.Limits, workers: int | None) -> sandboxes.Pool:
    key = (limits, workers)
    if key not in _POOLS:
        _POOLS[key] = sandboxes.Pool(limits, workers, preload=HARNESS)
    return _POOLS[key]


@atexit.register
def _close_pools() -> None:
    for pool in _POOLS.values():
        pool.close()
    _POOLS.clear()


def code_reward(
    prompts: list,
    completions: list,
    *,
    fraction: bool = False,
    timeout: float = 10.0,
    memory_mb: int = 512,
    isolation: str = "bwrap",
    workers: int | None = None,
    **columns,
) -> Scored:
    """1.0 if the completion's code passes all of its row's tests (or the fraction passed); `.reasons`."""
    n = len(completions)
    rows = [{k: columns[k][i] for k in COLUMNS if k in columns} for i in range(n)]
    jobs = []  # (sample, program, stdin, judge, expected stdout)
    for i, (completion, row) in enumerate(zip(completions, rows)):
        # TRL hands the dataset's `prompt` column over as `prompts`: then that is the stub.
        if "prompt" not in row and isinstance(prompts[i], str):
            row["prompt"] = prompts[i]
        code = extract_code(completion_text(completion))
        task = function_task(code, row, fraction=fraction)
        if task is not None:
            jobs.append((i, task[0], None, task[1], None))
            continue
        for stdin, expected in stdio_cases(row) or []:
            jobs.append((i, code, stdin, None, expected))
    limits = sandboxes.Limits(
        timeout=timeout, cpu_seconds=max(1, int(timeout) + 1), memory_mb=memory_mb, isolation=isolation
    )
    results = (
        _pool(limits, workers).map([j[1] for j in jobs], [j[2] for j in jobs], [j[3] for j in jobs])
        if jobs
        else []
    )
    scores: list[float | None] = [None] * n
    reasons: list[str | None] = [None] * n
    cases: dict[int, list] = {}
    for job, result in zip(jobs, results):
        i = job[0]
        if job[3] is not None:
            scores[i], reasons[i] = judged_score(result, fraction)
        else:
            cases.setdefault(i, []).append((result, job[4]))
    for i, done in cases.items():
        scores[i], reasons[i] = stdio_score([r for r, _ in done], [e for _, e in done], fraction)
    return Scored(scores, reasons)  # rows without tests: None, and no reason (nothing failed)
