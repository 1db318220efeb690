"""Forged, garbled, oversized and replayed requests at POST /slack/events of the running front
door (raw HTTP/1.1 bytes, so header forms no client library would send get through), on the real
Temporal dev server with a worker and the fake Slack Web API.

A request that fails verification must leave no trace: no run, no vote, no audit event, no Slack
Web API call, no response_url answer, and never a 5xx. The fuzz is seeded: a failure names the
case index and seed, and re-running gives the same cases.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import hmac
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest

from bot.audit.events import EventKind
from bot.slack.app import MAX_BODY, MAX_SKEW
from bot.slack.blocks import APPROVE_ACTION
from bot.slack.commands import slack_run_id
from tests.slack.support import (
    waiting_gated_run,
    BOB, CHANNEL, SECRET, Stack, eventually, finished, principal, sign, step_state, text_of,
)

SEED = 20250611
FAST_CASES, CHAOS_CASES = 300, 5000
CONCURRENCY = 25
FORM_TYPE = b"application/x-www-form-urlencoded"
TS, SIG, CT = b"X-Slack-Request-Timestamp", b"X-Slack-Signature", b"Content-Type"

# ---- raw HTTP/1.1 ----------------------------------------------------------------------------


@dataclass
class Raw:
    """One request as bytes on the wire; `expect` is the status the bot must answer."""

    what: str
    body: bytes
    headers: list[tuple[bytes, bytes]]
    expect: int = 401
    chunked: bool = False
    expect_continue: bool = False  # send the body only after `100 Continue` (an oversized declared length)


async def send_raw(url: str, raw: Raw, timeout: float = 20.0) -> int:
    """The response status of one request on its own connection."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        head = [b"POST /slack/events HTTP/1.1", f"Host: {parts.netloc}".encode(), b"Connection: close"]
        head += [name + b": " + value for name, value in raw.headers]
        if raw.chunked:
            head.append(b"Transfer-Encoding: chunked")
            step = 64 * 1024
            payload = b"".join(b"%x\r\n%s\r\n" % (len(raw.body[i:i + step]), raw.body[i:i + step])
                               for i in range(0, len(raw.body), step)) + b"0\r\n\r\n"
        else:
            head.append(b"Content-Length: %d" % len(raw.body))
            payload = raw.body
        if raw.expect_continue:
            head.append(b"Expect: 100-continue")
        writer.write(b"\r\n".join(head) + b"\r\n\r\n")
        if raw.expect_continue:
            status = await asyncio.wait_for(_status(reader), timeout)
            if status != 100:
                return status
        writer.write(payload)
        return await asyncio.wait_for(_status(reader), timeout)
    finally:
        writer.close()


async def _status(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1])


def hmac_hex(message: bytes, secret: str = SECRET, digest: Any = hashlib.sha256) -> str:
    return hmac.new(secret.encode(), message, digest).hexdigest()


def signed_headers(body: bytes, ts: int | None = None, content_type: bytes = FORM_TYPE) -> list[tuple[bytes, bytes]]:
    """Correct v0 headers over the exact bytes."""
    stamp = str(int(time.time()) if ts is None else ts).encode()
    return [(CT, content_type), (TS, stamp), (SIG, b"v0=" + hmac_hex(b"v0:" + stamp + b":" + body).encode())]


# ---- the fuzz --------------------------------------------------------------------------------


@dataclass
class Base:
    """A correctly signed request the fuzz mutates (re-signed per batch, so no case is merely stale)."""

    name: str
    body: bytes
    ts: bytes = b""
    sig: bytes = b""
    others: list[bytes] = field(default_factory=list)  # other correct signatures, for cut and paste

    def resign(self) -> None:
        headers = dict(signed_headers(self.body))
        self.ts, self.sig = headers[TS], headers[SIG]


