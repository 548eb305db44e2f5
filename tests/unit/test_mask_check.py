"""MaskCheck reads frame headers however TCP splits them: it must flag exactly the streams
with an unmasked frame and hand every byte of the others to the parser, in order."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from signaling.access import MaskCheck


class Parser:
    def __init__(self) -> None:
        self.fed = bytearray()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.fed += data
        return False, b""


def frame(size: int, masked: bool) -> bytes:
    if size < 126:
        head = bytes((0x81, size | (0x80 if masked else 0)))
    elif size < 65536:
        head = bytes((0x81, 126 | (0x80 if masked else 0))) + size.to_bytes(2, "big")
    else:
        head = bytes((0x81, 127 | (0x80 if masked else 0))) + size.to_bytes(8, "big")
    return head + (os.urandom(4) if masked else b"") + b"x" * size


def feed(stream: bytes, cuts: list[int]) -> tuple[Parser, list[str]]:
    parser, told = Parser(), []
    check = MaskCheck(parser, lambda: told.append("unmasked"))
    at = 0
    for cut in sorted({c % (len(stream) + 1) for c in cuts} | {len(stream)}):
        check.feed_data(stream[at:cut])
        at = cut
    return parser, told


SIZES = st.sampled_from([0, 1, 5, 125, 126, 127, 300, 65535, 65536, 70000]) | st.integers(0, 400)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(SIZES, st.booleans()), min_size=1, max_size=6), st.lists(st.integers(0, 10**6), max_size=8))
def test_flags_exactly_the_streams_with_an_unmasked_frame(frames: list[tuple[int, bool]], cuts: list[int]) -> None:
    stream = b"".join(frame(size, masked) for size, masked in frames)
    parser, told = feed(stream, cuts)
    first_bad = next((i for i, (_, masked) in enumerate(frames) if not masked), None)
    if first_bad is None:
        assert told == [] and bytes(parser.fed) == stream
    else:
        assert told == ["unmasked"]
        good = b"".join(frame(size, masked) for size, masked in frames[:first_bad])
        assert stream.startswith(bytes(parser.fed)) and len(parser.fed) <= len(good) + 13


def test_several_whole_frames_in_one_read_go_through_at_once() -> None:
    stream = frame(200, True) + frame(10, True) + frame(126, True)
    parser, told = feed(stream, [])
    assert told == [] and bytes(parser.fed) == stream


def test_an_unmasked_frame_after_masked_ones_in_one_read_is_caught() -> None:
    parser, told = feed(frame(20, True) + frame(20, False), [])
    assert told == ["unmasked"] and parser.fed == b""
