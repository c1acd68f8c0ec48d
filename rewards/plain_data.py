# Plain data on a pipe between the code reward's two sandboxed processes: the candidate (untrusted: the
# completion's code) and the judge (trusted: the dataset's tests). Plain data is None, bool, int, float, str,
# bytes, and lists, tuples, dicts, sets and frozensets of plain data: exact types, no subclasses, so no value
# that crosses can carry code (an `__eq__` that is always true, a `__str__` with side effects, ...).
#
# A frame is a 4-byte big-endian length and that much JSON, in which a container is a list tagged by its
# first element (["list", ...], ["dict", [k, v], ...], ["bytes", "<hex>"]) and a scalar is itself.
# `decode` builds fresh built-ins from JSON (which yields only exact built-ins itself) and refuses anything
# else: that is the judge's defence, whatever the candidate's side of this file was made to do.
#
# Standalone on purpose (standard library only): with candidate_process.py and judge_process.py, its text
# is the harness preloaded into the sandbox (`sandboxes.Pool(preload=...)`); the host imports it for tests.
import json as _json
import os as _os
import struct as _struct

MAX_FRAME = 64 << 20
MAX_DEPTH = 200


class NotPlainData(TypeError):
    """A value that may not cross: not plain data, or a malformed frame."""


def encode(value, depth=0):
    kind = type(value)
    if value is None or kind is bool or kind is int or kind is float or kind is str:
        return value
    if depth >= MAX_DEPTH:
        raise NotPlainData("nested too deeply")
    if kind is bytes:
        return ["bytes", value.hex()]
    if kind is list or kind is tuple or kind is set or kind is frozenset:
        return [kind.__name__, *[encode(v, depth + 1) for v in value]]
    if kind is dict:
        return ["dict", *[[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]]
    raise NotPlainData(f"{kind.__module__}.{kind.__qualname__}")


_SEQUENCES = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}


def decode(wire, depth=0):
    kind = type(wire)
    if wire is None or kind is bool or kind is int or kind is float or kind is str:
        return wire
    if kind is not list or not wire or type(wire[0]) is not str or depth >= MAX_DEPTH:
        raise NotPlainData("malformed plain data")
    tag, items = wire[0], wire[1:]
    try:
        if tag in _SEQUENCES:
            return _SEQUENCES[tag](decode(v, depth + 1) for v in items)
        if tag == "dict" and all(type(p) is list and len(p) == 2 for p in items):
            return {decode(k, depth + 1): decode(v, depth + 1) for k, v in items}
        if tag == "bytes" and len(items) == 1 and type(items[0]) is str:
            return bytes.fromhex(items[0])
    except (TypeError, ValueError) as e:  # an unhashable key or set item, bad hex
        raise NotPlainData(f"malformed plain data ({type(e).__name__})") from None
    raise NotPlainData("malformed plain data")


_JSON = _json.JSONEncoder(separators=(",", ":"))  # made once: json.dumps(separators=...) makes one per call


def write_frame(fd, message):
    data = _JSON.encode(message).encode()
    view = memoryview(_struct.pack(">I", len(data)) + data)
    while view:
        view = view[_os.write(fd, view) :]


def read_frame(fd, buffer):
    """The next message (as JSON gives it), EOFError when the other side is gone, NotPlainData if malformed.
    `buffer` (a bytearray, one per fd and conversation) keeps what was read past the message."""
    while len(buffer) < 4:
        _fill(fd, buffer, 4)
    (n,) = _struct.unpack(">I", buffer[:4])
    if n > MAX_FRAME:
        raise NotPlainData(f"a {n}-byte frame (limit {MAX_FRAME})")
    while len(buffer) < 4 + n:
        _fill(fd, buffer, 4 + n)
    data = bytes(buffer[4 : 4 + n])
    del buffer[: 4 + n]
    try:
        return _json.loads(data)
    except (ValueError, RecursionError):
        raise NotPlainData("malformed frame") from None


def _fill(fd, buffer, need):
    chunk = _os.read(fd, max(need - len(buffer), 1 << 16))
    if not chunk:
        raise EOFError
    buffer += chunk
