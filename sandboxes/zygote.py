# The in-sandbox server: `python -I -S -c <this file's text> MODE WORKDIR CONTROL_FD PRELOAD REQUEST REPLY`,
# one per sandbox; MODE is "pid1" (inside bubblewrap, as PID 1 of the sandbox) or "group" (rlimits-only mode,
# on the host).
#
# Starting a fresh bubblewrap sandbox plus a Python interpreter costs tens of ms; forking this warm
# process costs about one. So a sandbox stays up and runs programs one at a time, each in a fresh fork
# (made ahead of its request, right after the previous reply) with its own rlimits, and afterwards
# everything the program left is destroyed before the next one starts:
# every process (as PID 1 of the sandbox's PID namespace, `kill(-1)` reaches them all, detached or not),
# every file in the writable dirs, every SysV IPC object. The zygote is non-dumpable, so a program running
# as the same uid can neither ptrace it nor open its /proc files; as PID 1 it cannot be killed from inside.
#
# Judged runs: every pre-forked program also gets two pipes as fds 3 (reads) and 4 (writes), whose other
# ends, with the write end of an "end" pipe, go to the host over the control socket as soon as the fork is
# made, and from there to a judge in another sandbox (`judge_server.py`); this process never holds them
# again. A run without a judge closes them; a judged run lasts until the host closes the end pipe (the
# judge is done) or the timeout.
#
# A sandbox's preload (PRELOAD, trusted code such as a harness) runs here once, as the module
# `sandbox_preload`, so that every program inherits it compiled and imported.
#
# Protocol on fds 0/1: 4-byte big-endian lengths, each followed by a request (the struct format REQUEST,
# then the code's and the stdin's bytes) or a reply (REPLY, then stdout's and stderr's bytes); the formats
# are the host's (`sandbox.py`), given as arguments. Only the first message, {"ready": true}, is JSON.
# Standalone on purpose: imports only the standard library (the project is not visible in the sandbox).
# Imported once here so that each forked program gets them for free (HumanEval-style code imports these).
import atexit
import collections  # noqa: E401,F401
import ctypes
import fcntl
import gc
import json
import os
import resource
import select
import signal
import socket
import struct
import sys
import time
import traceback
import types

MEMORY_EXIT = 86  # the program raised MemoryError
READ = 65536
REQUEST = REPLY = None  # the host's wire formats (struct.Struct), set by main() from its arguments


