"""The synthetic streamer and player through the real signalling server, media included.

Everything runs on 127.0.0.1 with small frames so two cores cope; waits are generous
and no test asserts a duration.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from loadtest.synthetic_player import SyntheticPlayer
from signaling.app import SignalingServer
from streamer import input_messages as im
from streamer.synthetic import SyntheticStreamer
from tests.conftest import StartProcess, StartSignaling

pytestmark = pytest.mark.integration

WAIT = 30.0

StartStreamer = Callable[..., Awaitable[SyntheticStreamer]]


@pytest.fixture
async def server(start_signaling: StartSignaling) -> SignalingServer:
    return await start_signaling(sfu_port=-1)


@pytest.fixture
async def start_streamer(server: SignalingServer) -> AsyncIterator[StartStreamer]:
    """Run synthetic streamers against ``server`` until the test ends."""
    running: list[tuple[SyntheticStreamer, asyncio.Task[None]]] = []

    async def start(streamer_id: str = "DefaultStreamer", **kwargs: Any) -> SyntheticStreamer:
        kwargs = {"width": 320, "height": 240, "fps": 20, **kwargs}
        streamer = SyntheticStreamer(f"ws://127.0.0.1:{server.streamer_port}", streamer_id, **kwargs)
        running.append((streamer, asyncio.create_task(streamer.run())))
        await streamer.wait_identified(WAIT)
        return streamer

    yield start
    for streamer, task in running:
        await streamer.stop()
        await asyncio.wait_for(task, WAIT)


def player_url(server: SignalingServer) -> str:
    return f"ws://127.0.0.1:{server.player_port}"


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(WAIT):
        while not condition():
            await asyncio.sleep(0.05)


async def test_player_receives_video_and_streamer_decodes_input(
    server: SignalingServer, start_streamer: StartStreamer
) -> None:
    streamer = await start_streamer("Cam")
    async with SyntheticPlayer(player_url(server)) as player:
        first = await player.wait_frames(5, WAIT)
        await player.wait_frames(first + 10, WAIT)  # keeps rising: the stream is live
        assert player.subscribed_to == "Cam"
        frame = player.last_frame
        assert frame is not None and (frame.width, frame.height) == (320, 240)

        x, y = im.quantize(100, 320), im.quantize(50, 240)
        await player.send_mouse_move(x, y, 3, -2)
        await player.send_mouse_down(0, x, y)
        await player.send_key_down(65)
        got = await streamer.wait_input(lambda _, m: isinstance(m, im.KeyDown), WAIT)
        assert got == (player.player_id, im.KeyDown(65, False))
        events = [m for pid, m in streamer.input_events if pid == player.player_id]
        assert im.MouseMove(x, y, 3, -2) in events
        assert im.MouseDown(0, x, y) in events


async def test_data_channel_handshake_like_ue(server: SignalingServer, start_streamer: StartStreamer) -> None:
    await start_streamer()
    async with SyntheticPlayer(player_url(server)) as player:
        protocol = await player.wait_streamer_message("Protocol", WAIT)
        assert protocol.json()["Direction"] == 0
        assert protocol.json()["MouseMove"] == {"id": 74, "structure": ["uint16", "uint16", "int16", "int16"]}
        settings = await player.wait_streamer_message("InitialSettings", WAIT)
        assert "WebRTC" in settings.json()
        # Ordered channel: both protocol tables came before the settings.
        directions = [m.json()["Direction"] for m in player.streamer_messages if m.name == "Protocol"]
        assert directions == [0, 1]
        # The player asked for this after the protocol, as the browser frontend does.
        owner = await player.wait_streamer_message("QualityControlOwnership", WAIT)
        assert owner.flag is True


async def test_two_players_watch_one_streamer(server: SignalingServer, start_streamer: StartStreamer) -> None:
    streamer = await start_streamer("Shared")
    url = player_url(server)
    async with SyntheticPlayer(url, "Shared") as one, SyntheticPlayer(url, "Shared") as two:
        await one.wait_frames(10, WAIT)
        await two.wait_frames(10, WAIT)
        assert len(streamer.peers) == 2 and one.player_id != two.player_id
        n1, n2 = one.frames_received, two.frames_received
        await one.wait_frames(n1 + 10, WAIT)
        await two.wait_frames(n2 + 10, WAIT)
        await one.send_key_down(49)
        await two.send_key_down(50)
        await streamer.wait_input(lambda pid, m: m == im.KeyDown(49) and pid == one.player_id, WAIT)
        await streamer.wait_input(lambda pid, m: m == im.KeyDown(50) and pid == two.player_id, WAIT)

        # Both asked for quality control; like UE, only the last asker holds it.
        def last_flag(player: SyntheticPlayer) -> bool | None:
            flags = [m.flag for m in player.streamer_messages if m.name == "QualityControlOwnership"]
            return flags[-1] if flags else None

        players = {one.player_id: one, two.player_id: two}
        await wait_until(lambda: streamer.quality_controller in players, "a quality controller")
        owner = players[streamer.quality_controller]
        other = two if owner is one else one
        await wait_until(lambda: last_flag(owner) is True and last_flag(other) is False, "ownership")
    await wait_until(lambda: not streamer.peers, "peers torn down after players left")


async def test_clicks_show_up_in_the_decoded_video(server: SignalingServer, start_streamer: StartStreamer) -> None:
    streamer = await start_streamer(width=640, height=360)
    async with SyntheticPlayer(player_url(server)) as player:
        await player.wait_frames(5, WAIT)
        x, y = 400, 200
        await player.send_mouse_down(0, im.quantize(x, 640), im.quantize(y, 360))  # held: a white box
        await streamer.wait_input(lambda _, m: isinstance(m, im.MouseDown), WAIT)
        await player.wait_frames(player.frames_received + 20, WAIT)
        frame = player.last_frame
        assert frame is not None
        luma = frame.to_ndarray(format="yuv420p")[:360]
        patch = luma[y - 2 : y + 3, x - 2 : x + 3].astype(int)
        assert patch.mean() > 200  # the colour bars never exceed 180


@pytest.mark.parametrize(
    "answer_fields",
    [{}, {"minBitrateBps": 0, "maxBitrateBps": 0}, {"minBitrate": 100000, "maxBitrate": 5000000}],
    ids=["no-bitrates", "ue5.5+", "ue5.4"],
)
async def test_answer_bitrate_fields_are_optional(
    server: SignalingServer, start_streamer: StartStreamer, answer_fields: dict[str, int]
) -> None:
    await start_streamer()
    async with SyntheticPlayer(player_url(server), answer_fields=answer_fields) as player:
        await player.wait_frames(5, WAIT)


async def test_player_waits_for_a_streamer_that_comes_later(
    server: SignalingServer, start_streamer: StartStreamer
) -> None:
    async with SyntheticPlayer(player_url(server), "Late") as player:
        await start_streamer("Late")
        await player.wait_frames(5, WAIT)


async def test_streamer_reconnects_after_server_restart(start_signaling: StartSignaling) -> None:
    first = await start_signaling(sfu_port=-1)
    ports = {"player_port": first.player_port, "streamer_port": first.streamer_port}
    streamer = SyntheticStreamer(
        f"ws://127.0.0.1:{first.streamer_port}", "Phoenix", 160, 120, 10, reconnect_min_s=0.1, reconnect_max_s=0.5
    )
    task = asyncio.create_task(streamer.run())
    try:
        await streamer.wait_identified(WAIT)
        await first.stop()
        second = await start_signaling(sfu_port=-1, **ports)
        await wait_until(lambda: streamer.connections >= 2, "a second connection")
        assert await streamer.wait_identified(WAIT) == "Phoenix"
        async with SyntheticPlayer(player_url(second), "Phoenix") as player:
            await player.wait_frames(5, WAIT)
    finally:
        await streamer.stop()
        await asyncio.wait_for(task, WAIT)


async def test_ice_servers_from_config_are_used(start_signaling: StartSignaling) -> None:
    # A TURN URL with an unsupported transport is skipped, so no network is needed,
    # but the conversion must not reject the string form of ``urls``.
    options = {"iceServers": [{"urls": "turn:127.0.0.1:9?transport=sctp", "username": "u", "credential": "c"}]}
    server = await start_signaling(sfu_port=-1, peer_connection_options=options)
    streamer = SyntheticStreamer(f"ws://127.0.0.1:{server.streamer_port}", "Cfg", 160, 120, 10)
    task = asyncio.create_task(streamer.run())
    try:
        await streamer.wait_identified(WAIT)
        assert streamer.peer_options == options
        async with SyntheticPlayer(player_url(server), "Cfg") as player:
            await player.wait_frames(3, WAIT)
    finally:
        await streamer.stop()
        await asyncio.wait_for(task, WAIT)


async def test_cli_streamer_runs_until_sigterm(server: SignalingServer, start_process: StartProcess) -> None:
    streamer = await start_process(
        "--url",
        f"ws://127.0.0.1:{server.streamer_port}",
        "--id",
        "FromCli",
        "--width",
        "160",
        "--height",
        "120",
        "--fps",
        "10",
        "--log-format",
        "json",
        module="streamer.synthetic",
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    await streamer.wait_until(lambda: server.core.streamer_by_id("FromCli") is not None, "the CLI streamer", WAIT)
    async with SyntheticPlayer(player_url(server), "FromCli") as player:
        await player.wait_frames(3, WAIT)
    assert await streamer.stop(signal.SIGTERM, WAIT) == 0, streamer.output(2000)


def test_cli_help() -> None:
    from streamer.synthetic import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0


async def test_stop_during_a_handshake_that_never_finishes() -> None:
    """A listener that accepts TCP but never answers the upgrade: stop() still ends run()."""
    accepted = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await reader.read()  # until the client gives up
        writer.close()

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    streamer = SyntheticStreamer(f"ws://127.0.0.1:{port}", "Stuck", 160, 120, 10)
    task = asyncio.create_task(streamer.run())
    try:
        await asyncio.wait_for(accepted.wait(), WAIT)
        await asyncio.wait_for(streamer.stop(), WAIT)
        await asyncio.wait_for(task, WAIT)  # returns normally, not cancelled
        assert streamer.connections == 0
    finally:
        task.cancel()
        listener.close()
        await listener.wait_closed()


async def test_stop_before_run_makes_run_return_at_once() -> None:
    streamer = SyntheticStreamer("ws://127.0.0.1:9", "Never", 160, 120, 10)
    await streamer.stop()
    await asyncio.wait_for(streamer.run(), WAIT)
    assert streamer.connections == 0
