"""The embedded engine's child process: rego-cpp (regopy) behind a pipe.

rego-cpp can abort or segfault the whole process on some inputs and policies (uncaught C++
exceptions, e.g. reading a binding of an undefined result or compiling `with input as {...}`),
so it never runs inside the worker: the worker talks to this process over stdin/stdout with
length-prefixed JSON frames (bot.policy.wire) and restarts it when it dies.

Requests (each answered by one frame echoing its "id"):
  {"op": "load", "modules": {file: source}, "data": {...}, "entrypoints": ["pkg/rule", ...]}
  {"op": "eval", "entrypoint": "pkg/rule", "input": {...}}
  {"op": "test", "modules": {...}, "data": {...}, "entrypoints": [...]}   (no input set)
  {"op": "ping"}   (answers its pid and how many evaluations it has run)
Answers: {"ok": true, ...} or {"ok": false, "error": {"kind": "load"|"eval"|"input"|"protocol"|"internal",
"message": ..., "file"?, "line"?, "column"?}}. "input": rego-cpp would not take the input; nothing
was evaluated.

Only the standard library and regopy are imported here, so the process starts fast.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from typing import Any

from regopy import Interpreter, NodeKind, RegoError
from regopy import rego_shared
from regopy.rego_shared import (
    rego_bundle_query_entrypoint,
    rego_free_output,
    rego_node_get,
    rego_node_size,
    rego_node_type,
    rego_node_value,
    rego_output_node,
    rego_output_ok,
    rego_output_string,
    rego_set_input,
)

from bot.policy import wire

# One error of a RegoError text: "(error 19:policies/x.rego|49|2" then "(errormsg 24:<message>".
_ERROR = re.compile(r"\(error (?:(\d+):)?")
_ERRORMSG = re.compile(r"\(errormsg (\d+):")


class LoadFailure(Exception):
    def __init__(self, message: str, file: str | None = None, line: int | None = None, column: int | None = None):
        super().__init__(message)
        self.error = {"kind": "load", "message": message, "file": file, "line": line, "column": column}


def _counted(text: str, match: re.Match[str]) -> str:
    """rego-cpp writes strings as <length>:<chars>; read exactly <length> characters."""
    start = match.end()
    return text[start : start + int(match.group(1))]


def _located(text: str, modules: dict[str, str]) -> LoadFailure:
    """Turn a RegoError's S-expression text into file/line/column and message."""
    errors = []
    for match in _ERROR.finditer(text):
        file = line = column = None
        if match.group(1):
            file = _counted(text, match)
            rest = text[match.end() + len(file) :]
            span = re.match(r"\|(\d+)\|(\d+)", rest)
            if file in modules and span:
                line, column = _line_column(modules[file], int(span.group(1)))
        msg = _ERRORMSG.search(text, match.end())
        errors.append((file, line, column, _counted(text, msg) if msg else "syntax error"))
    if not errors:
        return LoadFailure(text.strip() or "policy failed to compile")
    file, line, column, message = next((e for e in errors if e[0] in modules), errors[0])
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return LoadFailure(message, file if file in modules else None, line, column)


def _line_column(source: str, offset: int) -> tuple[int, int]:
    """rego-cpp reports byte offsets into the source."""
    raw = source.encode()
    line_start = raw.rfind(b"\n", 0, offset) + 1
    return raw.count(b"\n", 0, offset) + 1, len(raw[line_start:offset].decode(errors="replace")) + 1


def _node_messages(impl: Any) -> list[str]:
    """Collect ErrorMessage texts from an error node tree (bundle or output)."""
    messages: list[str] = []
    stack = [impl]
    while stack:
        node = stack.pop()
        kind = rego_node_type(node)
        if kind == NodeKind.ErrorMessage:
            messages.append(rego_node_value(node))
            continue
        if kind in (NodeKind.ErrorSeq, NodeKind.Error):
            size = rego_node_size(node)
            stack.extend(rego_node_get(node, i) for i in reversed(range(size)))
    return messages


def _new_interpreter(modules: dict[str, str], data: dict[str, Any]) -> Interpreter:
    rego = Interpreter()
    for name, source in modules.items():
        try:
            rego.add_module(name, source)
        except RegoError as exc:
            raise _located(str(exc), modules) from None
    try:
        rego.add_data_json(json.dumps(data))
    except RegoError as exc:
        raise LoadFailure(f"policy data rejected: {exc}") from None
    return rego