def read_exact(fd, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def send(fd, obj):
    send_raw(fd, json.dumps(obj).encode())


def send_raw(fd, data):
    write_all(fd, struct.pack(">I", len(data)) + data)


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_file(path):
    """A small file's text, without open()'s io stack (see the poll loop in run_one for why)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, READ):
            chunks.append(chunk)
        return b"".join(chunks).decode()
    finally:
        os.close(fd)


def place(fds):
    """Make fds[i] the process's fd i, for every i (safe when the numbers overlap), and close all others."""
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in fds]
    for i, fd in enumerate(high):
        os.dup2(fd, i)
    os.closerange(len(fds), resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def apply_limits(cpu_seconds, memory_mb, file_size_mb, processes, open_files):
    mb = 1 << 20
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    for res, value in (
        (resource.RLIMIT_AS, memory_mb * mb),
        (resource.RLIMIT_FSIZE, file_size_mb * mb),
        (resource.RLIMIT_NPROC, processes),
        (resource.RLIMIT_NOFILE, open_files),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(res, (value, value))


def execute(code, filename, namespace):
    """Run `code` like `python main.py` would, exit code included; never returns."""
    rc = 0
    try:
        exec(compile(code, filename, "exec"), namespace)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            rc = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            rc = 1
    except MemoryError:
        traceback.print_exc()
        rc = MEMORY_EXIT
    except BaseException:
        traceback.print_exc()
        rc = 1
    try:
        if "threading" in sys.modules:
            sys.modules["threading"]._shutdown()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    os._exit(rc & 0xFF)


def child(request, path, workdir, fds, channel):
    """In the forked child: wire stdio (and, in a judged run, the channel to the judge as fds 3 and 4), apply
    rlimits, run the program. `request`: the run's request as the host sent it."""
    judged, _, *limits, _, size, _ = REQUEST.unpack_from(request)
    code = request[REQUEST.size : REQUEST.size + size]
    os.setsid()
    place([*fds, *channel] if judged else fds)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(workdir)
    apply_limits(*limits)
    if "random" in sys.modules:
        sys.modules["random"].seed()
    sys.argv = [path]
    out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)  # not open(): a text file's io stack
    write_all(out, code)
    os.close(out)
    source = code.decode("utf-8", "surrogatepass")
    execute(source, path, {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__})


def spawn(workdir, control):
    """Fork the next program's process ahead of its request (it waits for it on a pipe), so that the fork
    overlaps the host's turn-around instead of adding to every run. The judge's ends of its channel, and the
    end pipe's write end, go to the host now."""
    req_r, req_w = os.pipe()
    stdin_r, stdin_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    calls_r, calls_w = os.pipe()  # judge -> program
    replies_r, replies_w = os.pipe()  # program -> judge
    end_r, end_w = os.pipe()  # the host closes it when the judge is done
    pid = os.fork()
    if pid == 0:
        try:
            for fd in (req_w, stdin_w, out_r, err_r, calls_w, replies_r, end_r, end_w):
                os.close(fd)
            (n,) = struct.unpack(">I", read_exact(req_r, 4))
            request = read_exact(req_r, n)
            child(
                request, os.path.join(workdir, "main.py"), workdir, (stdin_r, out_w, err_w), (calls_r, replies_w)
            )
        finally:
            os._exit(70)
    socket.send_fds(control, [b"c"], [replies_r, calls_w, end_w])
    for fd in (req_r, stdin_r, out_w, err_w, calls_r, replies_w, replies_r, calls_w, end_w):
        os.close(fd)
    return pid, req_w, stdin_w, out_r, err_r, end_r


def exit_status(rc):
    if rc == 0:
        return "ok"
    if rc == MEMORY_EXIT:
        return "memory"
    if rc == -signal.SIGXCPU:
        return "timeout"
    if rc < 0:
        return "killed"
    return "failed"


def run_one(request, spare, mode, workdir):
    """One program's run: `request` as the host sent it (REQUEST, the code, the stdin); the reply's bytes."""
    pid, req_w, stdin_w, out_r, err_r, end_r = spare
    judged, timeout, *_, cap, code_size, stdin_size = REQUEST.unpack_from(request)
    t0 = time.monotonic()
    try:
        send_raw(req_w, request)
    except OSError:
        pass  # the child died before its request: reported from its exit status below
    os.close(req_w)
    deadline = t0 + timeout
    bufs = {out_r: bytearray(), err_r: bytearray()}
    start = REQUEST.size + code_size
    pending = request[start : start + max(stdin_size, 0)]
    # poll rather than selectors: every page this process touches while a fork shares it is copied, so
    # the loop that watches each run stays small.
    poller = select.poll()
    for fd in bufs:
        os.set_blocking(fd, False)
        poller.register(fd, select.POLLIN)
    if pending:
        os.set_blocking(stdin_w, False)
        poller.register(stdin_w, select.POLLOUT)
    else:
        os.close(stdin_w)
    pidfd = os.pidfd_open(pid)
    poller.register(pidfd, select.POLLIN)
    if judged:  # the run lasts as long as the judge, whether the program has exited or not
        poller.register(end_r, select.POLLIN)
    status, exited, ended = None, False, False
    while status is None and not ended and not (exited and not judged):
        left = deadline - time.monotonic()
        if left <= 0:
            status = "timeout"
            break
        for fd, _ in poller.poll(left * 1000 + 1):
            if fd == pidfd:
                exited = True
                poller.unregister(fd)
            elif fd == end_r:
                ended = True
            elif fd == stdin_w:
                try:
                    pending = pending[os.write(fd, pending[:READ]) :]
                except OSError:
                    pending = b""
                if not pending:
                    poller.unregister(fd)
                    os.close(fd)
            else:
                try:
                    chunk = os.read(fd, READ)
                except BlockingIOError:
                    continue
                if not chunk:
                    poller.unregister(fd)
                    continue
                bufs[fd] += chunk
                if len(bufs[fd]) > cap:
                    status = "output_limit"
    if (exited or ended) and status is None:  # drain what was written
        for fd, buf in bufs.items():
            while len(buf) <= cap:
                try:
                    chunk = os.read(fd, READ)
                except (BlockingIOError, OSError):
                    break
                if not chunk:
                    break
                buf += chunk
            if len(buf) > cap:
                status = "output_limit"
    duration = time.monotonic() - t0
    if not exited:
        os.kill(pid, signal.SIGKILL)
    _, wstatus = os.waitpid(pid, 0)
    cleanup(mode, pid, workdir)
    for fd in (*bufs, pidfd, stdin_w, end_r):
        try:
            os.close(fd)
        except OSError:
            pass
    rc = os.waitstatus_to_exitcode(wstatus)
    if status is None and ended and not exited:
        status = "ended"  # by the host, the judge being done: not the program's doing
    out, err = bytes(bufs[out_r][:cap]), bytes(bufs[err_r][:cap])
    status = (status or exit_status(rc)).encode()
    return REPLY.pack(status, exited, rc if exited else 0, duration, len(out), len(err)) + out + err


def cleanup(mode, pid, workdir):
    """Destroy everything the program left: processes, files, IPC objects."""
    if mode == "pid1":
        while True:  # repeat: a fork bomb may fork between kill() and wait()
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(-1, 0)
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            except ChildProcessError:
                break
        for ipc, rmid in (("shm", "shmctl"), ("msg", "msgctl"), ("sem", "semctl")):
            try:
                ids = [int(line.split()[1]) for line in read_file(f"/proc/sysvipc/{ipc}").splitlines()[1:]]
            except (OSError, ValueError, IndexError):
                ids = []
            for i in ids:
                getattr(LIBC, rmid)(i, 0, 0)  # IPC_RMID
        dirs = (workdir, "/tmp", "/dev/shm")
    else:  # rlimits-only: the process group is all we can reach
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        dirs = (workdir,)
    for d in dirs:
        wipe(d)


def wipe(top):
    """Empty `top` and restore its mode, whatever modes the program set on it or on anything inside
    (a chmod 0 left behind would break the next program). Iterative: trees may be deeper than recursion."""
    stack = [(top, False)]
    while stack:
        path, emptied = stack.pop()
        if emptied:
            if path != top:
                try:
                    os.rmdir(path)
                except OSError:
                    pass
            continue
        try:
            os.chmod(path, 0o1777 if path == top else 0o700)
            entries = list(os.scandir(path))
        except OSError:
            continue
        stack.append((path, True))
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    stack.append((e.path, False))
                else:
                    os.unlink(e.path)
            except OSError:
                pass


LIBC = ctypes.CDLL(None, use_errno=True)


def main():
    global REQUEST, REPLY
    mode, workdir = sys.argv[1], sys.argv[2]
    REQUEST, REPLY = struct.Struct(sys.argv[5]), struct.Struct(sys.argv[6])
    control = socket.socket(fileno=int(sys.argv[3]))  # to the host: each program's channel to a judge
    preload = types.ModuleType("sandbox_preload")
    exec(compile(sys.argv[4], "<preload>", "exec"), preload.__dict__)
    sys.modules["sandbox_preload"] = preload
    LIBC.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: no ptrace or /proc/<pid>/mem from the programs
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The first compile() in a process pays one-time set-up (~1 ms here); pay it once, before any fork.
    warm = "from typing import List\ndef f(xs: List[int]) -> int:\n    return sum(xs)\nassert f([1]) == 1\n"
    exec(compile(warm, "<warm-up>", "exec"), {"__name__": "__warmup__"})
    # Out of the collector's reach, the zygote's objects stay shared with its forks instead of being copied
    # page by page when a fork's first collections walk them.
    gc.freeze()
    spare = spawn(workdir, control)
    send(1, {"ready": True})
    while True:
        try:
            (n,) = struct.unpack(">I", read_exact(0, 4))
            raw = read_exact(0, n)
        except EOFError:
            return
        send_raw(1, run_one(raw, spare, mode, workdir))
        spare = spawn(workdir, control)


main()
