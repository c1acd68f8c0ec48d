# The in-sandbox server: `python -I -S -c <this file's text> MODE WORKDIR CONTROL_FD`, one per sandbox; MODE is
# "pid1" (inside bubblewrap, as PID 1 of the sandbox) or "group" (rlimits-only mode, on the host).
#
# Starting a fresh bubblewrap sandbox plus a Python interpreter costs tens of ms; forking this warm
# process costs about one. So a sandbox stays up and runs programs one at a time, each in a fresh fork
# (made ahead of its request, right after the previous reply) with its own rlimits, and afterwards
# everything the program left is destroyed before the next one starts:
# every process (as PID 1 of the sandbox's PID namespace, `kill(-1)` reaches them all, detached or not),
# every file in the writable dirs, every SysV IPC object. The zygote is non-dumpable, so a program running
# as the same uid can neither ptrace it nor open its /proc files; as PID 1 it cannot be killed from inside.
#
# A judged run adds a second process, the judge: forked after the request, fed its code by the host through
# a memfd passed over the control socket (so neither that code nor anything it holds ever passes through
# this process's memory, which every later program inherits), joined to the program by two pipes (fd 3
# reads from the other side, fd 4 writes to it), and the only writer of its stdout, the verdict. The run
# lasts as long as the judge. The program cannot reach the judge: another process of the same uid, but
# non-dumpable like this one (no ptrace, no /proc/<pid>/fd or mem), and the seccomp filter refuses ptrace
# and process_vm_* besides.
#
# A sandbox's preload (argv[4], trusted code such as a harness) runs here once, as the module
# `sandbox_preload`, so that every program and judge inherits it compiled and imported.
#
# Protocol on fds 0/1: requests and replies are 4-byte big-endian lengths followed by JSON.
# Standalone on purpose: imports only the standard library (the project is not visible in the sandbox).
import ctypes
import fcntl
import gc
import json
import os
import resource
import selectors
import signal
import socket
import struct
import sys
import time
import traceback
import types

# Imported once here so that each forked program gets them for free (HumanEval-style code imports these).
import collections, copy, functools, heapq, itertools, math, random, re, string, typing  # noqa: E401,F401

