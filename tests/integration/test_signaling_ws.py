"""The signalling server over real sockets, with raw WebSocket clients for every role."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from pixelfleet.net import free_port
from signaling import errors
from tests.conftest import StartProcess, StartSignaling
from tests.support.ws_peers import WAIT, Peer, connect_player, connect_streamer

pytestmark = pytest.mark.integration


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_full_handshake_over_sockets(start_signaling: StartSignaling, http: aiohttp.ClientSession) -> None:
    server = await start_signaling()
    s = await connect_streamer(http, server.streamer_port)
    p, pid = await connect_player(http, server.player_port, s)
    await s.send(type="offer", playerId=pid, sdp="v=0 offer")
    assert await p.recv() == {"type": "offer", "playerId": pid, "sdp": "v=0 offer"}
    await p.send(type="answer", sdp="v=0 answer", minBitrateBps=0, maxBitrateBps=0)
    assert await s.recv() == {
        "type": "answer",
        "sdp": "v=0 answer",
        "minBitrateBps": 0,
        "maxBitrateBps": 0,
        "playerId": pid,
    }
    cand = {"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host", "sdpMid": "0", "sdpMLineIndex": 0}
    for _ in range(3):
        await s.send(type="iceCandidate", playerId=pid, candidate=cand)
        await p.send(type="iceCandidate", candidate=cand)
    for _ in range(3):
        assert (await p.recv())["candidate"] == cand
        assert (await s.recv())["playerId"] == pid
    await p.ws.close()
    assert await s.recv_type("playerDisconnected") == {"type": "playerDisconnected", "playerId": pid}


async def test_two_players_on_one_streamer_and_two_streamers(
    start_signaling: StartSignaling, http: aiohttp.ClientSession
) -> None:
    server = await start_signaling()
    a = await connect_streamer(http, server.streamer_port, "A")
    b = await connect_streamer(http, server.streamer_port, "B")
    p1, id1 = await connect_player(http, server.player_port, a, "A")
    p2, id2 = await connect_player(http, server.player_port, a, "A")
    p3, id3 = await connect_player(http, server.player_port, b, "B")
    assert len({id1, id2, id3}) == 3
    await a.send(type="offer", playerId=id2, sdp="for p2")
    await b.send(type="offer", playerId=id3, sdp="for p3")
    assert (await p2.recv())["sdp"] == "for p2"
    assert (await p3.recv())["sdp"] == "for p3"
    await a.send(type="offer", playerId=id3, sdp="stolen")  # B's player: dropped
    await p3.still_served()


async def test_any_path_and_first_subprotocol(start_signaling: StartSignaling, http: aiohttp.ClientSession) -> None:
    server = await start_signaling()
    ws = await http.ws_connect(
        f"ws://127.0.0.1:{server.player_port}/some/path?StreamerId=x", protocols=("first", "second")
    )
    assert ws.protocol == "first"
    assert orjson.loads((await ws.receive()).data)["type"] == "config"
    await ws.close()


async def test_binary_json_frames_are_accepted(start_signaling: StartSignaling, http: aiohttp.ClientSession) -> None:
    server = await start_signaling()
    p, _ = await connect_player(http, server.player_port)
    await p.ws.send_bytes(b'{"type":"ping","time":7}')
    assert await p.recv() == {"type": "pong", "time": 7}


@pytest.mark.parametrize(
    "frame,code",
    [
        ("{not json", "invalid_json"),
        (b"\xff\xfe\x00binary", "invalid_json"),
        ("[1,2,3]", "invalid_message"),
        ('{"type":"subscribe"}', "invalid_message"),
        ('{"type":"subscribe","streamerId":5}', "invalid_message"),
        ('{"type":"noSuchType"}', "unknown_type"),
        ('{"type":"playerConnected","playerId":"Player0"}', "not_allowed"),
    ],
)
async def test_bad_input_gets_error_and_others_are_unaffected(
    start_signaling: StartSignaling, http: aiohttp.ClientSession, frame: str | bytes, code: str
) -> None:
    server = await start_signaling()
    s = await connect_streamer(http, server.streamer_port)
    good, good_id = await connect_player(http, server.player_port, s)
    bad, _ = await connect_player(http, server.player_port)
    await (bad.ws.send_bytes(frame) if isinstance(frame, bytes) else bad.ws.send_str(frame))
    err = await bad.recv()
    assert err["type"] == "error" and err["code"] == code
    await bad.still_served()
    await s.send(type="offer", playerId=good_id, sdp="still routed")
    assert (await good.recv())["sdp"] == "still routed"


async def test_text_frame_not_utf8_closes_1007_and_others_are_unaffected(
    start_signaling: StartSignaling, http: aiohttp.ClientSession
) -> None:
    """RFC 6455 8.1. The server reads frames as bytes (orjson checks UTF-8 while parsing),
    so this is its own check, on the error path only."""
    server = await start_signaling()
    s = await connect_streamer(http, server.streamer_port)
    good, good_id = await connect_player(http, server.player_port, s)
    bad, _ = await connect_player(http, server.player_port)
    await bad.ws.send_frame(b'{"type":"ping","time":"\xff"}', aiohttp.WSMsgType.TEXT)
    closing = await bad.ws.receive(timeout=10)
    assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 1007
    await s.send(type="offer", playerId=good_id, sdp="still routed")
    assert (await good.recv())["sdp"] == "still routed"


async def test_a_bug_handling_a_frame_closes_that_socket_1011_and_others_are_unaffected(
    start_signaling: StartSignaling, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frames run inside the socket's read: an exception there must cost its socket only."""
    server = await start_signaling()
    receive = server.core.receive

    def buggy(conn, obj):  # type: ignore[no-untyped-def]
        if obj.get("time") == 666:
            raise RuntimeError("a bug")
        return receive(conn, obj)

    monkeypatch.setattr(server.core, "receive", buggy)  # before the sockets: each binds it once
    s = await connect_streamer(http, server.streamer_port)
    good, good_id = await connect_player(http, server.player_port, s)
    bad, _ = await connect_player(http, server.player_port)
    await bad.send(type="ping", time=666)
    closing = await bad.ws.receive(timeout=10)
    assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == errors.INTERNAL_ERROR
    await s.send(type="offer", playerId=good_id, sdp="still routed")
    assert (await good.recv())["sdp"] == "still routed"
    await good.send(type="ping", time=1)
    assert await good.recv() == {"type": "pong", "time": 1}


