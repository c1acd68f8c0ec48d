"""Judged runs in the real bubblewrap sandbox: a trusted judge (in a sandbox of its own) beside an untrusted
program, joined by two pipes. The program must not be able to reach its judge, read the judge's code,
write the verdict, or outlive the run."""

import secrets
import textwrap
import time

import pytest

from sandboxes import Limits, Pool, Sandbox

LIMITS = Limits(timeout=3.0, cpu_seconds=5, memory_mb=512, disk_mb=16)

# The judge sends a line, reads the answer, waits for the program to exit, writes its verdict to fd 5
# (what it prints goes nowhere).
ECHO_JUDGE = textwrap.dedent(r"""
    import os
    os.write(4, b"ping\n")
    answer = os.read(3, 100)
    while os.read(3, 100):  # until the program is done
        pass
    print("not the verdict")
    os.write(5, b"verdict: " + answer.strip() + b"\n")
""")
ECHO_PROGRAM = textwrap.dedent(r"""
    import os, sys
    line = os.read(3, 100)
    os.write(4, line.upper())
    print("program output")
    print("program errors", file=sys.stderr)
""")


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(LIMITS) as sb:
        yield sb


def clean(sandbox):
    after = sandbox.run(
        "import os\nprint(len([p for p in os.listdir('/proc') if p.isdigit()]), os.listdir('/tmp'), "
        "sorted(os.listdir('.')))"
    )
    assert after.stdout.strip() == "2 [] ['main.py']", after  # the zygote and this program only


def test_the_judge_talks_to_the_program_and_only_it_writes_the_verdict(sandbox):
    r = sandbox.run(ECHO_PROGRAM, judge=ECHO_JUDGE)
    # ("ended" when the judge is done while the program is still on its way out)
    assert r.status == "ok" and r.verdict == "verdict: PING\n" and r.program_status in ("ok", "ended")
    assert r.stdout == "program output\n" and r.stderr == "program errors\n"
    clean(sandbox)
    plain = sandbox.run("print(1)")
    assert plain.verdict is None and plain.program_status is None and plain.stdout == "1\n"


def test_the_run_lasts_as_long_as_the_judge(sandbox):
    # the program exits at once: the judge reads EOF and carries on
    early = sandbox.run(
        "import os\nos._exit(0)\n",
        judge="import os, time\ntime.sleep(0.2)\nos.write(5, str(os.read(3, 10) == b'').encode())\n",
    )
    assert early.status == "ok" and early.verdict == "True" and early.program_status == "ok"  # (long gone)
    # the program would run forever: it ends with the judge
    t0 = time.monotonic()
    hang = sandbox.run(
        "import os, time\nif os.fork() == 0:\n    time.sleep(60)\ntime.sleep(60)\n",
        judge="import os\nos.write(5, b'done')\n",
    )
    assert hang.status == "ok" and hang.verdict == "done" and hang.program_status == "ended"
    assert time.monotonic() - t0 < 2
    clean(sandbox)


def test_a_judge_past_the_timeout(sandbox):
    r = sandbox.run("pass", judge="import os\nos.write(5, b'started')\nwhile True:\n    pass\n")
    assert r.status == "timeout" and r.verdict == "started"  # what it wrote before, and no more
    clean(sandbox)


def test_a_judge_stuck_past_its_alarm_costs_only_its_run():
    with Sandbox(Limits(timeout=1.0)) as sb:
        r = sb.run("pass", judge="sum(range(10 ** 11))\n")  # one C call: no alarm interrupts it
        assert r.status == "timeout"
        again = sb.run(ECHO_PROGRAM, judge=ECHO_JUDGE)  # in a fresh judge sandbox
        assert again.status == "ok" and again.verdict == "verdict: PING\n"


def test_the_program_can_neither_see_nor_signal_its_judge(sandbox):
    kill_all = textwrap.dedent("""
        import os, signal
        seen = [int(p) for p in os.listdir("/proc") if p.isdigit()]
        for pid in set(seen) - {os.getpid()}:
            for sig in (signal.SIGSTOP, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
        os.write(4, repr(sorted(seen)).encode())
    """)
    r = sandbox.run(kill_all, judge="import os\nos.write(5, os.read(3, 100))\n")
    assert r.status == "ok", r
    seen = eval(r.verdict)
    assert len(seen) == 2 and 1 in seen  # the zygote (PID 1, immune) and itself: its judge is elsewhere
    clean(sandbox)