MEMORY_EXIT = 86  # the program raised MemoryError
READ = 65536


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
    view = memoryview(struct.pack(">I", len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def place(fds):
    """Make fds[i] the process's fd i, for every i (safe when the numbers overlap), and close all others."""
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in fds]
    for i, fd in enumerate(high):
        os.dup2(fd, i)
    os.closerange(len(fds), resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def apply_limits(req):
    mb = 1 << 20
    resource.setrlimit(resource.RLIMIT_CPU, (req["cpu_seconds"], req["cpu_seconds"] + 1))
    for res, value in ((resource.RLIMIT_AS, req["memory_mb"] * mb), (resource.RLIMIT_FSIZE, req["file_size_mb"] * mb),
                       (resource.RLIMIT_NPROC, req["processes"]), (resource.RLIMIT_NOFILE, req["open_files"]),
                       (resource.RLIMIT_CORE, 0)):
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
        import atexit

        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    os._exit(rc & 0xFF)


def child(req, path, workdir, fds, channel):
    """In the forked child: wire stdio (and, in a judged run, the channel to the judge as fds 3 and 4), apply
    rlimits, run the program."""
    os.setsid()
    place([*fds, *channel] if req.get("judged") else fds)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(workdir)
    apply_limits(req)
    if "random" in sys.modules:
        sys.modules["random"].seed()
    sys.argv = [path]
    with open(path, "w") as f:
        f.write(req["code"])
    execute(req["code"], path, {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__})


def read_fd(fd):
    chunks, offset = [], 0
    while True:
        chunk = os.pread(fd, READ, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def judge_child(req, code_fd, channel, verdict_w):
    """In the forked judge: code from the host's memfd (never written to a file the program could read),
    stdout the verdict pipe, stdin and stderr /dev/null, the channel to the program as fds 3 and 4."""
    os.setsid()
    code = read_fd(code_fd).decode()
    devnull = os.open(os.devnull, os.O_RDWR)
    place([devnull, verdict_w, devnull, *channel])
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir("/")
    apply_limits(req)
    sys.argv = ["<judge>"]
    execute(code, "<judge>", {"__name__": "__judge__", "__builtins__": __builtins__})


def spawn(workdir):
    """Fork the next program's process ahead of its request (it waits for it on a pipe), so that the fork
    overlaps the host's turn-around instead of adding to every run. Its channel to a judge is made now too;
    a run without one closes it."""
    req_r, req_w = os.pipe()
    stdin_r, stdin_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    calls_r, calls_w = os.pipe()  # judge -> program
    replies_r, replies_w = os.pipe()  # program -> judge
    pid = os.fork()
    if pid == 0:
        try:
            for fd in (req_w, stdin_w, out_r, err_r, calls_w, replies_r):
                os.close(fd)
            (n,) = struct.unpack(">I", read_exact(req_r, 4))
            req = json.loads(read_exact(req_r, n))
            child(req, os.path.join(workdir, "main.py"), workdir, (stdin_r, out_w, err_w), (calls_r, replies_w))
        finally:
            os._exit(70)
    for fd in (req_r, stdin_r, out_w, err_w, calls_r, replies_w):
        os.close(fd)
    return pid, req_w, stdin_w, out_r, err_r, (replies_r, calls_w)


def start_judge(req, control, channel):
    """Fork the judge of a judged run: (pid, verdict pipe), or None when the host sent no code for it."""
    try:
        _, fds, _, _ = socket.recv_fds(control, 16, 1)
    except OSError:
        fds = []
    if not fds:
        return None
    verdict_r, verdict_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            judge_child(req, fds[0], channel, verdict_w)
        finally:
            os._exit(70)
    for fd in (fds[0], verdict_w):
        os.close(fd)
    return pid, verdict_r


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


def run_one(req, raw, spare, mode, workdir, control):
    pid, req_w, stdin_w, out_r, err_r, channel = spare
    judge = start_judge(req, control, channel) if req.get("judged") else None
    for fd in channel:
        os.close(fd)
    if req.get("judged") and judge is None:
        os.close(req_w)  # the waiting child reads EOF and exits
        os.close(stdin_w)
        os.waitpid(pid, 0)
        for fd in (out_r, err_r):
            os.close(fd)
        return {"status": "sandbox_error", "returncode": None, "duration": 0.0, "stdout": "",
                "stderr": "a judged run without the judge's code", "verdict": None}
    t0 = time.monotonic()
    try:
        send_raw(req_w, raw)
    except OSError:
        pass  # the child died before its request: reported from its exit status below
    os.close(req_w)
    deadline = t0 + req["timeout"]
    cap = req["output_bytes"]
    bufs = {out_r: bytearray(), err_r: bytearray()}
    if judge is not None:
        bufs[judge[1]] = bytearray()
    pending = (req.get("stdin") or "").encode()
    sel = selectors.DefaultSelector()
    for fd in bufs:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    if pending:
        os.set_blocking(stdin_w, False)
        sel.register(stdin_w, selectors.EVENT_WRITE)
    else:
        os.close(stdin_w)
    main_pid = judge[0] if judge is not None else pid  # the run lasts as long as the judge, when it has one
    pidfd = os.pidfd_open(main_pid)
    sel.register(pidfd, selectors.EVENT_READ)
    status, exited = None, False
    while status is None and not exited:
        left = deadline - time.monotonic()
        if left <= 0:
            status = "timeout"
            break
        for key, _ in sel.select(left):
            fd = key.fd
            if fd == pidfd:
                exited = True
            elif fd == stdin_w:
                try:
                    pending = pending[os.write(fd, pending[:READ]):]
                except OSError:
                    pending = b""
                if not pending:
                    sel.unregister(fd)
                    os.close(fd)
            else:
                try:
                    chunk = os.read(fd, READ)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(fd)
                    continue
                bufs[fd] += chunk
                if len(bufs[fd]) > cap:
                    status = "output_limit"
    if exited and status is None:  # drain what was written before the exit
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
    pids = [pid] if judge is None else [judge[0], pid]
    for p in pids:
        if p != main_pid or not exited:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    wstatus = {p: os.waitpid(p, 0)[1] for p in pids}
    cleanup(mode, pids, workdir)
    sel.close()
    for fd in (*bufs, pidfd, stdin_w):
        try:
            os.close(fd)
        except OSError:
            pass
    rc = os.waitstatus_to_exitcode(wstatus[main_pid])
    return {"status": status or exit_status(rc), "returncode": rc, "duration": duration,
            "stdout": bytes(bufs[out_r][:cap]).decode(errors="replace"),
            "stderr": bytes(bufs[err_r][:cap]).decode(errors="replace"),
            "verdict": None if judge is None else bytes(bufs[judge[1]][:cap]).decode(errors="replace")}


def cleanup(mode, pids, workdir):
    """Destroy everything the run left: processes, files, IPC objects."""
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
                with open(f"/proc/sysvipc/{ipc}") as f:
                    ids = [int(line.split()[1]) for line in f.readlines()[1:]]
            except (OSError, ValueError, IndexError):
                ids = []
            for i in ids:
                getattr(LIBC, rmid)(i, 0, 0)  # IPC_RMID
        dirs = (workdir, "/tmp", "/dev/shm")
    else:  # rlimits-only: the process group is all we can reach
        for pid in pids:
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
    mode, workdir = sys.argv[1], sys.argv[2]
    control = socket.socket(fileno=int(sys.argv[3]))  # the judges' code arrives here, as memfds
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
    spare = spawn(workdir)
    send(1, {"ready": True})
    while True:
        try:
            (n,) = struct.unpack(">I", read_exact(0, 4))
            raw = read_exact(0, n)
        except EOFError:
            return
        reply = run_one(json.loads(raw), raw, spare, mode, workdir, control)
        send(1, reply)
        spare = spawn(workdir)


main()