class Fuzzer:
    """Seeded mutations of correctly signed requests; every one must be refused (401, or 413)."""

    def __init__(self, rng: random.Random, bases: list[Base]) -> None:
        self.rng = rng
        self.bases = bases
        self.counts: Counter[str] = Counter()
        self.mutations: list[Callable[[Base], Raw]] = [
            self.flip_bit, self.insert_byte, self.delete_byte, self.replace_byte, self.truncate, self.append,
            self.smuggle_param, self.reencode, self.odd_encoding, self.empty_body,
            self.sig_hex, self.sig_case, self.sig_length, self.sig_prefix, self.sig_wrong_secret,
            self.sig_wrong_scheme, self.sig_cut_and_paste,
            self.ts_shift, self.ts_outside_window, self.ts_text,
            self.header_missing, self.header_renamed, self.header_duplicated, self.header_non_ascii,
            self.header_empty, self.oversized, self.at_limit,
        ]

    def case(self) -> Raw:
        base = self.rng.choice(self.bases)
        mutation = self.rng.choice(self.mutations)
        self.counts[mutation.__name__] += 1
        raw = mutation(base)
        raw.what = f"{base.name}: {raw.what}"
        return self.decorate(raw)

    # header forms that change nothing by themselves: name case, order, a harmless extra header
    def decorate(self, raw: Raw) -> Raw:
        style = self.rng.choice(["as is", "lower", "upper", "mixed"])
        if style != "as is":
            def cased(name: bytes) -> bytes:
                if style == "lower":
                    return name.lower()
                if style == "upper":
                    return name.upper()
                return bytes(c ^ 0x20 if chr(c).isalpha() and self.rng.random() < 0.5 else c for c in name)

            raw.headers = [(cased(n), v) for n, v in raw.headers]
            raw.what += f" [names {style}]"
        if self.rng.random() < 0.3:
            self.rng.shuffle(raw.headers)
            raw.what += " [shuffled]"
        if self.rng.random() < 0.2:
            raw.headers.append((b"X-Slack-Retry-Num", b"1"))
            raw.what += " [retry header]"
        return raw

    def _raw(self, what: str, base: Base, body: bytes | None = None, ts: bytes | None = None,
             sig: bytes | None = None, content_type: bytes = FORM_TYPE, **kw: Any) -> Raw:
        headers = [(CT, content_type), (TS, base.ts if ts is None else ts), (SIG, base.sig if sig is None else sig)]
        return Raw(what, base.body if body is None else body, headers, **kw)

    def _pos(self, data: bytes, end: int = 0) -> int:
        return self.rng.randrange(len(data) + end)

    # -- body (the signature stays the original one)
    def flip_bit(self, base: Base) -> Raw:
        body = bytearray(base.body)
        i, bit = self._pos(body), 1 << self.rng.randrange(8)
        body[i] ^= bit
        return self._raw(f"body bit {bit:#x} flipped at {i}", base, bytes(body))

    def insert_byte(self, base: Base) -> Raw:
        i, byte = self._pos(base.body, 1), self.rng.randrange(256)
        return self._raw(f"body byte {byte:#x} inserted at {i}", base, base.body[:i] + bytes([byte]) + base.body[i:])

    def delete_byte(self, base: Base) -> Raw:
        i = self._pos(base.body)
        return self._raw(f"body byte deleted at {i}", base, base.body[:i] + base.body[i + 1:])

    def replace_byte(self, base: Base) -> Raw:
        i = self._pos(base.body)
        byte = self.rng.choice([b for b in range(256) if b != base.body[i]])
        return self._raw(f"body byte at {i} replaced by {byte:#x}", base, base.body[:i] + bytes([byte]) + base.body[i + 1:])

    def truncate(self, base: Base) -> Raw:
        i = self._pos(base.body)
        return self._raw(f"body truncated to {i} bytes", base, base.body[:i])

    def append(self, base: Base) -> Raw:
        tail = self.rng.choice([b"&", b"%", b"\x00", b"\r\n", b" ", self.rng.randbytes(self.rng.randint(1, 16))])
        return self._raw(f"body with {tail!r} appended", base, base.body + tail)

    def smuggle_param(self, base: Base) -> Raw:
        extra = self.rng.choice([
            b"&user_id=U0BOB", b"&text=run+gated", b"&command=%2Fplaybook", b"&trigger_id=1.2.3",
            b"&payload=%7B%7D", b"&ssl_check=1", b"&user_id=",
        ])
        body = extra.lstrip(b"&") + b"&" + base.body if self.rng.random() < 0.5 else base.body + extra
        return self._raw(f"param {extra!r} smuggled in", base, body)

    def reencode(self, base: Base) -> Raw:
        """The same form data, other bytes: what a re-encoding proxy would do."""
        variants = [
            ("'+' as '%20'", base.body.replace(b"+", b"%20")),
            ("escapes lower-cased", _lower_escapes(base.body)),
            ("params reordered", b"&".join(reversed(base.body.split(b"&")))),
            ("':' escaped", base.body.replace(b"%3A", b":")),
        ]
        what, body = self.rng.choice([(w, b) for w, b in variants if b != base.body] or [("byte appended", base.body + b"&")])
        return self._raw(f"body re-encoded ({what})", base, body)

    def odd_encoding(self, base: Base) -> Raw:
        text = base.body.decode()
        what, body, extra = self.rng.choice([
            ("utf-16", text.encode("utf-16"), []),
            ("utf-16-le", text.encode("utf-16-le"), []),
            ("utf-32", text.encode("utf-32"), []),
            ("utf-8 BOM", b"\xef\xbb\xbf" + base.body, []),
            ("gzip", gzip.compress(base.body), [(b"Content-Encoding", b"gzip")]),
            ("base64", base64.b64encode(base.body), [(b"Content-Transfer-Encoding", b"base64")]),
            ("latin-1 e-acute", base.body + "&x=caf\u00e9".encode("latin-1"), []),
            ("overlong utf-8 '/'", base.body + b"&x=\xc0\xaf", []),
            ("lone surrogate", base.body + b"&x=\xed\xa0\x80", []),
        ])
        raw = self._raw(f"body as {what}", base, body)
        raw.headers += extra
        return raw

    def empty_body(self, base: Base) -> Raw:
        return self._raw("empty body", base, b"")

    # -- signature (the body stays the original one)
    def sig_hex(self, base: Base) -> Raw:
        sig = bytearray(base.sig)
        i = self.rng.randrange(3, len(sig))
        sig[i] = self.rng.choice([c for c in b"0123456789abcdef" if c != sig[i]])
        return self._raw(f"signature hex digit {i} changed", base, sig=bytes(sig))

    def sig_case(self, base: Base) -> Raw:
        upper = base.sig[:3] + base.sig[3:].upper()
        if upper == base.sig:  # all digits: vanishingly rare, flip one instead
            return self.sig_hex(base)
        return self._raw("signature hex upper-cased", base, sig=upper)

    def sig_length(self, base: Base) -> Raw:
        cut = self.rng.randrange(0, len(base.sig))
        return self.rng.choice([
            self._raw(f"signature cut to {cut} chars", base, sig=base.sig[:cut]),
            self._raw("signature with a hex digit more", base, sig=base.sig + b"0"),
            self._raw("signature twice", base, sig=base.sig + base.sig[3:]),
        ])

    def sig_prefix(self, base: Base) -> Raw:
        digest = base.sig[3:]
        prefix = self.rng.choice([b"v1=", b"V0=", b"v0:", b"v0 =", b"", b"v0=v0=", b"sha256=", b"v0==", b"v00="])
        return self._raw(f"signature prefix {prefix!r}", base, sig=prefix + digest)

    def sig_wrong_secret(self, base: Base) -> Raw:
        secret = self.rng.choice(["", SECRET[:-1], SECRET + "x", SECRET.upper(), "not-the-secret"])
        sig = b"v0=" + hmac_hex(b"v0:" + base.ts + b":" + base.body, secret).encode()
        return self._raw(f"signed with secret {secret!r}", base, sig=sig)

    def sig_wrong_scheme(self, base: Base) -> Raw:
        """The right secret over the wrong base string or digest: the scheme is exact."""
        what, message, digest = self.rng.choice([
            ("no colon after ts", b"v0:" + base.ts + base.body, hashlib.sha256),
            ("no version", base.ts + b":" + base.body, hashlib.sha256),
            ("v1 base string", b"v1:" + base.ts + b":" + base.body, hashlib.sha256),
            ("body only", base.body, hashlib.sha256),
            ("ts only", b"v0:" + base.ts + b":", hashlib.sha256),
            ("sha1", b"v0:" + base.ts + b":" + base.body, hashlib.sha1),
            ("sha512", b"v0:" + base.ts + b":" + base.body, hashlib.sha512),
            ("plain sha256, no hmac", None, None),
        ])
        if message is None:
            hexdigest = hashlib.sha256(SECRET.encode() + b"v0:" + base.ts + b":" + base.body).hexdigest()
        else:
            hexdigest = hmac_hex(message, digest=digest)
        return self._raw(f"signed wrongly ({what})", base, sig=b"v0=" + hexdigest.encode())

    def sig_cut_and_paste(self, base: Base) -> Raw:
        """A correct signature of another request (same timestamp) on this body."""
        other = self.rng.choice([b for b in self.bases if b is not base])
        return self._raw(f"signature of {other.name}", base, sig=other.sig)

    # -- timestamp
    def ts_shift(self, base: Base) -> Raw:
        delta = self.rng.choice([-1, 1]) * self.rng.randint(1, MAX_SKEW - 5)
        return self._raw(f"timestamp {delta:+d}s, signature kept", base, ts=str(int(base.ts) + delta).encode())

    def ts_outside_window(self, base: Base) -> Raw:
        """Correctly signed, but older or newer than the five-minute window."""
        delta = self.rng.choice([-1, 1]) * self.rng.choice([MAX_SKEW + 2, MAX_SKEW + 60, 3600, 86400 * 365])
        headers = dict(signed_headers(base.body, ts=int(time.time()) + delta))
        return self._raw(f"correctly signed {delta:+d}s away", base, ts=headers[TS], sig=headers[SIG])

    def ts_text(self, base: Base) -> Raw:
        ts = base.ts.decode()
        what, value = self.rng.choice([
            ("leading zero", ("0" + ts).encode()),
            ("decimal", (ts + ".0").encode()),
            ("plus sign", ("+" + ts).encode()),
            ("minus sign", ("-" + ts).encode()),
            ("space inside", (ts[:4] + " " + ts[4:]).encode()),
            ("hex", hex(int(ts)).encode()),
            ("exponent", f"{int(ts):.6e}".encode()),
            ("arabic-indic digits", "".join(chr(0x660 + int(c)) for c in ts).encode()),
            ("fullwidth digits", "".join(chr(0xFF10 + int(c)) for c in ts).encode()),
            ("milliseconds", (ts + "000").encode()),
            ("forty nines", b"9" * 40),
            ("word", b"yesterday"),
        ])
        return self._raw(f"timestamp {what}", base, ts=value)

    # -- header forms
    def header_missing(self, base: Base) -> Raw:
        raw = self._raw("", base)
        gone = self.rng.choice([[TS], [SIG], [TS, SIG]])
        raw.headers = [(n, v) for n, v in raw.headers if n not in gone]
        raw.what = "missing " + " and ".join(n.decode() for n in gone)
        return raw

    def header_renamed(self, base: Base) -> Raw:
        raw = self._raw("", base)
        which = self.rng.choice([TS, SIG])
        name = self.rng.choice([which + b"s", which[:-1], which.replace(b"-", b"_"), b"X-" + which, which + b"-V0"])
        raw.headers = [(name if n == which else n, v) for n, v in raw.headers]
        raw.what = f"{which.decode()} sent as {name.decode()}"
        return raw

    def header_duplicated(self, base: Base) -> Raw:
        """The header twice, one copy broken (two identical correct copies would be a valid request)."""
        which = self.rng.choice([TS, SIG])
        good = base.ts if which == TS else base.sig
        bad = self.rng.choice([b"", b"0", good[:-1], good + b"0", b"v0=" + b"0" * 64])
        first, second = (good, bad) if self.rng.random() < 0.5 else (bad, good)
        raw = self._raw("", base)
        raw.headers = [h for h in raw.headers if h[0] != which] + [(which, first), (which, second)]
        raw.what = f"{which.decode()} twice: {first[:12]!r}..., {second[:12]!r}..."
        return raw

    def header_non_ascii(self, base: Base) -> Raw:
        which = self.rng.choice([TS, SIG])
        value = base.ts if which == TS else base.sig
        junk = self.rng.choice(["\u00e9".encode("latin-1"), "\u00e9".encode(), b"\x80", b"\xff\xfe", "\u0661".encode()])
        i = self.rng.randrange(len(value) + 1)
        mutated = value[:i] + junk + value[i:]
        if self.rng.random() < 0.3:
            mutated = b" " + mutated + b"\t"  # optional whitespace around a broken value
        raw = self._raw(f"{which.decode()} with {junk!r} at {i}", base, **{("ts" if which == TS else "sig"): mutated})
        return raw

    def header_empty(self, base: Base) -> Raw:
        which = self.rng.choice([TS, SIG])
        return self._raw(f"{which.decode()} empty", base, **{("ts" if which == TS else "sig"): b""})

    # -- size
    def oversized(self, base: Base) -> Raw:
        """Too big: 413 whatever the signature (the size is checked before anything is read)."""
        size = self.rng.choice([MAX_BODY + 1, MAX_BODY + self.rng.randint(2, 4096), 4 * MAX_BODY, 64 * MAX_BODY])
        body = base.body + b"&pad=" + b"x" * (size - len(base.body) - 5)
        good = self.rng.random() < 0.5
        headers = signed_headers(body) if good else self._raw("", base).headers
        if size > MAX_BODY + 4096:  # declared: answered from the header alone, the body never sent
            return Raw(f"{size} bytes declared, {'signed' if good else 'unsigned'}", body, headers,
                       expect=413, expect_continue=True)
        return Raw(f"{size} bytes chunked, {'signed' if good else 'unsigned'}", body, headers, expect=413, chunked=True)

    def at_limit(self, base: Base) -> Raw:
        body = base.body + b"&pad=" + b"x" * (MAX_BODY - len(base.body) - 5)
        assert len(body) == MAX_BODY
        return self._raw("exactly at the size limit, signature of the short body", base, body)


