import json
import math
import os

import pytest

from rewards.plain_data import MAX_FRAME, NotPlainData, decode, encode, read_frame, write_frame

VALUES = [
    None,
    True,
    False,
    0,
    -7,
    10**30,
    1.5,
    -0.0,
    math.inf,
    "",
    "é\ud800",
    b"\x00\xff",
    [1, [2, (3,)]],
    (),
    (1, "a"),
    {1, "a", (2, 3)},
    frozenset({1}),
    {"a": [1], (1, 2): {3: None}},
    [[]],
    {True: 1.0},
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_plain_data_crosses_exactly(value):
    back = decode(json.loads(json.dumps(encode(value))))
    assert back == value and type(back) is type(value)
    if isinstance(value, (list, tuple)):
        assert [type(x) for x in back] == [type(x) for x in value]


def test_nan_crosses():
    assert math.isnan(decode(json.loads(json.dumps(encode(math.nan)))))


class S(str):
    def __eq__(self, other):
        return True

    __hash__ = str.__hash__


@pytest.mark.parametrize(
    "value",
    [
        S("x"),
        type("I", (int,), {})(3),
        type("L", (list,), {})(),
        object(),
        print,
        iter([1]),
        [1, S("x")],
        {"k": object()},
        bytearray(b"x"),
        1j,
    ],
)
def test_anything_else_is_refused(value):
    with pytest.raises(NotPlainData):
        encode(value)


def test_deep_nesting_is_refused():
    deep = []
    for _ in range(300):
        deep = [deep]
    with pytest.raises(NotPlainData):
        encode(deep)


@pytest.mark.parametrize(
    "wire",
    [
        {"a": 1},
        [],
        [1],
        ["str", "x"],
        ["dict", [1]],
        ["dict", [[[], 1]]],
        ["set", ["list"]],
        ["bytes", "zz"],
        ["bytes", 1],
        ["list", {"a": 1}],
    ],
    ids=repr,
)
def test_malformed_wire_is_refused(wire):
    with pytest.raises(NotPlainData):
        decode(wire)


def test_frames():
    r, w = os.pipe()
    try:
        write_frame(w, ["return", encode((1, "x"))])
        write_frame(w, ["return", encode([b"y"])])  # both at once: the second waits in the buffer
        buffer = bytearray()
        assert decode(read_frame(r, buffer)[1]) == (1, "x")
        assert decode(read_frame(r, buffer)[1]) == [b"y"] and buffer == b""
        os.write(w, (MAX_FRAME + 1).to_bytes(4, "big"))
        with pytest.raises(NotPlainData):
            read_frame(r, bytearray())
        os.write(w, (3).to_bytes(4, "big") + b"{x}")
        with pytest.raises(NotPlainData):
            read_frame(r, bytearray())
        os.close(w)
        w = None
        with pytest.raises(EOFError):
            read_frame(r, bytearray())
    finally:
        os.close(r)
        if w is not None:
            os.close(w)
