"""`run(code, stdin=None, limits=Limits()) -> Result`: one Python program in a bubblewrap sandbox.

The sandbox: every namespace unshared (no network, no view of host processes or IPC), /usr and the
interpreter bound read-only, the root and /dev read-only, fresh size-capped tmpfs for the working dir
(/sandbox), /tmp and /dev/shm, nothing else of the host (no home, no project, no /etc), an empty
environment, die-with-parent, no further user namespaces, no capabilities, a seccomp filter refusing the
kernel-attack-surface syscalls (`seccomp.py`), and as root the host uid `nobody` (the kernel exempts uid 0
from RLIMIT_NPROC even inside a user namespace). Inside, `zygote.py` runs each program in a fresh fork
under rlimits (CPU, address space, file size, processes, open files), with a wall-clock timeout and
capped stdout/stderr, and destroys whatever it left before the next one.

A judged run (`Sandbox.run(code, judge=...)`) runs a second, trusted program beside the untrusted one: the
judge, in a sandbox of its own (`judge_server.py`: same confinement, its own PID namespace, a warm process
that runs one judge after another), joined to the program by two pipes (fds 3 and 4 on both sides: read,
write) and nothing else. What the judge writes to its fd 5 comes back as `Result.verdict`: the program can
neither see nor signal its judge, read the judge's code or write its verdict.

`Sandbox` keeps one sandbox up for many programs (what `Pool` uses); `run` is a one-shot sandbox. A
sandbox's `preload` (trusted code, e.g. a harness that every program imports) runs once in the zygote and
in the judge server, as the module `sandbox_preload` that every program and judge finds already imported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import select
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

from sandboxes import seccomp

STATUSES = ("ok", "failed", "timeout", "memory", "output_limit", "killed", "sandbox_error")
ISOLATIONS = ("bwrap", "rlimits")
WORKDIR = "/sandbox"
SANDBOX_UID = 65534  # nobody
GRACE = 5.0  # seconds past a program's timeout before the host gives up on the zygote itself
INSTALL_HINT = (
    "Install bubblewrap: `sudo apt-get install bubblewrap` (Debian/Ubuntu), `sudo dnf install bubblewrap` "
    "(Fedora), or run `make setup`. In a container, user namespaces must be allowed (e.g. docker "
    "--security-opt seccomp=unconfined, or sysctl kernel.unprivileged_userns_clone=1). To run untrusted "
    "code without isolation anyway (unsafe), set the sandbox isolation to 'rlimits'."
)
# The zygote's wire formats (given to it at start), binary because every page the zygote touches while a
# fork shares it is copied: JSON there cost ~95 page faults and ~0.3 ms a run (measured). A request is
# REQUEST, then the code's and the stdin's UTF-8 bytes; a reply is REPLY, then stdout's and stderr's bytes.
# REQUEST: judged, timeout, cpu_seconds, memory_mb, file_size_mb, processes, open_files, output_bytes,
# len(code), len(stdin) or -1 for none. REPLY: status, exited, returncode, duration, len(stdout), len(stderr).
REQUEST = struct.Struct(">?d6QQq")
REPLY = struct.Struct(">16s?qdQQ")
_ZYGOTE = Path(__file__).with_name("zygote.py").read_text()
_JUDGE_SERVER = Path(__file__).with_name("judge_server.py").read_text()
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": WORKDIR, "PYTHONDONTWRITEBYTECODE": "1"}


def _readable(fd: int, timeout: float) -> bool:
    # poll, not select: select() fails outright on fd numbers >= 1024 (busy processes such as Ray workers).
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create namespaces here (the message says how to fix it)."""


