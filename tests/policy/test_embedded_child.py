"""The child's read side: every frame read whole however the pipe splits it, in order, and a broken
stream ends the child with a message instead of a guess."""

from __future__ import annotations

import os
import struct
import threading
import time

import pytest

from bot.policy import wire
from bot.policy.embedded_child import requests

FRAMES = [{"op": "ping", "id": 1}, {"op": "eval", "id": 2, "input": {"text": "é" * 5000}}, {"op": "ping", "id": 3}]


def fed(chunks: list[bytes], pause: float = 0.0) -> int:
    """A pipe's read end, its write end fed `chunks` by a thread (then closed)."""
    read, write = os.pipe()

    def feed() -> None:
        for chunk in chunks:
            os.write(write, chunk)
            time.sleep(pause)
        os.close(write)

    threading.Thread(target=feed, daemon=True).start()
    return read


def test_frames_split_anywhere_are_read_whole_and_in_order() -> None:
    stream = b"".join(wire.encode(frame) for frame in FRAMES)
    cuts = [0, 1, 3, 4, 7, 100, 5000, len(stream) - 1, len(stream)]
    chunks = [stream[a:b] for a, b in zip(cuts, cuts[1:])]

    assert list(requests(fed(chunks, pause=0.002))) == FRAMES


def test_frames_in_one_write_are_all_read() -> None:
    assert list(requests(fed([b"".join(wire.encode(frame) for frame in FRAMES)]))) == FRAMES


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (wire.encode(FRAMES[0]) + wire.encode(FRAMES[1])[:50], "stream ended inside a frame"),
        (wire.encode(FRAMES[0]) + struct.pack(">I", wire.MAX_FRAME + 1) + b"{}", "exceeds"),
        (wire.encode(FRAMES[0]) + struct.pack(">I", 3) + b"[1]", "expected an object"),
    ],
    ids=["cut short", "oversized", "not an object"],
)
def test_a_broken_stream_ends_with_a_message(stream: bytes, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert list(requests(fed([stream]))) == [FRAMES[0]]
    assert message in capsys.readouterr().err


def test_a_clean_end_of_input_ends_the_requests() -> None:
    assert list(requests(fed([]))) == []


def test_between_questions_far_apart_the_child_sleeps_after_a_short_poll() -> None:
    """After an answer the child polls for the next question for at most SPIN, then sleeps: 0.3 s
    without a question costs it no more than a few milliseconds of CPU (one that kept polling
    would spend all 0.3 s)."""
    frame = wire.encode(FRAMES[0])
    spent = []
    started = time.process_time()
    for _ in requests(fed([frame, frame, frame], pause=0.3)):
        spent.append(time.process_time() - started)  # CPU from the last answer to this question
        started = time.process_time()

    assert len(spent) == 3
    assert max(spent[1:]) < 0.1
