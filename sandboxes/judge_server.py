# The judge server: `python -I -S -c <this file's text> CONTROL_FD PRELOAD MEMORY_MB`, in a sandbox of its own
# (bubblewrap like the zygote's; no program ever runs in it). It runs judges, trusted code that decides about
# an untrusted program running in the zygote's sandbox, one at a time, in this one warm process: no fork per
# judge, and a separate PID namespace, so the program can neither see nor signal its judge; the two pipes
# between them are all they share.
#
# Request on fd 0: {"code": ..., "timeout": seconds}, with the judge's ends of its pipes to the program and
# the write end of the program's end pipe (SCM_RIGHTS on the control socket). The judge gets the pipes as
# fds 3 (reads) and 4 (writes); fd 5 is its verdict (a memfd read back when it is done); 0, 1 and 2 are
# /dev/null. A judge still running at the timeout is interrupted (SIGALRM raises JudgeTimeout, which no
# `except Exception` catches). Afterwards fds 3-5 and the end pipe are closed: the program's run is over.
# Reply on fd 1: {"status": "ok" | "timeout" | "failed" | "memory", "verdict": ..., "error": ..., "duration":
# ...}; after a MemoryError this process exits (the host starts another).
#
# Protocol: 4-byte big-endian lengths followed by JSON. Standalone: imports only the standard library.
import builtins
import ctypes
import fcntl
import json
import os
import resource
import signal
import socket
import struct
import sys
import time
import types

VERDICT_FD = 5
READ = 65536


class JudgeTimeout(BaseException):
    pass


def read_exact(fd, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def send(fd, obj):
    data = json.dumps(obj).encode()
    view = memoryview(struct.pack(">I", len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def high(fd):
    """`fd` moved to a number >= 10, out of the way of the judges' fds 0-5."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


def read_verdict(fd):
    chunks, offset = [], 0
    while True:
        chunk = os.pread(fd, READ, offset)
        if not chunk:
            return b"".join(chunks).decode(errors="replace")
        chunks.append(chunk)
        offset += len(chunk)


ARMED = [False]  # whether an alarm interrupts a judge (one may arrive just after the judge is done)


def on_alarm(signum, frame):
    if ARMED[0]:
        ARMED[0] = False
        raise JudgeTimeout


def judge(req, channel, devnull, verdict):
    """Run one judge with `channel` (its two pipe ends) as fds 3 and 4 and `verdict` (emptied) as fd 5:
    (status, error)."""
    os.ftruncate(verdict, 0)
    os.lseek(verdict, 0, os.SEEK_SET)
    for i, fd in enumerate([devnull, devnull, devnull, *channel, verdict]):
        os.dup2(fd, i)
    for fd in channel:
        os.close(fd)
    status, error = "ok", None
    try:
        ARMED[0] = True
        signal.setitimer(signal.ITIMER_REAL, max(req["timeout"], 0.001))
        exec(compile(req["code"], "<judge>", "exec"), {"__name__": "__judge__", "__builtins__": builtins})
        ARMED[0] = False
    except JudgeTimeout:
        status = "timeout"
    except MemoryError:
        status = "memory"
    except BaseException as e:  # noqa: BLE001 - the judge's own failure, reported
        status, error = "failed", f"{type(e).__name__}: {e}"[:500]
    finally:
        ARMED[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
    return status, error


def main():
    control = socket.socket(fileno=high(int(sys.argv[1])))
    requests, replies = high(os.dup(0)), high(os.dup(1))
    devnull = high(os.open(os.devnull, os.O_RDWR))
    verdict_file = high(os.memfd_create("verdict"))
    for i in (0, 1, 3, 4, 5):  # fds 0-5 stay taken, so what arrives for a judge never lands on them
        os.dup2(devnull, i)
    stderr = high(os.dup(2))  # this server's own errors; a judge's stderr is /dev/null
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0
    memory_mb = int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    preload = types.ModuleType("sandbox_preload")
    exec(compile(sys.argv[2], "<preload>", "exec"), preload.__dict__)
    sys.modules["sandbox_preload"] = preload
    signal.signal(signal.SIGALRM, on_alarm)
    os.chdir("/")
    send(replies, {"ready": True})
    while True:
        try:
            (n,) = struct.unpack(">I", read_exact(requests, 4))
            req = json.loads(read_exact(requests, n))
        except EOFError:
            return
        _, fds, _, _ = socket.recv_fds(control, 16, 3)
        t0 = time.monotonic()
        status, error = judge(req, fds[:2], devnull, verdict_file)
        duration = time.monotonic() - t0
        verdict = read_verdict(VERDICT_FD)
        for i in (0, 1, 3, 4, 5):  # the program sees its judge gone; no judge's fd outlives it
            os.dup2(devnull, i)
        os.dup2(stderr, 2)
        os.close(fds[2])  # the end of the program's run
        send(replies, {"status": status, "verdict": verdict, "error": error, "duration": duration})
        if status == "memory":
            return


main()
