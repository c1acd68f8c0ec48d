"""Code reward: run the completion's program against the row's unit tests in the sandbox.

Rows carry HumanEval-style `prompt` (the function stub), `test` (defining `check(candidate)`) and
`entry_point`, or `tests`: a list of assert statements (MBPP's `test_list` and `test_setup_code` too). Reward 1.0 if every test passes, else 0.0
(`fraction=True`: the fraction of tests that pass); None where a row has no tests or the sandbox itself
failed. A program "passes" only if it runs to a line printing a per-run random token after the tests,
so a completion that calls `exit(0)` before the tests run does not pass.
"""

from __future__ import annotations

import ast
import atexit
import re
import secrets

import sandboxes
from rewards import completion_text

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_POOLS: dict[sandboxes.Limits, sandboxes.Pool] = {}


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


def _counting(statements: list[ast.stmt]) -> tuple[list[ast.stmt], int]:
    """Wrap each statement that asserts something so that a failure counts instead of stopping the run."""
    out, n = [], 0
    for stmt in statements:
        if not any(isinstance(node, ast.Assert) for node in ast.walk(stmt)):
            out.append(stmt)
            continue
        n += 1
        count = ast.parse("__posttrain_passed__[0] += 1").body
        handler = ast.ExceptHandler(type=ast.Name("Exception", ast.Load()), name=None, body=[ast.Pass()])
        out.append(ast.Try(body=[stmt, *count], handlers=[handler], orelse=[], finalbody=[]))
    return out, n


def build_program(code: str, row: dict, *, fraction: bool, token: str) -> str | None:
    """The program to run for one completion, or None if the row has no tests."""
    prompt, test, entry_point = (row.get(k) for k in ("prompt", "test", "entry_point"))
    tests = row.get("tests") or row.get("test_list")  # MBPP calls its assert list test_list
    if test and entry_point:
        # A completion that defines the function replaces the stub (whose docstring-only body is valid
        # Python, so the stub's imports and helpers stay); otherwise it continues the stub's body.
        head = prompt or ""
        program = f"{head}\n{code}" if _defines(code, entry_point) else f"{head}{code}"
        if fraction:
            tree = ast.parse(test)
            n = 0
            for node in tree.body:
                if isinstance(node, ast.FunctionDef) and node.name == "check":
                    node.body, n = _counting(node.body)
            test = ast.unparse(ast.fix_missing_locations(tree))
            return (f"__posttrain_passed__ = [0]\n{program}\n\n{test}\n\ncheck({entry_point})\n"
                    f"print({token!r}, __posttrain_passed__[0], {n})\n")
        return f"{program}\n\n{test}\n\ncheck({entry_point})\nprint({token!r})\n"
    if tests:
        if isinstance(tests, str):
            tests = [tests]
        tests = [row["test_setup_code"], *tests] if row.get("test_setup_code") else list(tests)
        if fraction:
            body, n = _counting(ast.parse("\n".join(tests)).body)
            checks = ast.unparse(ast.fix_missing_locations(ast.Module(body=body, type_ignores=[])))
            return (f"__posttrain_passed__ = [0]\n{code}\n\n{checks}\n"
                    f"print({token!r}, __posttrain_passed__[0], {n})\n")
        return f"{code}\n\n" + "\n".join(tests) + f"\nprint({token!r})\n"
    return None


def _pool(limits: sandboxes.Limits, workers: int | None) -> sandboxes.Pool:
    key = (limits, workers)
    if key not in _POOLS:
        _POOLS[key] = sandboxes.Pool(limits, workers)
    return _POOLS[key]


@atexit.register
def _close_pools() -> None:
    for pool in _POOLS.values():
        pool.close()
    _POOLS.clear()


def _outcome(result: sandboxes.Result, token: str, fraction: bool) -> float | None:
    if result.status == "sandbox_error":
        return None
    lines = [line.split() for line in result.stdout.splitlines() if line.startswith(token)]
    if not fraction:
        return float(result.status == "ok" and bool(lines))
    if not lines or len(lines[-1]) != 3:
        return 0.0
    passed, total = int(lines[-1][1]), int(lines[-1][2])
    return passed / total if total else float(result.status == "ok")


def code_reward(prompts: list, completions: list, *, fraction: bool = False, timeout: float = 10.0,
                memory_mb: int = 512, isolation: str = "bwrap", workers: int | None = None,
                **columns) -> list[float | None]:
    """1.0 if the completion's program passes all of its row's tests (or the fraction passed)."""
    n = len(completions)
    rows = [{k: columns[k][i] for k in ("prompt", "test", "entry_point", "tests", "test_list", "test_setup_code")
             if k in columns}
            for i in range(n)]
    for i, row in enumerate(rows):
        # TRL hands the dataset's `prompt` column over as `prompts`: then that is the stub.
        if "prompt" not in row and isinstance(prompts[i], str):
            row["prompt"] = prompts[i]
    programs, tokens = [], []
    for completion, row in zip(completions, rows):
        token = secrets.token_hex(16)
        try:
            program = build_program(extract_code(completion_text(completion)), row, fraction=fraction,
                                    token=token)
        except SyntaxError:  # a row's test code that does not parse: not the completion's fault
            program = None
        programs.append(program)
        tokens.append(token)
    todo = [i for i, p in enumerate(programs) if p is not None]
    limits = sandboxes.Limits(timeout=timeout, cpu_seconds=max(1, int(timeout) + 1), memory_mb=memory_mb,
                              isolation=isolation)
    results = _pool(limits, workers).map([programs[i] for i in todo]) if todo else []
    out: list[float | None] = [None] * n
    for i, result in zip(todo, results):
        out[i] = _outcome(result, tokens[i], fraction)
    return out
