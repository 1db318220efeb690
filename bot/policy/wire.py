"""Length-prefixed JSON frames between the worker and the embedded engine's child process.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON (one object).
"""

from __future__ import annotations

import json
import struct
from typing import Any

HEADER = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024  # far above any policy input; guards against a desynchronised stream
# The largest input an eval request may carry: the rest of the frame is room for the envelope.
MAX_INPUT = MAX_FRAME - 64 * 1024
# After its last answer, how long the child polls for the next question before it sleeps, while
# questions come back to back (bot/policy/embedded_child.py); its parent reads a question asked
# within it as one the child is awake for (bot.eventloop counts it as running).
CHILD_SPIN = 0.0005


class FrameError(Exception):
    """The stream does not hold a valid frame (desynchronised or corrupt)."""


def encode(message: dict[str, Any], **encoded: bytes) -> bytes:
    """`encoded` fields are JSON the caller already has (the canonical input it digested):
    spliced into the object as they are, not serialised a second time."""
    payload = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    if encoded:
        fields = b",".join(json.dumps(name).encode() + b":" + value for name, value in encoded.items())
        payload = payload[:-1] + (b"," if message else b"") + fields + b"}"
    if len(payload) > MAX_FRAME:
        raise FrameError(f"frame of {len(payload)} bytes exceeds {MAX_FRAME}")
    return HEADER.pack(len(payload)) + payload


def decode(payload: bytes | bytearray) -> dict[str, Any]:
    try:
        message = json.loads(payload)
    except ValueError as exc:
        raise FrameError(f"frame is not JSON: {exc}") from exc
    if not isinstance(message, dict):
        raise FrameError(f"frame is {type(message).__name__}, expected an object")
    return message


def _length(header: bytes) -> int:
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise FrameError(f"frame of {length} bytes exceeds {MAX_FRAME}")
    return length


def read_frames(data: bytes) -> list[dict[str, Any]]:
    """Split a whole captured stream into frames (a truncated tail is dropped)."""
    return take_frames(bytearray(data))


def take_frames(buffer: bytearray) -> list[dict[str, Any]]:
    """The complete frames at the start of `buffer`, removed from it; a partial frame stays
    for the bytes still to come."""
    frames = []
    while (frame := take_frame(buffer)) is not None:
        frames.append(frame)
    return frames


def take_frame(buffer: bytearray) -> dict[str, Any] | None:
    """The first frame of `buffer`, removed from it; None while it is still partial."""
    if len(buffer) < HEADER.size:
        return None
    end = HEADER.size + _length(buffer[: HEADER.size])
    if end > len(buffer):
        return None
    frame = decode(buffer[HEADER.size : end])  # one copy: a load frame can be megabytes
    del buffer[:end]
    return frame