def compile_bundle(modules: dict[str, str], data: dict[str, Any], entrypoints: list[str]) -> tuple[Interpreter, Any]:
    rego = _new_interpreter(modules, data)
    try:
        bundle = rego.build(None, entrypoints)
    except RegoError as exc:
        raise _located(str(exc), modules) from None
    if not bundle.ok():
        # Querying a failed bundle segfaults; report it, naming the file that fails alone.
        messages = _node_messages(bundle.node()._impl) or ["policy failed to compile"]
        raise LoadFailure("; ".join(messages), _failing_module(modules, data))
    return rego, bundle


def _failing_module(modules: dict[str, str], data: dict[str, Any]) -> str | None:
    """Compile each module alone: compile errors without a location still get a file name."""
    for name, source in modules.items():
        try:
            rego = _new_interpreter({name: source}, data)
            if not rego.build("x := 1").ok():
                return name
        except (RegoError, LoadFailure):
            return name
    return None


# rego-cpp's C API, called directly: regopy's Input() wraps every value in a Python function and a
# string buffer, about half of what setting the input costs (measured: 170 vs 80 us per decision).
_lib = rego_shared.rego
_INT64 = (-(2**63), 2**63 - 1)
# rego-cpp keeps a string as the text between its quotes, as a policy's source spells it, and the
# C API takes C strings: a NUL ended the string early ("staging\x00production" was decided as
# "staging") and a quote, backslash or control character was kept unescaped (never equal to the
# policy's own spelling, and breaking the JSON of an answer that echoes it). Inputs holding any of
# these, or an integer beyond 64 bits, are handed over as JSON text instead, which rego-cpp keeps
# escaped as JSON (and policies) write them: slower, and rare.
_NEEDS_JSON = re.compile(r'[\x00-\x1f"\\]')


class _NeedsJson(Exception):
    """This input is set through its JSON text (see _NEEDS_JSON)."""


def _encoded(text: str) -> bytes:
    if _NEEDS_JSON.search(text):
        raise _NeedsJson
    return text.encode()


def _add(handle: int, value: Any) -> None:
    kind = type(value)
    if kind is str:
        code = _lib.regoInputString(handle, _encoded(value))
    elif kind is dict:
        for key, item in value.items():
            if type(key) is not str or _lib.regoInputString(handle, _encoded(key)):
                raise _NeedsJson
            _add(handle, item)
            if _lib.regoInputObjectItem(handle):
                raise _NeedsJson
        code = _lib.regoInputObject(handle, len(value))
    elif kind is list:
        for item in value:
            _add(handle, item)
        code = _lib.regoInputArray(handle, len(value))
    elif kind is bool:
        code = _lib.regoInputBoolean(handle, value)
    elif kind is int:
        if not _INT64[0] <= value <= _INT64[1]:
            raise _NeedsJson
        code = _lib.regoInputInt(handle, value)
    elif kind is float:
        code = _lib.regoInputFloat(handle, value)
    elif value is None:
        code = _lib.regoInputNull(handle)
    else:  # subclasses of str, int... from an in-process caller; anything else fails in json.dumps
        raise _NeedsJson
    if code:
        raise _NeedsJson


def set_input(rego: Interpreter, value: Any) -> None:
    """rego.set_input(value), faster, and faithful for every JSON value (see _NEEDS_JSON)."""
    handle = _lib.regoNewInput()
    try:
        _add(handle, value)
    except _NeedsJson:
        _lib.regoFreeInput(handle)
        rego.set_input_term(json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False))
        return
    try:
        rego_set_input(rego._impl, handle)
    finally:
        _lib.regoFreeInput(handle)


def evaluate(rego: Interpreter, bundle: Any, entrypoint: str) -> dict[str, Any]:
    impl = rego_bundle_query_entrypoint(rego._impl, bundle._impl, entrypoint)
    try:
        if not rego_output_ok(impl):
            messages = _node_messages(rego_output_node(impl)) or ["evaluation failed"]
            return {"ok": False, "error": {"kind": "eval", "message": "; ".join(messages)}}
        text = rego_output_string(impl)
    finally:
        rego_free_output(impl)
    if text == "undefined":
        return {"ok": True, "defined": False}
    try:
        output = json.loads(text)
        if isinstance(output, list):  # several results: a complete rule has one value
            output = output[0]
        expressions = output.get("expressions") or []
    except (ValueError, AttributeError, IndexError):
        # rego-cpp can splice an error term into otherwise fine output.
        return {"ok": False, "error": {"kind": "eval", "message": f"engine produced unreadable output: {text[:200]}"}}
    if not expressions:
        return {"ok": True, "defined": False}
    return {"ok": True, "defined": True, "value": expressions[0]}