async def test_bad_streamer_input_is_dropped_without_an_error_message(
    start_signaling: StartSignaling, http: aiohttp.ClientSession
) -> None:
    server = await start_signaling()
    s = await connect_streamer(http, server.streamer_port)
    await s.ws.send_str("{garbage")
    await s.send(type="offer", sdp="no player id")
    await s.send(type="iceCandidate", playerId="Ghost", candidate={"candidate": "c"})
    await s.send(type="ping", time=1)
    assert await s.recv() == {"type": "pong", "time": 1}  # nothing else was sent first


async def test_protocol_error_budget_closes_with_1008(
    start_signaling: StartSignaling, http: aiohttp.ClientSession
) -> None:
    server = await start_signaling(max_protocol_errors=3)
    s = await connect_streamer(http, server.streamer_port)
    bystander, bid = await connect_player(http, server.player_port, s)
    bad, _ = await connect_player(http, server.player_port)
    for _ in range(4):
        await bad.ws.send_str("nope")
    code, reason = await bad.closed()
    assert code == errors.POLICY_VIOLATION and "protocol errors" in reason
    await bystander.still_served()


async def test_oversized_frame_closes_with_1009(start_signaling: StartSignaling, http: aiohttp.ClientSession) -> None:
    server = await start_signaling(max_message_bytes=4096)
    s = await connect_streamer(http, server.streamer_port)
    bystander, bid = await connect_player(http, server.player_port, s)
    big, _ = await connect_player(http, server.player_port)
    await big.send(type="ping", time=1, pad="x" * 5000)
    code, _ = await big.closed()
    assert code == errors.MESSAGE_TOO_BIG
    await bystander.still_served()
    await s.still_served()


async def test_flood_closes_with_4429(start_signaling: StartSignaling, http: aiohttp.ClientSession) -> None:
    server = await start_signaling(player_rate=10.0, player_burst=20.0)
    s = await connect_streamer(http, server.streamer_port)
    bystander, _ = await connect_player(http, server.player_port, s)
    flooder, _ = await connect_player(http, server.player_port)
    for i in range(200):
        try:
            await flooder.send(type="ping", time=i)
        except (ConnectionError, aiohttp.ClientError):
            break
    code, reason = await flooder.closed()
    assert code == errors.RATE_LIMITED
    await bystander.still_served()