def test_the_program_cannot_write_the_verdict(sandbox):
    forge = textwrap.dedent(r"""
        import os
        for fd in range(0, 32):
            try:
                os.write(fd, b"FORGED\n")
            except OSError:
                pass
        opened = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            for fd in range(0, 16):
                try:
                    with open(f"/proc/{pid}/fd/{fd}", "wb") as f:
                        f.write(b"FORGED\n")
                    opened.append((pid, fd))
                except OSError:
                    pass
        print(os.getpid(), opened)
    """)
    r = sandbox.run(forge, judge="import os, time\ntime.sleep(0.3)\nos.write(5, b'honest')\n")
    assert r.verdict == "honest", r
    pid, opened = r.stdout.splitlines()[-1].split(" ", 1)
    assert all(p == pid for p, _ in eval(opened)), opened  # only its own fds
    clean(sandbox)


def test_the_program_never_sees_the_judges_code(sandbox):
    """Not in its memory (inherited from the zygote), not in any process's fds or cmdline, not in any file:
    over several runs in one sandbox. What does pass through the zygote (a program's own code) is there."""
    secret = "judge-secret-" + secrets.token_hex(16)
    judge = f"SECRET = {secret!r}\nimport os\nos.write(4, b'go')\nos.write(5, os.read(3, 10 ** 6))\n"
    search = textwrap.dedent("""
        import ctypes, os, re
        pattern = re.compile(("judge" + "-secret-").encode() + rb"[0-9a-f]{32}")
        control = "judge" + "-secret-" + "ab" * 16  # in this process's memory: the scan must find it
        libc = ctypes.CDLL(None, use_errno=True)
        hits, readable = set(), []
        # Its own memory, every readable mapping, copied out through a pipe by write(2) (which fails with
        # EFAULT where a read would crash): /proc/self/mem is closed to it (it is non-dumpable).
        r, w = os.pipe()
        for line in open("/proc/self/maps").read().splitlines():
            span, perms = line.split()[:2]
            lo, hi = (int(x, 16) for x in span.split("-"))
            tail = b""
            for at in range(lo, hi, 1 << 16) if "r" in perms else ():
                n = libc.write(w, ctypes.c_void_p(at), min(1 << 16, hi - at))
                if n <= 0:
                    break
                chunk = b""
                while len(chunk) < n:
                    chunk += os.read(r, n - len(chunk))
                hits.update(pattern.findall(tail + chunk))
                tail = chunk[-64:]
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                open(f"/proc/{pid}/mem", "rb").close()
                readable.append(pid)
            except OSError:
                pass
            own = int(pid) == os.getpid()  # (reading its own fd 3 would wait on the judge)
            for name in ["cmdline", "environ"] + [f"fd/{i}" for i in range(16) if not own]:
                try:
                    with open(f"/proc/{pid}/{name}", "rb") as f:
                        hits.update(pattern.findall(f.read(1 << 20)))
                except OSError:
                    pass
        for top in ("/tmp", "/sandbox", "/dev/shm"):
            for root, _, files in os.walk(top):
                for name in files:
                    try:
                        hits.update(pattern.findall(open(os.path.join(root, name), "rb").read()))
                    except OSError:
                        pass
        os.read(3, 2)
        os.write(4, repr((sorted(h.decode() for h in hits), readable)).encode())
    """)
    for _ in range(3):
        r = sandbox.run(search, judge=judge)
        assert r.status == "ok", r
        hits, readable = eval(r.verdict)
        assert hits == ["judge-secret-" + "ab" * 16] and readable == [], r.verdict  # only its own control
    shown = "judge-secret-" + secrets.token_hex(16)
    assert sandbox.run(f"x = {shown!r}").status == "ok"
    hits, _ = eval(sandbox.run(search, judge=judge).verdict)
    assert hits == sorted(["judge-secret-" + "ab" * 16, shown])
    clean(sandbox)


def test_a_pool_runs_judged_and_plain_programs():
    with Pool(LIMITS, workers=2) as pool:
        results = pool.map([ECHO_PROGRAM, "print(2)"] * 3, judges=[ECHO_JUDGE, None] * 3)
    assert [r.verdict for r in results] == ["verdict: PING\n", None] * 3
    assert [r.stdout for r in results] == ["program output\n", "2\n"] * 3
    with pytest.raises(ValueError, match="judges"):
        Pool(LIMITS).map(["pass"], judges=[])


def test_judged_runs_without_bubblewrap():
    unisolated = Limits(timeout=3.0, isolation="rlimits")
    with pytest.warns(RuntimeWarning, match="ISOLATION IS OFF"), Sandbox(unisolated) as sb:
        r = sb.run(ECHO_PROGRAM, judge=ECHO_JUDGE)
    assert r.status == "ok" and r.verdict == "verdict: PING\n"
