"""A live-looking synthetic video source: moving colour bars, frame counter, clock, input.

A human watching a player page must see at a glance that the stream is live and that
their input reaches the streamer, so the pattern draws the frame number and the wall
clock, a cursor at the last mouse position, a flash on every click and the last key
codes pressed. Frames are drawn straight into yuv420p planes (what the encoders eat,
so no colour conversion) with numpy slicing on precomputed rows and glyphs: one
1280x720 frame costs a few milliseconds. One ``TestPatternSource`` serves every peer
of a streamer and renders only while at least one track is being read.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache

import av
import numpy as np
import numpy.typing as npt
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from streamer.input_messages import (
    InputMessage,
    KeyDown,
    MouseDouble,
    MouseDown,
    MouseMove,
    MouseUp,
    MouseWheel,
    dequantize,
)

Plane = npt.NDArray[np.uint8]

VIDEO_CLOCK_RATE = 90000
WHITE = 235  # brighter than any background value, so overlays are easy to find
BLACK = 16
FLASH_S = 0.3

# 75% colour bars, (Y, Cb, Cr) in BT.601 limited range.
_BARS = [
    (180, 128, 128), (162, 44, 142), (131, 156, 44), (112, 72, 58),
    (84, 184, 198), (65, 100, 212), (35, 212, 114), (16, 128, 128),
]  # fmt: skip

# 3x5 bitmap font; '#' is ink.
_FONT: dict[str, tuple[str, ...]] = {
    "0": ("###", "#.#", "#.#", "#.#", "###"), "1": (".#.", "##.", ".#.", ".#.", "###"),
    "2": ("###", "..#", "###", "#..", "###"), "3": ("###", "..#", ".##", "..#", "###"),
    "4": ("#.#", "#.#", "###", "..#", "..#"), "5": ("###", "#..", "###", "..#", "###"),
    "6": ("###", "#..", "###", "#.#", "###"), "7": ("###", "..#", ".#.", ".#.", ".#."),
    "8": ("###", "#.#", "###", "#.#", "###"), "9": ("###", "#.#", "###", "..#", "###"),
    "A": (".#.", "#.#", "###", "#.#", "#.#"), "B": ("##.", "#.#", "##.", "#.#", "##."),
    "C": (".##", "#..", "#..", "#..", ".##"), "D": ("##.", "#.#", "#.#", "#.#", "##."),
    "E": ("###", "#..", "##.", "#..", "###"), "F": ("###", "#..", "##.", "#..", "#.."),
    "G": (".##", "#..", "#.#", "#.#", ".##"), "H": ("#.#", "#.#", "###", "#.#", "#.#"),
    "I": ("###", ".#.", ".#.", ".#.", "###"), "J": ("..#", "..#", "..#", "#.#", ".#."),
    "K": ("#.#", "#.#", "##.", "#.#", "#.#"), "L": ("#..", "#..", "#..", "#..", "###"),
    "M": ("#.#", "###", "###", "#.#", "#.#"), "N": ("##.", "#.#", "#.#", "#.#", "#.#"),
    "O": (".#.", "#.#", "#.#", "#.#", ".#."), "P": ("##.", "#.#", "##.", "#..", "#.."),
    "Q": (".#.", "#.#", "#.#", "##.", ".##"), "R": ("##.", "#.#", "##.", "#.#", "#.#"),
    "S": (".##", "#..", ".#.", "..#", "##."), "T": ("###", ".#.", ".#.", ".#.", ".#."),
    "U": ("#.#", "#.#", "#.#", "#.#", "###"), "V": ("#.#", "#.#", "#.#", "#.#", ".#."),
    "W": ("#.#", "#.#", "###", "###", "#.#"), "X": ("#.#", "#.#", ".#.", "#.#", "#.#"),
    "Y": ("#.#", "#.#", ".#.", ".#.", ".#."), "Z": ("###", "..#", ".#.", "#..", "###"),
    ":": ("...", ".#.", "...", ".#.", "..."), ".": ("...", "...", "...", "...", ".#."),
    "-": ("...", "...", "###", "...", "..."), "_": ("...", "...", "...", "...", "###"),
    "/": ("..#", "..#", ".#.", "#..", "#.."), " ": ("...", "...", "...", "...", "..."),
}  # fmt: skip


@lru_cache(maxsize=16)
def _glyphs(scale: int) -> dict[str, npt.NDArray[np.bool_]]:
    """Boolean ink masks of every glyph, ``5*scale`` high and ``3*scale`` wide."""
    block = np.ones((scale, scale), dtype=bool)
    return {
        ch: np.kron(np.array([[c == "#" for c in row] for row in rows]), block).astype(bool)
        for ch, rows in _FONT.items()
    }


@dataclass
class InputOverlay:
    """What the pattern shows of recent input; fed every decoded input message."""

    mouse: tuple[int, int] | None = None  # quantised 0..65535, as on the wire
    buttons: int = 0  # bit n set while button n is held
    flash_until: float = 0.0
    keys: deque[int] = field(default_factory=lambda: deque(maxlen=8))

    def apply(self, message: InputMessage, now: float) -> None:
        match message:
            case MouseMove(x=x, y=y) | MouseWheel(x=x, y=y):
                self.mouse = (x, y)
            case MouseDown(button=b, x=x, y=y) | MouseDouble(button=b, x=x, y=y):
                self.mouse = (x, y)
                self.buttons |= 1 << (b & 7)
                self.flash_until = now + FLASH_S
            case MouseUp(button=b, x=x, y=y):
                self.mouse = (x, y)
                self.buttons &= ~(1 << (b & 7))
            case KeyDown(key_code=code, is_repeat=False):
                self.keys.append(code)
            case _:
                pass


class TestPattern:
    """Pure renderer: ``render()`` returns one yuv420p frame as a (h*3/2, w) array."""

    __test__ = False  # not a pytest class, despite the name

    def __init__(self, width: int, height: int, label: str = "") -> None:
        self.width = max(32, width - width % 2)
        self.height = max(32, height - height % 2)
        self.label = label.upper()
        w, h = self.width, self.height
        self._bars_h = h * 5 // 6 - (h * 5 // 6) % 2
        # Two periods side by side, so any scroll offset is a plain slice.
        bar_of_col = (np.arange(2 * w) % w) * len(_BARS) // w
        self._row_y = np.array([_BARS[i][0] for i in bar_of_col], dtype=np.uint8)
        cbar = bar_of_col[::2]
        self._row_u = np.array([_BARS[i][1] for i in cbar], dtype=np.uint8)
        self._row_v = np.array([_BARS[i][2] for i in cbar], dtype=np.uint8)
        ramp = 16 + (np.arange(2 * w) % w) * (180 - 16) // w  # never reaches WHITE
        self._ramp_y = ramp.astype(np.uint8)
        self.big = max(1, h // 90)
        self.small = max(1, h // 180)

    def render(self, index: int, now: float, overlay: InputOverlay | None = None) -> Plane:
        w, h, hb = self.width, self.height, self._bars_h
        buf = np.empty((h * 3 // 2, w), dtype=np.uint8)
        y, u, v = self.planes(buf)
        shift = (index * max(1, w // 320)) % w
        y[:hb] = self._row_y[shift : shift + w]
        y[hb:] = self._ramp_y[w - shift : 2 * w - shift]
        u[: hb // 2] = self._row_u[shift // 2 : shift // 2 + w // 2]
        v[: hb // 2] = self._row_v[shift // 2 : shift // 2 + w // 2]
        u[hb // 2 :] = 128
        v[hb // 2 :] = 128

        s, b = self.small, self.big
        if overlay is not None and now < overlay.flash_until:
            edge = 2 * b
            self.box(buf, 0, 0, w, edge, WHITE)
            self.box(buf, 0, h - edge, w, edge, WHITE)
            self.box(buf, 0, 0, edge, h, WHITE)
            self.box(buf, w - edge, 0, edge, h, WHITE)
        x0 = y0 = 4 * b
        if self.label:
            self.text(buf, self.label, x0, y0, s)
            y0 += 7 * s
        self.text(buf, f"{index:06d}", x0, y0, b)
        local = time.localtime(now)
        clock = time.strftime("%H:%M:%S", local) + f".{int(now * 1000) % 1000:03d}"
        self.text(buf, clock, x0, y0 + 7 * b, b)
        if overlay is not None:
            self._draw_input(buf, overlay)
        return buf

    def planes(self, buf: Plane) -> tuple[Plane, Plane, Plane]:
        """Views of the Y, U and V planes inside a yuv420p buffer."""
        w, h = self.width, self.height
        y = buf[:h]
        chroma = buf[h:].reshape(2, h // 2, w // 2)
        return y, chroma[0], chroma[1]

    def text(self, buf: Plane, text: str, x: int, y: int, scale: int) -> None:
        """Draw white text on a black box; characters outside the font are blanks."""
        glyphs = _glyphs(scale)
        pad = scale
        width = len(text) * 4 * scale - scale
        self.box(buf, x - pad, y - pad, width + 2 * pad, 5 * scale + 2 * pad, BLACK)
        yp, _, _ = self.planes(buf)
        for i, ch in enumerate(text):
            gx = x + i * 4 * scale
            glyph = glyphs.get(ch, glyphs[" "])
            gh, gw = glyph.shape
            if gx + gw > self.width or y + gh > self.height or gx < 0 or y < 0:
                continue
            yp[y : y + gh, gx : gx + gw][glyph] = WHITE

    def box(self, buf: Plane, x: int, y: int, w: int, h: int, luma: int) -> None:
        """Fill a grey box (neutral chroma), clipped to the frame."""
        x1, y1 = max(0, x), max(0, y)
        x2, y2 = min(self.width, x + w), min(self.height, y + h)
        if x2 <= x1 or y2 <= y1:
            return
        yp, up, vp = self.planes(buf)
        yp[y1:y2, x1:x2] = luma
        up[y1 // 2 : (y2 + 1) // 2, x1 // 2 : (x2 + 1) // 2] = 128
        vp[y1 // 2 : (y2 + 1) // 2, x1 // 2 : (x2 + 1) // 2] = 128

    def _draw_input(self, buf: Plane, overlay: InputOverlay) -> None:
        w, h, b = self.width, self.height, self.big
        if overlay.keys:
            keys = "KEYS " + " ".join(str(k) for k in overlay.keys)
            self.text(buf, keys, 4 * b, h - 9 * b, b)
        if overlay.mouse is not None:
            cx, cy = dequantize(overlay.mouse[0], w), dequantize(overlay.mouse[1], h)
            arm, t = 4 * b, max(1, b // 2)
            self.box(buf, cx - arm - t, cy - 2 * t, 2 * (arm + t) + 1, 4 * t + 1, BLACK)
            self.box(buf, cx - 2 * t, cy - arm - t, 4 * t + 1, 2 * (arm + t) + 1, BLACK)
            self.box(buf, cx - arm, cy - t // 2, 2 * arm + 1, t, WHITE)
            self.box(buf, cx - t // 2, cy - arm, t, 2 * arm + 1, WHITE)
            if overlay.buttons:
                self.box(buf, cx - b, cy - b, 2 * b + 1, 2 * b + 1, WHITE)


class TestPatternSource:
    """One pattern, clock and input overlay shared by all the peers of a streamer.

    Each peer gets its own track from ``track()``; they all see the same frames.
    The render loop runs only while some track is being read, so an idle streamer
    costs no CPU.
    """

    __test__ = False

    def __init__(self, width: int = 1280, height: int = 720, fps: float = 30, label: str = "") -> None:
        self.pattern = TestPattern(width, height, label)
        self.overlay = InputOverlay()
        self.fps = max(1.0, float(fps))
        self.frames_rendered = 0
        self._index = 0  # keeps counting across idle periods, like a game's frame count
        self._readers: set[TestPatternTrack] = set()
        self._frame: av.VideoFrame | None = None
        self._seq = 0
        self._new_frame = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def width(self) -> int:
        return self.pattern.width

    @property
    def height(self) -> int:
        return self.pattern.height

    def track(self) -> TestPatternTrack:
        return TestPatternTrack(self)

    def apply_input(self, message: InputMessage) -> None:
        self.overlay.apply(message, time.time())

    def render_frame(self, index: int) -> av.VideoFrame:
        buf = self.pattern.render(index, time.time(), self.overlay)
        frame = av.VideoFrame.from_ndarray(buf, format="yuv420p")
        frame.pts = int(index * VIDEO_CLOCK_RATE / self.fps)
        frame.time_base = Fraction(1, VIDEO_CLOCK_RATE)
        return frame

    def _attach(self, track: TestPatternTrack) -> int:
        """Register a reader; returns the sequence number it has "seen" so far."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        self._readers.add(track)
        return self._seq

    def _detach(self, track: TestPatternTrack) -> None:
        self._readers.discard(track)

    async def _next(self, seen: int) -> tuple[int, av.VideoFrame | None]:
        while self._seq == seen:
            event = self._new_frame
            await event.wait()
        return self._seq, self._frame

    def _publish(self, frame: av.VideoFrame | None) -> None:
        self._frame = frame
        self._seq += 1
        event, self._new_frame = self._new_frame, asyncio.Event()
        event.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        period = 1.0 / self.fps
        index = self._index
        start = loop.time() - index * period
        try:
            while self._readers:
                self._publish(self.render_frame(index))
                self.frames_rendered += 1
                index += 1
                self._index = index
                delay = start + index * period - loop.time()
                if delay < -period:  # fell behind: drop frames rather than burst
                    index = self._index = int((loop.time() - start) / period) + 1
                    delay = start + index * period - loop.time()
                await asyncio.sleep(max(0.0, delay))
        finally:
            self._publish(None)

    async def aclose(self) -> None:
        for track in list(self._readers):
            track.stop()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


class TestPatternTrack(MediaStreamTrack):
    """A per-peer view of a ``TestPatternSource`` (what ``addTrack`` gets)."""

    __test__ = False
    kind = "video"

    def __init__(self, source: TestPatternSource) -> None:
        super().__init__()
        self._source = source
        self._seen: int | None = None

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._seen is None:
            self._seen = self._source._attach(self)
        self._seen, frame = await self._source._next(self._seen)
        if frame is None or self.readyState != "live":
            self.stop()
            raise MediaStreamError
        return frame

    def stop(self) -> None:
        super().stop()
        self._source._detach(self)