def _lower_escapes(body: bytes) -> bytes:
    out, i = bytearray(), 0
    while i < len(body):
        if body[i:i + 1] == b"%" and i + 2 < len(body):
            out += b"%" + body[i + 1:i + 3].lower()
            i += 3
        else:
            out.append(body[i])
            i += 1
    return bytes(out)


async def settled(stack: Stack, footprint: Callable[[Stack], Awaitable[Any]], quiet: float = 0.5) -> Any:
    """The footprint once nothing has changed for `quiet` seconds."""
    last = await footprint(stack)
    while True:
        await asyncio.sleep(quiet)
        now = await footprint(stack)
        if now == last:
            return now
        last = now


async def fuzz(stack: Stack, footprint: Callable[[Stack], Awaitable[Any]], cases: int, seed: int) -> None:
    run_id, ts = await waiting_gated_run(stack)
    trigger = f"{int(time.time())}.77.{uuid.uuid4().hex[:20]}"
    command, key = stack.command("run hold service=api", trigger_id=trigger)
    click = stack.click_body(BOB, run_id, "risky", ts)
    bases = [Base("command", command.encode()), Base("click", click.encode())]
    before = await settled(stack, footprint)

    rng = random.Random(seed)
    fuzzer = Fuzzer(rng, bases)
    wrong: list[str] = []
    started = time.monotonic()
    for batch in range(0, cases, CONCURRENCY):
        for base in bases:
            base.resign()
        raws = [fuzzer.case() for _ in range(min(CONCURRENCY, cases - batch))]
        statuses = await asyncio.gather(*(send_raw(stack.url, raw) for raw in raws), return_exceptions=True)
        for i, (raw, status) in enumerate(zip(raws, statuses)):
            if status != raw.expect:
                wrong.append(f"case {batch + i} (seed {seed}) {raw.what}: {status!r}, expected {raw.expect}")
    elapsed = time.monotonic() - started
    assert not wrong, f"{len(wrong)}/{cases} cases answered wrongly:\n" + "\n".join(wrong[:40])

    after = await settled(stack, footprint)
    assert after == before, f"refused requests left a trace: {before.diff(after)}"
    assert key not in stack.responses
    status = await step_state(stack, run_id, "risky", "waiting_approval")
    assert status is not None and status.step("risky").approvals == [], "no vote was counted"
    print(f"{cases} refused requests (seed {seed}) in {elapsed:.1f}s: {dict(sorted(fuzzer.counts.items()))}")

    # nothing broken: the very requests the fuzz mutated, correctly signed (header names in capitals), work
    for base in bases:
        base.resign()
        upper = [(CT, FORM_TYPE), (TS.upper(), base.ts), (SIG.upper(), base.sig)]
        assert await send_raw(stack.url, Raw(f"valid {base.name}", base.body, upper)) == 200
    assert "Started" in text_of(await stack.answers(key))
    query = f'WorkflowId = "{slack_run_id("hold", trigger)}"'
    # (listing is Temporal's visibility, which may lag the start by a moment: CI at 69b9123 read 0)
    listed = await eventually(lambda: stack.runs(query), what="the valid command's run listed")
    assert len(listed) == 1
    final = await eventually(lambda: finished(stack, run_id), what="the valid click decides the run")
    assert final.state == "completed"
    assert [(v.user, v.vote) for v in final.step("risky").approvals] == [(principal(BOB), "approve")]
    votes = [e for e in stack.audit.events(run_id) if e.kind == EventKind.approval_vote]
    assert [(e.actor, e.details["vote"]) for e in votes] == [(principal(BOB), "approve")]