async def test_a_flooder_still_sending_gets_its_answers_and_4429_not_a_reset(
    http: aiohttp.ClientSession, start_process: StartProcess
) -> None:
    """Frames are read in the socket's read (signaling/ws_inbound.py), so the socket's task
    sits in receive() when the flood is cut: the close must still wait for the peer's close
    frame. Closing the transport at once reset a peer that was still sending, which then
    lost the answers already sent and the close code (close 1006). A server process of its
    own: in this process the client's sends and the server's reads would take turns."""
    ports = [free_port() for _ in range(2)]
    server = await start_process(
        "signaling", "--host", "127.0.0.1", "--player-port", str(ports[0]), "--streamer-port", str(ports[1]),
        "--sfu-port", "-1", "--player-rate", "10", "--player-burst", "50",
    )  # fmt: skip
    await server.wait_for_port(ports[0], WAIT)
    ws = await http.ws_connect(f"ws://127.0.0.1:{ports[0]}/", autoclose=False)
    sent = 0
    for i in range(2_000):  # as fast as the socket takes them, far past the burst
        try:
            await ws.send_str(orjson.dumps({"type": "ping", "time": i}).decode())
        except (ConnectionError, aiohttp.ClientError):
            break
        sent += 1
    kinds: list[str] = []
    while True:
        msg = await ws.receive(timeout=10)
        if msg.type is not aiohttp.WSMsgType.TEXT:
            break
        kinds.append(orjson.loads(msg.data)["type"])
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, errors.RATE_LIMITED), (msg, sent)
    assert kinds.count("pong") == 50  # every frame within the burst was answered


