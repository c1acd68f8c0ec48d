# The code reward's judge (part of the harness preloaded into the sandboxes with plain_data.py; each judged
# run's judge calls `judge_check` or `judge_asserts`, in the judge server's sandbox): the dataset's tests,
# with the helpers its prompt defines, run against a stand-in for the candidate's function whose every call
# goes over the pipe to the candidate process (fd 4 out, fd 3 in) and comes back as fresh plain data or as
# an exception raised here. The judge counts, and reports on fd 5, which only it holds. Nothing of the tests
# is ever sent to the candidate.
#
# Verdict: JSON lines {"total": n}, then {"passed": i} / {"failed": i, "reason": ...} per test, then
# {"done": true}; or {"error": ...} when the row's own tests do not run (before the candidate is called).
# Only `Exception`s are caught: the judge server's timeout (a BaseException) ends the judge where it is.
import ast as _ast
import builtins as _builtins
import json as _json
import os as _os

if "encode" not in globals():  # imported on the host (tests, tools), not run as part of the preloaded harness
    from rewards.plain_data import NotPlainData, decode, encode, read_frame, write_frame

_FROM_CANDIDATE, _TO_CANDIDATE, _VERDICT = 3, 4, 5


class CandidateFailed(Exception):
    """A call that did not return plain data: the candidate raised a non-built-in exception, returned a
    value that is not plain data, sent something malformed, or is gone."""


def _exception(name, message):
    """The built-in exception the candidate raised, made afresh here; any other is CandidateFailed."""
    cls = getattr(_builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception) and cls.__name__ == name:
        try:
            return cls(message)
        except Exception:  # e.g. UnicodeDecodeError takes 5 arguments
            pass
    return CandidateFailed(f"{name}: {message}")


class Channel:
    """Calls to the candidate process; remembers why the last failed call failed."""

    def __init__(self):
        self.gone = None  # why the candidate can no longer answer
        self.failure = (None, None)  # (the exception raised for the last failed call, its reason)
        self._buffer = bytearray()  # this conversation's only: nothing of an earlier one is read

    def _raise(self, error, reason):
        self.failure = (error, reason)
        raise error

    def call(self, name, args, kwargs):
        if self.gone:
            self._raise(CandidateFailed(self.gone), self.gone)
        request = ["call", name, encode(args), encode(kwargs)]  # the tests' arguments: theirs to get right
        try:
            write_frame(_TO_CANDIDATE, request)
            reply = read_frame(_FROM_CANDIDATE, self._buffer)
        except (EOFError, OSError):
            self.gone = "the candidate process exited"
            self._raise(CandidateFailed(self.gone), self.gone)
        except NotPlainData as e:
            self.gone = f"malformed reply ({e})"
            self._raise(CandidateFailed(self.gone), self.gone)
        return self._result(reply)

    def _result(self, reply):
        if type(reply) is list and len(reply) == 2 and reply[0] == "return":
            try:
                return decode(reply[1])
            except NotPlainData as e:
                self._raise(CandidateFailed(str(e)), "non-data return value")
        if (
            type(reply) is list
            and len(reply) == 3
            and reply[0] == "raise"
            and type(reply[1]) is str
            and type(reply[2]) is str
        ):
            self._raise(_exception(reply[1], reply[2]), f"exception: {reply[1][:100]}")
        if type(reply) is list and len(reply) == 2 and reply[0] == "not_data" and type(reply[1]) is str:
            self._raise(CandidateFailed(reply[1]), f"non-data return value ({reply[1][:100]})")
        self.gone = "malformed reply"
        self._raise(CandidateFailed(self.gone), self.gone)

    def reason(self, error):
        if error is self.failure[0]:
            return self.failure[1]
        if isinstance(error, AssertionError):
            return "wrong value"
        return f"wrong value ({type(error).__name__} in the tests)"


class Candidate:
    """Stands for the candidate's function `name` in the tests."""

    def __init__(self, name, channel):
        self._name, self._channel = name, channel

    def __call__(self, *args, **kwargs):
        return self._channel.call(self._name, args, kwargs)

    def __repr__(self):
        return f"<candidate {self._name}>"


class Verdict:
    def __init__(self, channel):
        self._channel = channel

    def write(self, **fields):
        data = (_json.dumps(fields) + "\n").encode()
        while data:
            data = data[_os.write(_VERDICT, data) :]

    def passed(self, i):
        self.write(passed=i)

    def failed(self, i, error):
        self.write(failed=i, reason=self._channel.reason(error))


def _asserts(statement):
    return any(isinstance(node, _ast.Assert) for node in _ast.walk(statement))