async def test_signature_fuzz_refuses_every_mutation(slack: Stack, footprint: Any) -> None:
    await fuzz(slack, footprint, FAST_CASES, SEED)


@pytest.mark.chaos
async def test_signature_fuzz_long(slack: Stack, footprint: Any) -> None:
    await fuzz(slack, footprint, CHAOS_CASES, SEED + 1)  # other cases than the fast run's


# ---- signed, but not something Slack sends ------------------------------------------------------


def _payload(value: Any) -> bytes:
    return urlencode({"payload": json.dumps(value)}).encode()


async def test_signed_but_unreadable_bodies_are_refused_without_a_5xx(slack: Stack, footprint: Any) -> None:
    """Correct signatures over bodies Bolt cannot read (the Content-Type is not signed, so a
    proxy that rewrites it makes a form body "JSON"), or over text that is not UTF-8, or a
    command without the user Slack always names: a 4xx or a refusal, nothing else."""
    run_id, ts = await waiting_gated_run(slack)
    command, key = slack.command("run hold service=api")
    click = {"type": "block_actions", "user": {"id": BOB}, "channel": {"id": CHANNEL},
             "container": {"message_ts": ts, "channel_id": CHANNEL}}
    value = json.dumps({"run_id": run_id, "step_id": "risky"})
    cases: list[tuple[str, bytes, bytes, int]] = [
        ("form command sent as application/json", command.encode(), b"application/json", 400),
        ("form command sent as application/json; charset=utf-8", command.encode(), b"application/json; charset=utf-8",
         400),
        ("payload not JSON", b"payload=%7Bnot-json", FORM_TYPE, 400),
        ("payload a JSON list", _payload([1, 2]), FORM_TYPE, 400),
        ("payload a JSON number", _payload(1), FORM_TYPE, 400),
        ("payload a JSON string", _payload("block_actions"), FORM_TYPE, 400),
        ("payload null", _payload(None), FORM_TYPE, 400),
        ("body '{' but not JSON", b"{not json", FORM_TYPE, 400),
        ("JSON list body", b"[1, 2]", b"application/json", 400),
        ("click with no actions", _payload({**click, "actions": []}), FORM_TYPE, 400),
        ("click with actions an object", _payload({**click, "actions": {"action_id": APPROVE_ACTION, "value": value}}),
         FORM_TYPE, 400),
        ("click with actions a string", _payload({**click, "actions": APPROVE_ACTION}), FORM_TYPE, 400),
        ("click with an action that is a string", _payload({**click, "actions": [APPROVE_ACTION]}), FORM_TYPE, 400),
        ("click with authorizations a string", _payload({**click, "authorizations": "x", "actions": [
            {"action_id": "nothing.registered", "value": value}]}), FORM_TYPE, 400),
        ("UTF-16 command", command.encode("utf-16"), FORM_TYPE, 401),
        ("latin-1 command", (command + "&x=caf\u00e9").encode("latin-1"), FORM_TYPE, 401),
        ("gzip command", gzip.compress(command.encode()), FORM_TYPE, 401),
        ("empty JSON object", b"{}", b"application/json", 404),
        ("empty body", b"", FORM_TYPE, 404),
        ("unknown payload type", _payload({"type": "nope"}), FORM_TYPE, 404),
    ]
    before = await settled(slack, footprint)
    for what, body, content_type, expected in cases:
        status = await send_raw(slack.url, Raw(what, body, signed_headers(body, content_type=content_type)))
        assert status == expected, (what, status)
    after = await settled(slack, footprint)
    assert after == before, f"unreadable requests left a trace: {before.diff(after)}"

    # a command without a user id: refused to the command's response_url; no run, no audit event
    anonymous = b"&".join(p for p in command.encode().split(b"&") if not p.startswith(b"user_id="))
    status = await send_raw(slack.url, Raw("no user_id", anonymous, signed_headers(anonymous)))
    assert status == 200
    assert "names no Slack user" in text_of(await slack.answers(key)), slack.responses[key]
    after = await settled(slack, footprint)
    assert (after.runs, after.audit, after.slack_calls) == (before.runs, before.audit, before.slack_calls), \
        before.diff(after)
    status = await step_state(slack, run_id, "risky", "waiting_approval")
    assert status is not None and status.step("risky").approvals == []


