"""Real WebRTC peers (aiortc) for the sampled sessions: what a player feels.

Each sampled session decodes the stream and measures time from the session request to
the first decoded frame, the frame rate it then receives, and input round trips: a
mouse button goes down at a point of the picture over the data channel, and the round
trip ends on the first decoded frame where the synthetic streamer drew its white box
there (``streamer/pattern.py`` draws a held button as a box of ``WHITE``, brighter than
any background). Against a real UE build the box is not drawn, so the probes time
out and are reported as lost, never as a figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import numpy as np

from loadtest.session_result import Refused, Result, ms_since
from loadtest.synthetic_player import SyntheticPlayer
from streamer import input_messages as im

# Points in the bottom band of the pattern (a grey ramp, never above 180) away from text.
PROBE_POINTS = ((0.3, 0.92), (0.5, 0.92), (0.7, 0.92), (0.9, 0.92))
LIT = 205  # mean luma of the box's centre that counts as drawn
PROBE_TIMEOUT_S = 3.0
STALL_S = 5.0  # at the end of a hold, a frame must come within this, or the stream stopped


def luma_at(frame: Any, fx: float, fy: float) -> float:
    """Mean luma of the 3x3 pixels at (fx, fy) (fractions of width and height)."""
    gray = frame.to_ndarray(format="gray")
    h, w = gray.shape
    x, y = min(w - 2, max(1, int(fx * w))), min(h - 2, max(1, int(fy * h)))
    return float(np.mean(gray[y - 1 : y + 2, x - 1 : x + 2]))


async def _next_frame(player: SyntheticPlayer, timeout: float) -> Any:
    await player.wait_frames(player.frames_received + 1, timeout)
    return player.last_frame


async def input_round_trip(player: SyntheticPlayer, point: tuple[float, float], timeout: float) -> float | None:
    """Milliseconds from a mouse-down at ``point`` to a decoded frame showing it; None if never."""
    fx, fy = point
    qx, qy = int(fx * 65535), int(fy * 65535)
    frame = await _next_frame(player, timeout)
    if luma_at(frame, fx, fy) >= LIT:  # already lit: not a usable point now
        return None
    sent = time.time()
    player.send_input_nowait(im.MouseDown(0, qx, qy))
    try:
        async with asyncio.timeout(timeout):
            while True:
                frame = await _next_frame(player, timeout)
                if luma_at(frame, fx, fy) >= LIT:
                    return ms_since(sent)
    except TimeoutError:
        return None
    finally:
        player.send_input_nowait(im.MouseUp(0, qx, qy))


async def measure(player: SyntheticPlayer, r: Result, hold_s: float, probes: int, timeout: float) -> None:
    """From a connected player: first frame, frame rate over the hold, input round trips."""
    await player.wait_frames(1, timeout)
    r.ttff_ms = ms_since(r.t0)
    r.join_ms = r.ttff_ms
    r.held, r.hold_from = 1, time.time()
    await player.wait_data_channel(timeout)
    start_frames, start = player.frames_received, time.time()
    for i in range(probes):
        rtt = await input_round_trip(player, PROBE_POINTS[i % len(PROBE_POINTS)], PROBE_TIMEOUT_S)
        if rtt is not None:
            r.input_rtt_ms.append(rtt)
    rest = hold_s - (time.time() - start)
    if rest > 0:
        with contextlib.suppress(TimeoutError):
            await player.wait_closed(rest)  # back at once if signalling closed the player
    elapsed = time.time() - start
    r.hold_until = time.time()
    if elapsed > 0:
        r.fps = (player.frames_received - start_frames) / elapsed
    # Still playing at the end of the hold, or the session was cut (its streamer stopped
    # under it: a host drained and terminated too early, a slot that failed).
    if player.closed:
        raise Refused(f"closed_{player.close_code}", "signalling closed the player during its hold")
    try:
        await player.wait_frames(player.frames_received + 1, STALL_S)
    except TimeoutError:
        raise Refused("stream_stopped", f"no frame for {STALL_S} s at the end of the hold") from None
