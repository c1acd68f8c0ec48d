"""Hostile programs against the real bubblewrap sandbox: each must be contained, answered within
timeout + 1 s, leave the host unchanged, and leave the (reused) sandbox clean for the next program."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from sandboxes import Limits, Sandbox

LIMITS = Limits(timeout=2.0, cpu_seconds=5, memory_mb=512, disk_mb=16, file_size_mb=8, open_files=128)
PROJECT = Path(__file__).resolve().parents[2]
MARKER = f"posttrain-attack-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def sandbox():
    # One warm sandbox for every attack, as in a pool: each attack also checks that the previous ones
    # left nothing behind in it.
    with Sandbox(LIMITS) as sb:
        yield sb


def host_cmdlines() -> list[bytes]:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                out.append(Path(f"/proc/{pid}/cmdline").read_bytes())
            except OSError:
                pass
    return out


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(pid))
    out, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def attack(sandbox, code: str, stdin=None):
    """Run an attack; check it was answered in time and left neither the host nor the sandbox dirty."""
    t0 = time.monotonic()
    result = sandbox.run(textwrap.dedent(code), stdin)
    assert time.monotonic() - t0 <= LIMITS.timeout + 1, result
    assert not [c for c in host_cmdlines() if MARKER.encode() in c], "a sandboxed process outlived its run"
    inside = descendants(sandbox._proc.pid)
    assert len(inside) <= 2, (
        f"{len(inside)} processes in the sandbox after the run: expected the zygote "
        "and at most its idle pre-forked child"
    )
    after = sandbox.run(
        "import os\nprint(len([p for p in os.listdir('/proc') if p.isdigit()]), "
        "os.listdir('/tmp'), os.listdir('.'), os.listdir('/dev/shm'))"
    )
    assert after.status == "ok", after
    # nothing but the zygote and this program (which ran in the pre-forked child) in the sandbox
    assert after.stdout.strip() == "2 [] ['main.py'] []", after.stdout
    return result


def test_fork_bomb(sandbox):
    r = attack(
        sandbox,
        """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """,
    )
    assert r.status == "timeout"


def test_fork_bomb_bounded_by_process_limit(sandbox):
    r = attack(
        sandbox,
        """
        import os, time
        n = 0
        for _ in range(500):
            try:
                if os.fork() == 0:
                    time.sleep(5)
                    os._exit(0)
                n += 1
            except OSError:
                break
        print(n)
    """,
    )
    assert r.status == "ok" and int(r.stdout) < LIMITS.processes


def test_memory_bomb(sandbox):
    r = attack(
        sandbox,
        """
        chunks = []
        while True:
            chunks.append(bytearray(64 << 20))
    """,
    )
    assert r.status == "memory" and "MemoryError" in r.stderr


def test_infinite_loop(sandbox):
    r = attack(sandbox, "while True:\n    pass\n")
    assert r.status == "timeout"


def test_sleep_past_timeout(sandbox):
    r = attack(sandbox, "import time\ntime.sleep(60)\n")
    assert r.status == "timeout"


def test_sigterm_ignored(sandbox):
    r = attack(
        sandbox,
        """
        import signal
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        while True:
            pass
    """,
    )
    assert r.status == "timeout"


@pytest.mark.parametrize("parent_waits", [False, True])
def test_detached_child_does_not_outlive_the_run(sandbox, parent_waits):
    # Double fork + setsid, then exec a sleeper carrying MARKER; `attack` checks the host has no process
    # with MARKER once the run is answered.
    r = attack(
        sandbox,
        f"""
        import os, sys, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(300)", "{MARKER}"])
            os._exit(0)
        time.sleep(0.5)
        print("detached")
        if {parent_waits}:
            time.sleep(60)
    """,
    )
    assert r.status == ("timeout" if parent_waits else "ok")


def test_network_is_unreachable(sandbox):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    try:
        r = attack(
            sandbox,
            f"""
            import socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=1).sendall(b"x")
                print("TCP CONNECTED")
            except OSError as e:
                print("tcp blocked", e)
            try:
                print("DNS RESOLVED", socket.getaddrinfo("pypi.org", 443))
            except OSError as e:
                print("dns blocked", e)
        """,
        )
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()
    assert "tcp blocked" in r.stdout and "dns blocked" in r.stdout, r.stdout


def test_host_files_are_invisible(sandbox, tmp_path):
    canary = tmp_path / "canary.txt"
    canary.write_text("host-canary-content")
    targets = [
        str(PROJECT / "pyproject.toml"),
        str(Path(__file__).resolve()),
        "/etc/shadow",
        "/etc/passwd",
        "/root/.bashrc",
        str(canary),
    ]
    r = attack(
        sandbox,
        f"""
        import os
        for path in {targets!r}:
            try:
                print("LEAK", path, open(path).read()[:20])
            except OSError as e:
                print("hidden", path, type(e).__name__)
        for d in ("/root", "/home", "/etc", {str(PROJECT)!r}, {str(tmp_path)!r}):
            try:
                print("LISTED", d, os.listdir(d))
            except OSError as e:
                print("hidden", d, type(e).__name__)
    """,
    )
    assert r.status == "ok" and "LEAK" not in r.stdout and "host-canary-content" not in r.stdout, r.stdout
    listed = " ".join(line for line in r.stdout.splitlines() if line.startswith("LISTED"))
    for name in ("pyproject.toml", ".bashrc", "shadow", "canary.txt", "test_attacks.py"):
        assert name not in listed, listed


def test_writes_outside_the_working_dir_do_not_reach_the_host(sandbox, tmp_path):
    name = f"pwned-{uuid.uuid4().hex}"
    targets = [
        f"/{name}",
        f"/usr/{name}",
        f"/etc/{name}",
        str(PROJECT / name),
        str(tmp_path / name),
        f"/root/{name}",
        f"/var/tmp/{name}",
        f"/proc/{name}",
    ]
    r = attack(
        sandbox,
        f"""
        import os
        for path in {targets!r}:
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                open(path, "w").write("x")
                print("wrote", path)
            except OSError as e:
                print("refused", path, type(e).__name__)
    """,
    )
    assert r.status == "ok"
    for path in targets:
        assert not os.path.exists(path), path


def test_parent_environment_secrets_are_invisible(sandbox, monkeypatch):
    secret = f"s3cret-{uuid.uuid4().hex}"
    monkeypatch.setenv("POSTTRAIN_TEST_SECRET", secret)
    # A fresh sandbox, started after the secret is set, so its environment would carry it if inherited.
    with Sandbox(LIMITS) as fresh:
        r = fresh.run(
            textwrap.dedent("""
            import os, glob
            print(dict(os.environ))
            for path in glob.glob("/proc/*/environ"):
                try:
                    print(path, open(path, "rb").read())
                except OSError as e:
                    print(path, type(e).__name__)
            os.system("env; cat /proc/1/environ")
        """)
        )
    assert r.status == "ok"
    assert secret not in r.stdout and secret not in r.stderr
    attack(sandbox, "pass")  # and the host is unchanged


def test_cannot_kill_the_parent(sandbox):
    canary = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        r = attack(
            sandbox,
            f"""
            import os, signal
            for pid in ({os.getpid()}, {canary.pid}, os.getppid(), 1):
                for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
                    try:
                        os.kill(pid, sig)
                        print("signalled", pid, sig)
                    except OSError as e:
                        print("refused", pid, type(e).__name__)
            try:
                os.kill(-1, signal.SIGKILL)  # everything this program may signal
            except OSError as e:
                print("refused -1", type(e).__name__)
        """,
        )
        assert canary.poll() is None, "a process outside the sandbox was killed"
    finally:
        canary.kill()
        canary.wait()
    assert r.status in ("ok", "killed"), r


def test_cannot_tamper_with_the_zygote(sandbox):
    r = attack(
        sandbox,
        """
        for path in ("/proc/1/mem", "/proc/1/environ", "/proc/1/fd/0", "/proc/1/fd/1"):
            try:
                open(path, "rb").read(1)
                print("OPENED", path)
            except OSError as e:
                print("refused", path, type(e).__name__)
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        print("ptrace", libc.ptrace(16, 1, 0, 0))  # PTRACE_ATTACH to the zygote
    """,
    )
    assert r.status == "ok" and "OPENED" not in r.stdout and "ptrace -1" in r.stdout, r.stdout


def test_huge_stdout_is_capped(sandbox):
    r = attack(sandbox, "import sys\nsys.stdout.write('x' * (100 << 20))\n")
    assert r.status == "output_limit" and len(r.stdout) <= LIMITS.output_bytes


def test_filling_the_disk(sandbox):
    r = attack(
        sandbox,
        """
        import os
        for d in (".", "/tmp", "/dev/shm", "/dev", "/"):
            written = 0
            try:
                for i in range(10_000):
                    with open(f"{d}/fill{i}", "wb") as f:
                        f.write(b"x" * (1 << 20))
                    written += 1
            except OSError as e:
                print(d, written, e.errno)
    """,
    )
    stopped = {line.split()[0]: (int(line.split()[1]), int(line.split()[2])) for line in r.stdout.splitlines()}
    assert r.status == "ok" and set(stopped) == {".", "/tmp", "/dev/shm", "/dev", "/"}, r
    for d in (".", "/tmp", "/dev/shm"):  # each a tmpfs capped at disk_mb: ENOSPC
        assert stopped[d][0] <= LIMITS.disk_mb and stopped[d][1] == 28, (d, stopped[d])
    assert stopped["/dev"] == (0, 30) and stopped["/"] == (0, 30)  # read-only: EROFS
    # `attack` checked that the writable dirs are empty again for the next program


def test_tampering_with_the_shared_dirs_does_not_reach_the_next_program(sandbox):
    r = attack(
        sandbox,
        """
        import os
        path = "/tmp"
        for i in range(300):  # deeper than Python's recursion limit
            path = os.path.join(path, "d")
            os.mkdir(path)
        os.chmod("/tmp/d", 0)
        os.makedirs("locked/inner")
        os.chmod("locked", 0)
        for d in ("/sandbox", "/tmp", "/dev/shm"):
            os.chmod(d, 0)
        print("tampered")
    """,
    )
    assert r.status == "ok" and r.stdout == "tampered\n", r  # `attack` then checks the next program


def test_many_open_files(sandbox):
    r = attack(
        sandbox,
        """
        files = []
        try:
            while True:
                files.append(open(f"f{len(files)}", "w"))
        except OSError as e:
            print(len(files), e.errno)
    """,
    )
    count, errno_ = r.stdout.split()
    assert r.status == "ok" and int(count) < LIMITS.open_files and int(errno_) == 24  # EMFILE


def test_os_system_subprocess_and_ctypes_stay_inside(sandbox, monkeypatch):
    r = attack(
        sandbox,
        f"""
        import ctypes, os, subprocess
        os.system("cat /etc/shadow; ls /root; cat {PROJECT}/pyproject.toml; id")
        print(subprocess.run(["sh", "-c", "ls {PROJECT}; ip addr 2>&1; ping -c1 127.0.0.1 2>&1"],
                             capture_output=True, text=True).stdout)
        libc = ctypes.CDLL(None, use_errno=True)
        print("unshare_user", libc.unshare(0x10000000))    # CLONE_NEWUSER
        print("unshare_ns", libc.unshare(0x00020000))      # CLONE_NEWNS
        print("mount", libc.mount(b"none", b"/usr", b"tmpfs", 0, None))
        print("setuid0", libc.setuid(0))
        print("chroot", libc.chroot(b"/tmp"))
        libc.system(b"echo from-libc-system; cat /etc/shadow")
    """,
    )
    out = r.stdout
    for call in ("unshare_user", "unshare_ns", "mount", "setuid0", "chroot"):
        assert f"{call} -1" in out, out
    assert "from-libc-system" in out and "[project]" not in out and "root:" not in out, out


def test_kernel_attack_surface_syscalls_are_refused(sandbox):
    from sandboxes.seccomp import DENIED_X86_64, deny_filter

    if deny_filter() is None:
        pytest.skip("the seccomp filter has a syscall table for x86-64 only")
    names = [
        "bpf",
        "perf_event_open",
        "io_uring_setup",
        "userfaultfd",
        "keyctl",
        "add_key",
        "ptrace",
        "process_vm_readv",
        "init_module",
        "kexec_load",
        "setns",
        "unshare",
        "fsopen",
        "open_by_handle_at",
        "mq_open",
    ]
    r = attack(
        sandbox,
        f"""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        for name, nr in {[(n, DENIED_X86_64[n]) for n in names]!r}:
            ctypes.set_errno(0)
            print(name, libc.syscall(nr, 0, 0, 0, 0, 0), ctypes.get_errno())
        print("getpid", libc.syscall(39), 0)
    """,
    )
    lines = dict((line.split()[0], line.split()[1:]) for line in r.stdout.splitlines())
    for name in names:
        assert lines[name] == ["-1", "1"], (name, lines[name])  # EPERM
    assert lines["getpid"][0] != "-1"


def test_segfault(sandbox):
    r = attack(sandbox, "import ctypes\nctypes.string_at(0)\n")
    assert r.status == "killed" and r.returncode == -signal.SIGSEGV


@pytest.mark.parametrize("how", ["python", "c"])
def test_deep_recursion(sandbox, how):
    r = attack(
        sandbox,
        f"""
        import sys
        sys.setrecursionlimit(10 ** 7)
        if "{how}" == "python":
            def f(n):
                return f(n + 1) + 1
            f(0)
        else:  # recursion on the C stack: repr of a deeply nested list
            x = []
            for _ in range(10 ** 6):
                x = [x]
            repr(x)
    """,
    )
    assert r.status in ("killed", "failed", "memory", "timeout"), r