async def _raw_player_that_never_reads(port: int) -> socket.socket:
    """A player whose receive buffer is tiny and never drained: a slow reader."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += await loop.sock_recv(sock, 1)
    assert b" 101 " in head
    frame = orjson.dumps({"type": "subscribe", "streamerId": "Cam"})
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(frame))
    await loop.sock_sendall(sock, bytes([0x81, 0x80 | len(frame)]) + mask + masked)
    return sock


async def test_slow_reader_is_closed_and_does_not_stall_the_streamer(
    start_signaling: StartSignaling, http: aiohttp.ClientSession
) -> None:
    server = await start_signaling(send_queue_frames=8)
    s = await connect_streamer(http, server.streamer_port)
    fast, fast_id = await connect_player(http, server.player_port, s)
    slow = await _raw_player_that_never_reads(server.player_port)
    slow_id = (await s.recv_type("playerConnected"))["playerId"]
    sdp = "a" * 60_000
    try:
        for _ in range(400):  # far beyond kernel buffers plus the 8-frame queue
            await s.send(type="offer", playerId=slow_id, sdp=sdp)
            if server.core.player_by_id(slow_id) is None:
                break
            await asyncio.sleep(0)
        disconnected = await s.recv_type("playerDisconnected")
        assert disconnected["playerId"] == slow_id
        # The streamer and the other player never noticed.
        await s.send(type="offer", playerId=fast_id, sdp="hello")
        assert (await fast.recv_type("offer"))["sdp"] == "hello"
        await s.still_served()
    finally:
        slow.close()


async def test_disconnect_player_closes_with_1011(start_signaling: StartSignaling, http: aiohttp.ClientSession) -> None:
    server = await start_signaling()
    s = await connect_streamer(http, server.streamer_port)
    p, pid = await connect_player(http, server.player_port, s)
    await s.send(type="disconnectPlayer", playerId=pid, reason="kicked")
    code, reason = await p.closed()
    assert (code, reason) == (errors.INTERNAL_ERROR, "kicked")
    assert await s.recv_type("playerDisconnected") == {"type": "playerDisconnected", "playerId": pid}


async def test_streamer_leaving_closes_its_players(
    start_signaling: StartSignaling, http: aiohttp.ClientSession
) -> None:
    server = await start_signaling()
    a = await connect_streamer(http, server.streamer_port, "A")
    b = await connect_streamer(http, server.streamer_port, "B")
    pa, _ = await connect_player(http, server.player_port, a, "A")
    pb, _ = await connect_player(http, server.player_port, b, "B")
    await a.ws.close()
    code, _ = await pa.closed()
    assert code == errors.STREAMER_GONE
    await pb.still_served()
    await pb.send(type="listStreamers")
    assert (await pb.recv_type("streamerList"))["ids"] == ["B"]


async def test_sfu_port_speaks_the_sfu_role(start_signaling: StartSignaling, http: aiohttp.ClientSession) -> None:
    server = await start_signaling()
    s = await connect_streamer(http, server.streamer_port, "DefaultStreamer")
    assert server.sfu_port
    f = Peer(await http.ws_connect(f"ws://127.0.0.1:{server.sfu_port}/"))
    assert (await f.recv())["type"] == "identify"
    await f.send(type="endpointId", id="SFU")
    await f.recv_type("endpointIdConfirm")
    await f.send(type="subscribe", streamerId="DefaultStreamer")
    assert (await s.recv_type("playerConnected"))["sfu"] is True


async def test_an_sfus_streamer_leaving_closes_its_players_and_the_sfu_stays(
    start_signaling: StartSignaling, http: aiohttp.ClientSession
) -> None:
    server = await start_signaling()
    s = await connect_streamer(http, server.streamer_port, "DefaultStreamer")
    f = Peer(await http.ws_connect(f"ws://127.0.0.1:{server.sfu_port}/"))
    assert (await f.recv())["type"] == "identify"
    await f.send(type="endpointId", id="SFU")
    await f.recv_type("endpointIdConfirm")
    await f.send(type="subscribe", streamerId="DefaultStreamer")
    await s.recv_type("playerConnected")
    viewer, viewer_id = await connect_player(http, server.player_port, f, "SFU")  # watches through the SFU
    await s.ws.close()
    assert await f.recv() == {"type": "streamerDisconnected"}
    assert await f.recv() == {"type": "playerDisconnected", "playerId": viewer_id}
    assert (await viewer.closed())[0] == errors.STREAMER_GONE
    await f.still_served()


async def test_rest_api_and_player_page(start_signaling: StartSignaling, http: aiohttp.ClientSession) -> None:
    server = await start_signaling()
    s = await connect_streamer(http, server.streamer_port)
    player, _ = await connect_player(http, server.player_port, s)
    base = f"http://127.0.0.1:{server.player_port}"
    async with http.get(f"{base}/api/status") as r:
        status = await r.json()
    assert status["streamer_count"] == 1 and status["player_count"] == 1
    assert status["cluster"] == {"streamer_count": 1, "player_count": 1, "nodes": 1}  # one node: its own
    async with http.get(f"{base}/api/streamers/Cam") as r:
        assert (await r.json())["subscribers"][0]["playerId"] == "Player0"
    async with http.get(f"{base}/api/streamers/Nope") as r:
        assert r.status == 404
    async with http.get(f"{base}/api/players") as r:
        assert (await r.json()) == [{"playerId": "Player0", "type": "Player", "subscribedTo": "Cam"}]
    async with http.get(f"{base}/") as r:
        assert r.status == 200 and "<html" in (await r.text()).lower()
    async with http.get(f"{base}/../../etc/passwd") as r:
        assert r.status == 404


async def test_sigterm_tells_peers_and_exits_cleanly(http: aiohttp.ClientSession, start_process: StartProcess) -> None:
    ports = [free_port() for _ in range(3)]
    server = await start_process(
        "signaling",
        "--host",
        "127.0.0.1",
        "--player-port",
        str(ports[0]),
        "--streamer-port",
        str(ports[1]),
        "--sfu-port",
        str(ports[2]),
        "--log-format",
        "json",
    )
    await server.wait_for_port(ports[1], WAIT)
    s = Peer(await http.ws_connect(f"ws://127.0.0.1:{ports[1]}/"))
    assert (await s.recv())["type"] == "identify"
    server.send(signal.SIGTERM)
    code, reason = await s.closed()
    assert code == errors.SERVICE_RESTART and "shutting down" in reason
    assert await server.wait(WAIT) == 0
    assert '"event":"signaling_stopped"' in server.output(None)


async def test_keepalive_closes_silent_peers_and_keeps_answering_ones(
    start_signaling: StartSignaling, http: aiohttp.ClientSession
) -> None:
    server = await start_signaling(keepalive_s=0.3)
    answering = await http.ws_connect(f"ws://127.0.0.1:{server.player_port}/", autoping=True)
    received: list[aiohttp.WSMessage] = []

    async def keep_reading() -> None:  # reading is what makes aiohttp's client answer pings
        while True:
            received.append(await answering.receive())
            if received[-1].type is not aiohttp.WSMsgType.TEXT:
                return

    reading = asyncio.create_task(keep_reading())
    silent = Peer(await http.ws_connect(f"ws://127.0.0.1:{server.player_port}/", autoping=False))
    assert (await silent.recv())["type"] == "config"
    saw_ping = False
    while True:  # the silent peer gets a ping, does not answer, and is closed
        msg = await asyncio.wait_for(silent.ws.receive(), WAIT)
        if msg.type is aiohttp.WSMsgType.PING:
            saw_ping = True
            continue
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert (msg.data, msg.extra) == (errors.KEEPALIVE_TIMEOUT, "keepalive timeout")
        break
    assert saw_ping
    await asyncio.sleep(1.0)  # more keepalive periods: the answering peer is pinged, never closed
    assert not reading.done() and not answering.closed
    assert [orjson.loads(r.data)["type"] for r in received] == ["config"]
    reading.cancel()


async def test_client_pings_are_answered(start_signaling: StartSignaling, http: aiohttp.ClientSession) -> None:
    server = await start_signaling()
    ws = await http.ws_connect(f"ws://127.0.0.1:{server.player_port}/", autoping=False)
    await ws.ping(b"hello")
    while True:
        msg = await asyncio.wait_for(ws.receive(), WAIT)
        if msg.type is aiohttp.WSMsgType.PONG:
            assert msg.data == b"hello"
            break
    await ws.close()