class Child:
    def __init__(self) -> None:
        self.rego: Interpreter | None = None
        self.bundle: Any = None
        self.evaluations = 0

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "eval":
            if self.rego is None:
                return {"ok": False, "error": {"kind": "eval", "message": "no policy loaded"}}
            self.evaluations += 1
            try:
                set_input(self.rego, request.get("input"))
            except (RegoError, ValueError) as exc:
                message = f"the policy engine cannot take this input: {str(exc).strip()[:300]}"
                return {"ok": False, "error": {"kind": "input", "message": message}}
            return evaluate(self.rego, self.bundle, request["entrypoint"])
        if op == "load":
            self.rego = self.bundle = None
            try:
                self.rego, self.bundle = compile_bundle(request["modules"], request["data"], request["entrypoints"])
            except LoadFailure as exc:
                return {"ok": False, "error": exc.error}
            return {"ok": True}
        if op == "test":
            return self.run_tests(request)
        if op == "ping":
            return {"ok": True, "pid": os.getpid(), "evaluations": self.evaluations}
        return {"ok": False, "error": {"kind": "protocol", "message": f"unknown op {op!r}"}}

    def run_tests(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            rego, bundle = compile_bundle(request["modules"], request["data"], request["entrypoints"])
        except LoadFailure as exc:
            return {"ok": False, "error": exc.error}
        results = []
        for entrypoint in request["entrypoints"]:
            result = evaluate(rego, bundle, entrypoint)
            if not result["ok"]:
                results.append({"entrypoint": entrypoint, "passed": False, "error": result["error"]["message"]})
            elif not result["defined"]:
                results.append({"entrypoint": entrypoint, "passed": False, "error": "undefined"})
            else:
                value = result["value"]
                error = None if value is True else f"evaluated to {json.dumps(value)[:200]}"
                results.append({"entrypoint": entrypoint, "passed": value is True, "error": error})
        return {"ok": True, "results": results}


def main() -> None:
    # Ctrl-C in a terminal signals the whole foreground group; the parent decides when this
    # child stops (it closes the pipe), so the child must not die of the parent's SIGINT.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # rego-cpp prints compile errors to stdout: keep the protocol on a private copy of the
    # pipe and send fd 1 to /dev/null. stderr stays for crash messages the parent logs.
    out = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    child = Child()
    for request in requests(0):
        try:
            answer = child.handle(request)
        except Exception as exc:  # a Python-level failure: answer it, keep serving
            traceback.print_exc(file=sys.stderr)
            answer = {"ok": False, "error": {"kind": "internal", "message": f"{type(exc).__name__}: {exc}"}}
        answer["id"] = request.get("id")
        frame = wire.encode(answer)
        view = memoryview(frame)
        while view:
            view = view[os.write(out, view) :]


# After its last answer, how long the child polls for the next question before it sleeps, while
# questions come back to back (the gap before the latest was shorter than this): a sleeping
# process is woken from an idle CPU, which costs more than the poll (see bot.eventloop).
SPIN = wire.CHILD_SPIN


def requests(fd: int) -> Iterator[dict[str, Any]]:
    """The frames read from `fd`, each yielded once the one before it is answered; ends at a clean
    end of input, or with a message on stderr at a broken one."""
    buffer = bytearray()
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    back_to_back = True
    answered = False  # since the last read
    while True:
        try:
            request = wire.take_frame(buffer)
        except wire.FrameError as exc:
            print(f"policy child: {exc}", file=sys.stderr, flush=True)
            return
        if request is not None:
            yield request
            answered = True
            continue
        idle_since = time.monotonic() if answered and not buffer else None
        answered = False
        if idle_since is not None and back_to_back:
            while not poller.poll(0) and time.monotonic() - idle_since < SPIN:
                os.sched_yield()  # on a CPU it shares with its parent, the parent goes first
        data = os.read(fd, 1 << 16)
        if idle_since is not None:
            back_to_back = time.monotonic() - idle_since < SPIN
        if not data:
            if buffer:
                print("policy child: stream ended inside a frame", file=sys.stderr, flush=True)
            return
        buffer += data


if __name__ == "__main__":
    main()
