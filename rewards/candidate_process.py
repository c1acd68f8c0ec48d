# The code reward's candidate process (part of the harness preloaded into the sandbox with plain_data.py): the
# completion's code, loaded once, then a loop that answers the judge's calls on fd 3 with plain data on fd 4.
#
# Nothing here is trusted: the completion controls this whole process and may rewrite any of it. It exists
# to give honest code a way to answer; the judge accepts only well-formed plain data, whatever comes.
import builtins as _builtins
import os as _os

if "encode" not in globals():  # imported on the host (tests, tools), not run as part of the preloaded harness
    from rewards.plain_data import NotPlainData, decode, encode, read_frame, write_frame

_CALLS, _REPLIES = 3, 4


def _message(error):
    try:
        return str(error)[:500]
    except BaseException:
        return ""


def _load(source, filename):
    namespace = {"__name__": "__candidate__", "__builtins__": _builtins}
    try:
        exec(compile(source, filename, "exec"), namespace)
    except BaseException as e:  # an error at import is the error of every call
        return namespace, e
    return namespace, None


def _answer(namespace, load_error, message):
    _, name, args, kwargs = message
    if load_error is not None:
        return ["raise", type(load_error).__name__, _message(load_error)]
    function = namespace.get(name)
    if not callable(function):
        return ["raise", "NameError", f"name '{name}' is not defined"]
    try:
        value = function(*decode(args), **decode(kwargs))
    except BaseException as e:
        return ["raise", type(e).__name__, _message(e)]
    try:
        return ["return", encode(value)]
    except (NotPlainData, RecursionError) as e:
        return ["not_data", _message(e)]


def serve(source, filename="candidate.py"):
    namespace, load_error = _load(source, filename)
    buffer = bytearray()
    while True:
        try:
            message = read_frame(_CALLS, buffer)
        except EOFError:
            break
        reply = _answer(namespace, load_error, message)
        try:
            write_frame(_REPLIES, reply)
        except ValueError as e:  # e.g. an int too long for JSON's text
            write_frame(_REPLIES, ["not_data", _message(e)])
    _os._exit(0)