@dataclasses.dataclass(frozen=True)
class Limits:
    timeout: float = 10.0  # wall-clock seconds per program, everything it started included
    cpu_seconds: int = 10  # RLIMIT_CPU per process
    memory_mb: int = 512  # RLIMIT_AS (address space) per process
    file_size_mb: int = 16  # RLIMIT_FSIZE: the largest file a program may write
    disk_mb: int = 64  # size of each tmpfs (/sandbox, /tmp, /dev/shm)
    # RLIMIT_NPROC, counted inside the sandbox's own user namespace. With no cgroup, the memory of a whole
    # sandbox is bounded only by processes * memory_mb, so keep that product modest.
    processes: int = 16
    open_files: int = 256  # RLIMIT_NOFILE
    output_bytes: int = 1 << 20  # cap on stdout and on stderr; past it the run ends as output_limit
    isolation: str = "bwrap"  # "bwrap", or "rlimits": no namespaces at all (unsafe; warns loudly)
    python: str | None = None  # interpreter in the sandbox; default: this one's if readable, else python3

    def __post_init__(self):
        if self.isolation not in ISOLATIONS:
            raise ValueError(f"sandbox isolation must be one of {ISOLATIONS}, got {self.isolation!r}")
        if (
            min(
                self.timeout,
                self.cpu_seconds,
                self.memory_mb,
                self.file_size_mb,
                self.disk_mb,
                self.processes,
                self.open_files,
                self.output_bytes,
            )
            <= 0
        ):
            raise ValueError(f"sandbox limits must be positive: {self}")


@dataclasses.dataclass
class Result:
    status: str  # one of STATUSES
    stdout: str
    stderr: str
    duration: float  # wall-clock seconds of the program
    returncode: int | None = None  # negative: killed by that signal (in a judged run: the judge's)
    # A judged run: status and verdict are the judge's (what it wrote to its fd 5); stdout, stderr and
    # returncode the program's, and how the program ended ("ended": still running when the judge was done)
    verdict: str | None = None
    program_status: str | None = None


def _world_readable(path: str) -> bool:
    """Whether an unprivileged user can reach and read `path` (every parent dir searchable by others)."""
    try:
        if not os.stat(path).st_mode & stat.S_IROTH:
            return False
        parent = os.path.dirname(path)
        while parent != "/":
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
            parent = os.path.dirname(parent)
    except OSError:
        return False
    return True


@functools.cache
def _interpreter(python: str | None) -> tuple[str, tuple[str, ...]]:
    """The interpreter to run in the sandbox and the host dirs to bind read-only for it.

    As root the sandbox runs as `nobody`, so the interpreter must be readable by others; this process's
    own may not be (pyenv under /root), and then the system python3 stands in: the programs under test
    use the standard library only.
    """
    if python:
        candidates = [os.path.realpath(python)]
    else:
        candidates = [
            os.path.realpath(os.path.join(sys.base_prefix, "bin", "python3")),
            os.path.realpath(sys.executable),
            "/usr/bin/python3",
            "/usr/local/bin/python3",
        ]
    usable = [c for c in candidates if os.path.isfile(c) and (os.geteuid() != 0 or _world_readable(c))]
    if not usable:
        raise SandboxUnavailable(
            f"no Python interpreter the sandbox user can read among {candidates} (as root, programs run as "
            f"uid {SANDBOX_UID}); install python3 under /usr or set the sandbox python to one others can read"
        )
    exe = os.path.realpath(usable[0])
    dirs = sorted({"/usr", os.path.dirname(os.path.dirname(exe))} - {"/", ""})
    return exe, tuple(d for d in dirs if not any(d.startswith(o + "/") for o in dirs))


def _as_nobody() -> dict:
    if os.geteuid() == 0:
        return {"user": SANDBOX_UID, "group": SANDBOX_UID, "extra_groups": []}
    return {}


def _bwrap_argv(binds: tuple[str, ...], disk_bytes: int) -> list[str]:
    argv = [
        shutil.which("bwrap") or "bwrap",
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--as-pid-1",
        "--cap-drop",
        "ALL",
        "--uid",
        str(SANDBOX_UID),
        "--gid",
        str(SANDBOX_UID),
        "--hostname",
        "sandbox",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
    ]
    for d in binds:
        argv += ["--ro-bind", d, d]
    for link in ("bin", "lib", "lib64", "sbin"):  # merged-/usr layouts
        if os.path.islink(f"/{link}"):
            argv += ["--symlink", os.readlink(f"/{link}"), f"/{link}"]
        elif os.path.isdir(f"/{link}"):
            argv += ["--ro-bind", f"/{link}", f"/{link}"]
    # Every writable place is a size-capped tmpfs: bwrap's own /dev is an uncapped tmpfs (half the RAM),
    # so /dev/shm gets its own and /dev is made read-only (device nodes still work).
    for d in ("/tmp", WORKDIR, "/dev/shm"):
        argv += ["--size", str(disk_bytes), "--perms", "1777", "--tmpfs", d]
    return argv + ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", WORKDIR]