# ---- replays -----------------------------------------------------------------------------------


async def test_replayed_command_after_the_run_finished_starts_nothing(slack: Stack, footprint: Any) -> None:
    trigger = f"{int(time.time())}.5.{uuid.uuid4().hex[:20]}"
    body, key = slack.command("run quick n=1", trigger_id=trigger)
    headers = sign(body)
    assert (await slack.post(body, headers=headers)).status_code == 200
    run_id = slack_run_id("quick", trigger)
    assert run_id in text_of(await slack.answers(key))
    assert (await eventually(lambda: finished(slack, run_id), what="run finished")).state == "completed"
    before = await settled(slack, footprint)

    # the identical signed bytes, inside the five-minute window, after the run has finished
    replay = await slack.post(body, headers=headers)
    assert replay.status_code == 200
    answers = await slack.answers(key, n=2)
    assert "already ran" in answers[1]["text"] and run_id in answers[1]["text"] and "completed" in answers[1]["text"]
    assert answers[1]["response_type"] == "ephemeral"
    after = await settled(slack, footprint)
    assert (after.runs, after.audit, after.slack_calls) == (before.runs, before.audit, before.slack_calls), \
        before.diff(after)
    assert len(await slack.runs(f'WorkflowId = "{run_id}"')) == 1
    events = slack.audit.events()
    assert [e.details["outcome"] for e in events if e.kind == EventKind.slack_command] == ["started"]
    assert len([e for e in events if e.kind == EventKind.run_started]) == 1
    assert len([e for e in events if e.kind == EventKind.step_started and e.step_id == "note"]) == 1

    # the same command signed just outside the window (a capture replayed late): 401, nothing
    for age in (MAX_SKEW + 1, MAX_SKEW + 30):
        stale = await slack.post(body, headers=sign(body, ts=int(time.time()) - age))
        assert stale.status_code == 401, age
    # ...and a fresh command (new trigger) captured more than five minutes ago
    late_body, late_key = slack.command("run quick n=2")
    assert (await slack.post(late_body, headers=sign(late_body, ts=int(time.time()) - MAX_SKEW - 1))).status_code == 401
    final = await settled(slack, footprint)
    assert final == after, after.diff(final)
    assert late_key not in slack.responses