def _counted(statements):
    """Each statement that asserts something, wrapped so that its outcome is reported and a failure does not
    stop the rest; the number of them."""
    out, n = [], 0
    for statement in statements:
        if not _asserts(statement):
            out.append(statement)
            continue
        report = _ast.parse(
            f"try:\n    pass\nexcept Exception as __error:\n    __verdict__.failed({n}, __error)\n"
            f"else:\n    __verdict__.passed({n})\n"
        ).body[0]
        report.body = [statement]
        out.append(report)
        n += 1
    return out, n


def _tests_do_not_run(verdict, error):
    verdict.write(error=f"the row's tests do not run ({type(error).__name__})")


def _proxies(used, namespace, channel):
    """A stand-in for every name the tests use (`used`) that neither the setup code nor the tests define:
    the candidate's functions."""
    for name in used:
        if name not in namespace and not hasattr(_builtins, name):
            namespace[name] = Candidate(name, channel)


def _compile_prompt(prompt):
    """The prompt's code; a stub that ends in a bare `def` line gets a body (the completion's, elsewhere)."""
    try:
        return compile(prompt, "<prompt>", "exec")
    except SyntaxError:
        return compile(prompt + "    pass\n", "<prompt>", "exec")


_COMPILED = {}  # a row's tests, compiled: RL and eval judge every prompt's tests once per sample
_COMPILED_MAX = 1024


def _cached(key, build):
    if key not in _COMPILED:
        if len(_COMPILED) >= _COMPILED_MAX:
            _COMPILED.clear()
        _COMPILED[key] = build()  # a row whose tests do not compile raises here, every time
    return _COMPILED[key]


def _check_program(prompt, test, fraction):
    """(the prompt's code, the test's code, how many statements count) for `judge_check`."""
    total = 0
    if fraction:
        tree = _ast.parse(test)
        for node in tree.body:
            if isinstance(node, _ast.FunctionDef) and node.name == "check":
                node.body, total = _counted(node.body)
        test = _ast.fix_missing_locations(tree)
    return _compile_prompt(prompt or ""), compile(test, "<test>", "exec"), total


def judge_check(prompt, test, entry_point, fraction):
    """HumanEval: the prompt's helpers, the test's `check(candidate)`; with `fraction`, every asserting
    statement of `check` is a test, else `check` is one."""
    channel = Channel()
    verdict = Verdict(channel)
    namespace = {"__name__": "__judge__", "__builtins__": _builtins, "__verdict__": verdict}
    try:
        prompt_code, test_code, total = _cached(
            ("check", prompt, test, fraction), lambda: _check_program(prompt, test, fraction)
        )
        exec(prompt_code, namespace)
        exec(test_code, namespace)
        check = namespace["check"]
    except Exception as e:
        return _tests_do_not_run(verdict, e)
    namespace[entry_point] = Candidate(entry_point, channel)  # also where the tests name it
    verdict.write(total=total or 1)
    try:
        check(Candidate(entry_point, channel))
    except Exception as e:
        verdict.failed(total, e)  # outside any counted statement: what was not reported did not pass
    else:
        if not total:
            verdict.passed(0)
    verdict.write(done=True)


def _asserts_program(setup, tests):
    """(the setup's code, (code, asserts?) per test statement, every name the tests use)."""
    tree = _ast.parse("\n".join(tests))
    statements = [
        (compile(_ast.Module(body=[statement], type_ignores=[]), "<tests>", "exec"), _asserts(statement))
        for statement in tree.body
    ]
    used = sorted({node.id for node in _ast.walk(tree) if isinstance(node, _ast.Name)})
    return compile(setup or "", "<setup>", "exec"), statements, used


def judge_asserts(setup, tests, fraction):
    """MBPP: `setup` code, then assert statements that call the candidate's functions by name; with
    `fraction`, every asserting statement is a test, else all of them together are one."""
    channel = Channel()
    verdict = Verdict(channel)
    namespace = {"__name__": "__judge__", "__builtins__": _builtins, "__verdict__": verdict}
    try:
        setup_code, statements, used = _cached(
            ("asserts", setup, tuple(tests)), lambda: _asserts_program(setup, tests)
        )
        exec(setup_code, namespace)
    except Exception as e:
        return _tests_do_not_run(verdict, e)
    _proxies(used, namespace, channel)
    total = sum(asserts for _, asserts in statements) if fraction else 0
    verdict.write(total=total or 1)
    i = 0
    for code, asserts in statements:
        counted = bool(total) and asserts
        try:
            exec(code, namespace)
        except Exception as e:
            if counted or not total:
                verdict.failed(i if counted else 0, e)
            if not total:
                break
        else:
            if counted:
                verdict.passed(i)
        i += counted
    else:
        if not total:
            verdict.passed(0)
    verdict.write(done=True)