@functools.cache
def _warn_unisolated() -> None:
    msg = (
        "SANDBOX ISOLATION IS OFF (isolation='rlimits'): untrusted code runs with only rlimits and "
        "timeouts, with a full view of this machine's files, network and processes. Install bubblewrap."
    )
    warnings.warn(msg, RuntimeWarning, stacklevel=4)
    print(f"WARNING: {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _on_cpu(cpu: int | None):
    """The calling thread (only it: Linux affinity is per thread) on `cpu` for the block, then as before."""
    if cpu is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


class _Server:
    """One sandboxed server process (the zygote, or the judge server) with its control socket and stderr."""

    def __init__(self, limits: Limits, script: str, args, cpu: int | None = None):
        self.limits, self.script, self.args = limits, script, args  # args(mode, workdir, control fd)
        self.cpu = cpu  # the one CPU the server and everything it forks run on, or None: any
        self.proc: subprocess.Popen | None = None
        self.control: socket.socket | None = None  # the host's end
        self._stderr = None
        self._hostdir: str | None = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        limits = self.limits
        python, binds = _interpreter(limits.python)
        self.control, control = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pass_fds: tuple[int, ...] = (control.fileno(),)
        if limits.isolation == "bwrap":
            if shutil.which("bwrap") is None:
                raise SandboxUnavailable(f"bubblewrap (bwrap) is not installed. {INSTALL_HINT}")
            argv = _bwrap_argv(binds, limits.disk_mb << 20)
            program = seccomp.deny_filter()
            if program is not None:  # a few hundred bytes: fits the pipe buffer, so no writer thread
                filter_r, filter_w = os.pipe()
                os.write(filter_w, program)
                os.close(filter_w)
                argv += ["--seccomp", str(filter_r)]
                pass_fds += (filter_r,)
            argv += ["--", python, "-I", "-S", "-c", self.script, *self.args("pid1", WORKDIR, control.fileno())]
            cwd, env = None, _ENV
        else:
            _warn_unisolated()
            self._hostdir = tempfile.mkdtemp(prefix="sandbox-")
            if os.geteuid() == 0:
                os.chown(self._hostdir, SANDBOX_UID, SANDBOX_UID)
            argv = [python, "-I", "-S", "-c", self.script, *self.args("group", self._hostdir, control.fileno())]
            cwd, env = self._hostdir, dict(_ENV, HOME=self._hostdir, TMPDIR=self._hostdir)
        self._stderr = tempfile.TemporaryFile()
        try:
            with _on_cpu(self.cpu):  # inherited from the forking thread, before the server forks anything
                self.proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=self._stderr,
                    cwd=cwd,
                    env=env,
                    start_new_session=True,
                    pass_fds=pass_fds,
                    **_as_nobody(),
                )
        except OSError as e:
            self.close()
            raise SandboxUnavailable(f"cannot start the sandbox ({argv[0]}): {e}. {INSTALL_HINT}") from None
        finally:
            for fd in pass_fds[1:]:
                os.close(fd)
            control.close()
        reply = self.receive(time.monotonic() + 30)
        if not (isinstance(reply, dict) and reply.get("ready")):
            err = self.stderr_tail()
            self.close()
            if limits.isolation == "bwrap":
                raise SandboxUnavailable(f"bubblewrap cannot create a sandbox here: {err}. {INSTALL_HINT}")
            raise SandboxUnavailable(f"the sandbox interpreter {python} did not start: {err}")

    def stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read()[-2000:].decode(errors="replace").strip()

    def send(self, obj, fds: list[int] = ()) -> None:
        """A JSON request (fds first, over the control socket). Raises OSError if the server is gone."""
        self.send_raw(json.dumps(obj).encode(), fds)

    def send_raw(self, data: bytes, fds: list[int] = ()) -> None:
        if fds:
            socket.send_fds(self.control, [b"f"], list(fds))
        self.proc.stdin.write(struct.pack(">I", len(data)) + data)
        self.proc.stdin.flush()

    def receive(self, deadline: float):
        """One JSON reply, or None if the server died or missed the deadline."""
        data = self.receive_raw(deadline)
        return None if data is None else json.loads(data)

    def receive_raw(self, deadline: float) -> bytes | None:
        fd = self.proc.stdout.fileno()
        buf = bytearray()
        need = 4
        while len(buf) < need:
            if not _readable(fd, max(deadline - time.monotonic(), 0)):
                return None
            chunk = os.read(fd, max(need - len(buf), 1 << 16))
            if not chunk:
                return None
            buf += chunk
            if need == 4 and len(buf) >= 4:
                need = 4 + struct.unpack(">I", buf[:4])[0]
        return bytes(buf[4:need])

    def receive_fds(self, n: int, deadline: float) -> list[int] | None:
        """The next `n` fds the server sent over the control socket, or None."""
        if not _readable(self.control.fileno(), max(deadline - time.monotonic(), 0)):
            return None
        try:
            _, fds, _, _ = socket.recv_fds(self.control, 16, n)
        except OSError:
            return None
        if len(fds) != n:
            for fd in fds:
                os.close(fd)
            return None
        return fds

    def close(self) -> None:
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.proc is not None:
            # bwrap runs the server as PID 1 of its sandbox; killing it makes the kernel kill everything
            # in that PID namespace, and waiting for bwrap waits for that teardown.
            for f in (self.proc.stdin, self.proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass
            try:
                os.killpg(self.proc.pid, 9)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if self._hostdir:
            shutil.rmtree(self._hostdir, ignore_errors=True)
            self._hostdir = None


def _release(fds: list[int], *which: int) -> None:
    """Close fds[i] for each i in `which` that is still open here, once (fd numbers are reused at once)."""
    for i in which:
        if fds[i] >= 0:
            os.close(fds[i])
            fds[i] = -1


class Sandbox:
    """One sandbox kept up for many programs, run one at a time (and, for judged runs, a second sandbox for
    their judges, started with the first one). Restarts itself after a failure."""

    def __init__(self, limits: Limits = Limits(), preload: str = "", cpu: int | None = None):
        self.limits = limits
        self.preload = preload
        # With a `cpu`, both servers (and so every program and judge) run on it: a judge and its program
        # talk once or more per test, and on this VM a pipe round trip between processes on two CPUs took
        # 255 us against 4 us on one (an idle CPU's wake-up is a hypervisor exit).
        self.cpu = cpu
        self._zygote = _Server(
            limits,
            _ZYGOTE,
            lambda mode, workdir, fd: [mode, workdir, str(fd), preload, REQUEST.format, REPLY.format],
            cpu,
        )
        self._judges = _Server(
            limits, _JUDGE_SERVER, lambda mode, workdir, fd: [str(fd), preload, str(limits.memory_mb)], cpu
        )
        self._lock = threading.Lock()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def _proc(self) -> subprocess.Popen | None:  # the program sandbox's bwrap (what tests inspect)
        return self._zygote.proc

    def _start(self) -> None:
        self._zygote.start()

    def _request(self, code: str, stdin: str | None, judged: bool) -> bytes:
        limits = self.limits
        code_bytes = code.encode("utf-8", "surrogatepass")
        stdin_bytes = b"" if stdin is None else stdin.encode("utf-8", "surrogatepass")
        header = REQUEST.pack(
            judged,
            limits.timeout,
            limits.cpu_seconds,
            limits.memory_mb,
            limits.file_size_mb,
            limits.processes,
            limits.open_files,
            limits.output_bytes,
            len(code_bytes),
            -1 if stdin is None else len(stdin_bytes),
        )
        return header + code_bytes + stdin_bytes

    def _reply(self, deadline: float) -> dict | None:
        """The zygote's reply to a run, or None if it died or missed the deadline."""
        data = self._zygote.receive_raw(deadline)
        if data is None or len(data) < REPLY.size:
            return None
        status, exited, returncode, duration, n_out, n_err = REPLY.unpack_from(data)
        out = data[REPLY.size : REPLY.size + n_out]
        err = data[REPLY.size + n_out : REPLY.size + n_out + n_err]
        return {
            "status": status.rstrip(b"\0").decode(),
            "returncode": returncode if exited else None,
            "duration": duration,
            "stdout": out.decode(errors="replace"),
            "stderr": err.decode(errors="replace"),
        }

    def _failed(self, t0: float) -> Result:
        """The zygote died or hung: discard this sandbox, start afresh next time."""
        err = self._zygote.stderr_tail()
        self._zygote.close()
        return Result("sandbox_error", "", f"sandbox failed: {err}", time.monotonic() - t0)

    def run(self, code: str, stdin: str | None = None, judge: str | None = None) -> Result:
        """Run one program (with `judge` beside it, if given); never raises for anything the programs do."""
        with self._lock:
            if not self._zygote.alive:
                self._zygote.close()
                self._zygote.start()
            t0 = time.monotonic()
            channel = self._zygote.receive_fds(3, t0 + GRACE)  # this program's ends to a judge, its end pipe
            if channel is None:
                return self._failed(t0)
            try:
                if judge is None:
                    _release(channel, 0, 1, 2)
                    return self._run(code, stdin, t0)
                return self._run_judged(code, stdin, judge, channel, t0)
            finally:
                _release(channel, 0, 1, 2)

    def _run(self, code: str, stdin: str | None, t0: float) -> Result:
        try:
            self._zygote.send_raw(self._request(code, stdin, False))
            reply = self._reply(t0 + self.limits.timeout + GRACE)
        except (OSError, ValueError):
            reply = None
        if reply is None:
            return self._failed(t0)
        return Result(reply["status"], reply["stdout"], reply["stderr"], reply["duration"], reply["returncode"])

    def _run_judged(self, code: str, stdin: str | None, judge: str, channel: list[int], t0: float) -> Result:
        limits = self.limits
        if not self._judges.alive:
            self._judges.close()
            self._judges.start()
        try:
            self._judges.send({"code": judge, "timeout": limits.timeout}, channel)
        except OSError:
            err = self._judges.stderr_tail()
            self._judges.close()
            return Result("sandbox_error", "", f"the judge sandbox failed: {err}", 0.0)
        _release(channel, 0, 1, 2)  # only the judge server holds them now: it closes the end pipe when done
        try:
            self._zygote.send_raw(self._request(code, stdin, True))
        except (OSError, ValueError):
            return self._failed(t0)
        verdict = self._judges.receive(t0 + limits.timeout + GRACE)
        if verdict is None:  # a judge stuck past its own alarm, or its sandbox gone: the run failed
            self._judges.close()  # (which also closes the end pipe)
        reply = self._reply(t0 + limits.timeout + GRACE)
        if verdict is None:
            verdict = {"status": "timeout" if time.monotonic() - t0 > limits.timeout else "killed", "verdict": ""}
        if reply is None:
            return self._failed(t0)
        return Result(
            verdict["status"],
            reply["stdout"],
            reply["stderr"],
            reply["duration"],
            reply["returncode"],
            verdict["verdict"],
            reply["status"],
        )

    def close(self) -> None:
        self._zygote.close()
        self._judges.close()


def check(limits: Limits = Limits()) -> None:
    """Raise SandboxUnavailable (saying how to install bubblewrap) if `limits` cannot be honoured here."""
    with Sandbox(limits) as sandbox:
        sandbox._start()


def run(code: str, *, stdin: str | None = None, judge: str | None = None, limits: Limits = Limits()) -> Result:
    """Run `code` (a Python program; beside `judge`, if given) in a fresh sandbox. Raises only
    SandboxUnavailable."""
    with Sandbox(limits) as sandbox:
        return sandbox.run(code, stdin, judge)
