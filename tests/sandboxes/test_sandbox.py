import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from sandboxes import STATUSES, Limits, Pool, Sandbox, SandboxUnavailable, run, run_many

FAST = Limits(timeout=3.0, cpu_seconds=3)


def test_ok_with_stdout_and_stdin():
    r = run("import sys\nprint(sys.stdin.read()[::-1])", stdin="olleh", limits=FAST)
    assert (r.status, r.stdout, r.returncode) == ("ok", "hello\n", 0)
    assert r.duration > 0


def test_failures_report_traceback_and_exit_code():
    r = run("def f():\n    assert 1 == 2, 'nope'\nf()", limits=FAST)
    assert r.status == "failed" and r.returncode == 1
    assert "AssertionError: nope" in r.stderr and 'File "/sandbox/main.py", line 2' in r.stderr
    assert run("import sys; sys.exit(3)", limits=FAST).returncode == 3
    assert run("import sys; sys.exit(0)", limits=FAST).status == "ok"
    r = run("raise SystemExit('bye')", limits=FAST)
    assert r.status == "failed" and "bye" in r.stderr
    assert run("this is not python", limits=FAST).status == "failed"


def test_cpu_limit_reports_timeout():
    r = run("while True:\n    pass", limits=Limits(timeout=10, cpu_seconds=1))
    assert r.status == "timeout" and r.returncode == -signal.SIGXCPU  # the CPU rlimit, not the wall clock


def test_output_cap_applies_to_stderr_too():
    r = run("import sys\nsys.stderr.write('e' * 5000)", limits=Limits(output_bytes=1000))
    assert r.status == "output_limit" and len(r.stderr) == 1000


def test_environment_is_minimal():
    r = run("import os\nprint(sorted(os.environ))", limits=FAST)
    assert r.stdout.strip() == str(sorted(["PATH", "LANG", "HOME", "PWD", "PYTHONDONTWRITEBYTECODE"]))


def test_reused_sandbox_starts_each_program_fresh():
    with Sandbox(FAST) as sb:
        first = sb.run(
            "import random, math\nmath.pi = 3\nopen('left.txt', 'w').write('x')\nprint(random.random())"
        )
        second = sb.run("import random, math, os\nprint(random.random(), math.pi, os.path.exists('left.txt'))")
    assert first.status == second.status == "ok"
    value, pi, exists = second.stdout.split()
    assert value != first.stdout.strip() and pi == "3.141592653589793" and exists == "False"


def test_dead_zygote_is_a_sandbox_error_then_restarts():
    with Sandbox(FAST) as sb:
        assert sb.run("pass").status == "ok"
        bwrap = sb._proc
        killer = threading.Timer(0.5, bwrap.kill)
        killer.start()
        r = sb.run("import time\ntime.sleep(2)")
        killer.join()
        assert r.status == "sandbox_error"
        again = sb.run("print('back')")
        assert again.status == "ok" and again.stdout == "back\n" and sb._proc is not bwrap


def test_pool_keeps_order_and_uses_all_workers():
    codes = [f"import os, time\ntime.sleep(0.3)\nprint({i}, os.stat('/tmp').st_dev)" for i in range(6)]
    with Pool(FAST, workers=2) as pool:
        results = pool.map(codes)
    assert [int(r.stdout.split()[0]) for r in results] == list(range(6))
    assert len({r.stdout.split()[1] for r in results}) == 2  # two sandboxes, each with its own /tmp


def test_pinned_pool_runs_each_sandbox_on_its_own_cpu_and_leaves_the_caller_alone():
    cores = sorted(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    codes = ["import os, time\ntime.sleep(0.2)\nprint(sorted(os.sched_getaffinity(0)))"] * 4
    with Pool(FAST, workers=2, pin=True) as pool:
        seen = {r.stdout.strip() for r in pool.map(codes)}
        with_judge = pool.run(
            "pass", judge="import os\nos.write(5, repr(sorted(os.sched_getaffinity(0))).encode())"
        )
    assert seen == {str([cores[0]]), str([cores[1 % len(cores)]])}
    assert with_judge.verdict in seen  # the judge runs on its program's CPU
    assert os.sched_getaffinity(0) == before
    with Pool(FAST, workers=1, pin=False) as pool:
        assert pool.map(codes[:1])[0].stdout.strip() == str(cores)


def test_pool_pins_by_default_only_when_its_workers_cover_every_core():
    from sandboxes.pool import _cpus

    cores = sorted(os.sched_getaffinity(0))
    assert _cpus(len(cores), None) == cores
    assert _cpus(2 * len(cores), None) == cores * 2
    if len(cores) > 1:
        assert _cpus(len(cores) - 1, None) == [None] * (len(cores) - 1)
    assert _cpus(1, True) == [cores[0]] and _cpus(len(cores), False) == [None] * len(cores)


def test_run_many_with_stdins():
    results = run_many(["print(input() * 2)"] * 3, stdins=["a", "b", "c"], limits=FAST, workers=2)
    assert [r.stdout for r in results] == ["aa\n", "bb\n", "cc\n"]
    with pytest.raises(ValueError):
        run_many(["pass"], stdins=[], limits=FAST)


def test_missing_bubblewrap_refuses_with_install_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxUnavailable) as e:
        run("print(1)", limits=FAST)
    assert "apt-get install bubblewrap" in str(e.value) and "rlimits" in str(e.value)


def test_bubblewrap_that_cannot_create_namespaces_is_refused_with_its_reason(monkeypatch):
    tmp_path = Path(tempfile.mkdtemp())  # readable by the sandbox user, unlike pytest's tmp_path as root
    tmp_path.chmod(0o755)
    fake = tmp_path / "bwrap"  # what a container without user namespaces makes bwrap say
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with pytest.raises(SandboxUnavailable) as e:
        run("print(1)", limits=FAST)
    shutil.rmtree(tmp_path)
    assert "No permissions to creating new namespace" in str(e.value) and "bubblewrap" in str(e.value)


def test_rlimits_only_mode_warns_loudly_and_still_limits(capfd):
    from sandboxes import sandbox as sandbox_module

    sandbox_module._warn_unisolated.cache_clear()
    limits = Limits(timeout=2, cpu_seconds=2, isolation="rlimits")
    with pytest.warns(RuntimeWarning, match="ISOLATION IS OFF"):
        r = run("print('hi')", limits=limits)
    assert r.status == "ok" and r.stdout == "hi\n"
    assert "SANDBOX ISOLATION IS OFF" in capfd.readouterr().err
    assert run("x = bytearray(4 << 30)", limits=limits).status == "memory"
    assert run("import time\ntime.sleep(30)", limits=limits).status == "timeout"


def test_limits_are_validated():
    with pytest.raises(ValueError):
        Limits(isolation="docker")
    with pytest.raises(ValueError):
        Limits(timeout=0)
    assert set(STATUSES) == {"ok", "failed", "timeout", "memory", "output_limit", "killed", "sandbox_error"}


def test_imports_without_torch_or_ray():
    code = (
        "import sys, sandboxes, rewards\nimport rewards.math, rewards.code, rewards.format, rewards.workers\n"
        "rewards.load('math'), rewards.load('code'), rewards.load('reward_model')\n"
        "assert 'torch' not in sys.modules and 'ray' not in sys.modules, "
        "[m for m in sys.modules if m.startswith(('torch', 'ray'))]"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_works_in_a_process_with_fd_numbers_above_1024():
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip("cannot raise the open-file limit to 2048 here")
    resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        assert run("print('high')", limits=FAST).stdout == "high\n"
    finally:
        for fd in fds:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
