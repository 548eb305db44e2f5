"""The synthetic video: right size, alive over time, and showing the input it gets."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from streamer import input_messages as im
from streamer.pattern import WHITE, InputOverlay, TestPattern, TestPatternSource

NOW = 1_800_000_000.25


@pytest.mark.parametrize(
    ("size", "expected"),
    [((1280, 720), (1280, 720)), ((320, 240), (320, 240)), ((641, 361), (640, 360)), ((8, 8), (32, 32))],
)
def test_frame_size(size: tuple[int, int], expected: tuple[int, int]) -> None:
    pattern = TestPattern(*size)
    buf = pattern.render(0, NOW)
    w, h = expected
    assert (pattern.width, pattern.height) == expected
    assert buf.shape == (h * 3 // 2, w) and buf.dtype == np.uint8


def test_frames_change_over_time() -> None:
    pattern = TestPattern(640, 360)
    first = pattern.render(0, NOW)
    assert not np.array_equal(first, pattern.render(1, NOW))  # bars move, counter ticks
    assert not np.array_equal(first, pattern.render(0, NOW + 1.0))  # the clock ticks


def test_background_never_reaches_overlay_white() -> None:
    pattern = TestPattern(640, 360)
    y, _, _ = pattern.planes(pattern.render(7, NOW))
    text_rows = 30 * pattern.big  # counter and clock sit in the top-left corner
    assert y[text_rows:, :].max() < WHITE


def _luma(pattern: TestPattern, overlay: InputOverlay, now: float = NOW) -> np.ndarray:
    return pattern.planes(pattern.render(3, now, overlay))[0]


def test_cursor_drawn_at_mouse_position() -> None:
    pattern = TestPattern(640, 360)
    overlay = InputOverlay()
    overlay.apply(im.MouseMove(im.quantize(400, 640), im.quantize(200, 360)), NOW)
    y = _luma(pattern, overlay)
    assert y[200, 400] == WHITE
    assert _luma(pattern, InputOverlay())[200, 400] != WHITE


def test_click_flashes_and_holds_a_marker() -> None:
    pattern = TestPattern(640, 360)
    overlay = InputOverlay()
    x, y = im.quantize(320, 640), im.quantize(180, 360)
    overlay.apply(im.MouseDown(0, x, y), NOW)
    during = _luma(pattern, overlay, NOW + 0.05)
    assert during[359, 639] == WHITE  # border flash
    assert during[180 + pattern.big, 320 + pattern.big] == WHITE  # filled box while held
    later = _luma(pattern, overlay, NOW + 5)
    assert later[359, 639] != WHITE
    overlay.apply(im.MouseUp(0, x, y), NOW + 5)
    assert overlay.buttons == 0
    assert _luma(pattern, overlay, NOW + 5)[180 + pattern.big, 320 + pattern.big] != WHITE


def test_last_keys_are_drawn() -> None:
    pattern = TestPattern(640, 360)
    overlay = InputOverlay()
    for code in (65, 66, 67):
        overlay.apply(im.KeyDown(code), NOW)
    overlay.apply(im.KeyDown(68, is_repeat=True), NOW)  # repeats are not new keys
    assert list(overlay.keys) == [65, 66, 67]
    strip = slice(pattern.height - 10 * pattern.big, pattern.height)
    with_keys = _luma(pattern, overlay)[strip]
    without = _luma(pattern, InputOverlay())[strip]
    assert (with_keys == WHITE).sum() > 50 and (without == WHITE).sum() == 0


async def test_source_feeds_every_track_the_same_frames() -> None:
    source = TestPatternSource(160, 120, fps=30)
    a, b = source.track(), source.track()
    try:
        fa = await asyncio.wait_for(a.recv(), 10)
        fb = await asyncio.wait_for(b.recv(), 10)
        assert (fa.width, fa.height, fa.format.name) == (160, 120, "yuv420p")
        assert fa.pts is not None and fb.pts in (fa.pts, fa.pts + 3000)  # one clock: 90 kHz at 30 fps
        later = await asyncio.wait_for(a.recv(), 10)
        assert later.pts is not None and later.pts > fa.pts
    finally:
        a.stop()
        b.stop()
        await source.aclose()


async def test_source_renders_only_while_watched() -> None:
    source = TestPatternSource(160, 120, fps=60)
    await asyncio.sleep(0.05)
    assert source.frames_rendered == 0
    track = source.track()
    await asyncio.wait_for(track.recv(), 10)
    track.stop()
    assert source._task is not None
    await asyncio.wait_for(source._task, 10)  # the loop ends once nobody reads
    rendered = source.frames_rendered
    late = source.track()  # a later viewer restarts it, and the counter goes on
    frame = await asyncio.wait_for(late.recv(), 10)
    assert frame.pts is not None and frame.pts >= rendered * 1500
    late.stop()
    await source.aclose()


async def test_input_reaches_the_shared_overlay() -> None:
    source = TestPatternSource(160, 120)
    source.apply_input(im.KeyDown(90))
    assert list(source.overlay.keys) == [90]
    await source.aclose()
