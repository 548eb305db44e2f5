"""The ceiling for the signalling benchmark: the least server that can run it.

aiohttp + uvloop + orjson and nothing else: it answers `endpointId`, `listStreamers`
and `subscribe`, stamps `playerId` on what players send, and routes what streamers
send by `playerId`. No validation, logging, limits or keepalive, so whatever it
achieves on a machine is what the stack itself allows there.

    python -m loadtest.bare_relay --host 127.0.0.1 --player-port 18080 --streamer-port 18888
"""

from __future__ import annotations

import argparse
import asyncio
import itertools

import orjson
import uvloop
from aiohttp import WSMsgType, web

TEXT = WSMsgType.TEXT
ROUTED = frozenset(("offer", "answer", "iceCandidate"))
streamers: dict[str, web.WebSocketResponse] = {}
players: dict[str, web.WebSocketResponse] = {}
_ids = itertools.count()


def _ws() -> web.WebSocketResponse:
    return web.WebSocketResponse(compress=False, decode_text=False, max_msg_size=1 << 20)


async def streamer_handler(request: web.Request) -> web.WebSocketResponse:
    ws = _ws()
    await ws.prepare(request)
    await ws.send_frame(b'{"type":"identify"}', TEXT)
    sid = ""
    try:
        async for msg in ws:
            m = orjson.loads(msg.data)
            t = m.get("type")
            if t in ROUTED:  # streamer -> player: route by playerId, forward as is
                p = players.get(m.get("playerId"))
                if p is not None:
                    await p.send_frame(msg.data, TEXT)
            elif t == "endpointId":
                sid = m.get("id") or f"UnknownStreamer{next(_ids)}"
                streamers[sid] = ws
                await ws.send_frame(orjson.dumps({"type": "endpointIdConfirm", "committedId": sid}), TEXT)
    finally:
        if streamers.get(sid) is ws:
            del streamers[sid]
    return ws


async def player_handler(request: web.Request) -> web.WebSocketResponse:
    ws = _ws()
    await ws.prepare(request)
    pid = f"Player{next(_ids)}"
    players[pid] = ws
    streamer: web.WebSocketResponse | None = None
    try:
        async for msg in ws:
            m = orjson.loads(msg.data)
            t = m.get("type")
            if t in ROUTED:  # player -> its streamer, playerId stamped
                if streamer is not None:
                    m["playerId"] = pid
                    await streamer.send_frame(orjson.dumps(m), TEXT)
            elif t == "listStreamers":
                await ws.send_frame(orjson.dumps({"type": "streamerList", "ids": list(streamers)}), TEXT)
            elif t == "subscribe":
                streamer = streamers.get(m.get("streamerId"))
                if streamer is not None:
                    msg_out = {"type": "playerConnected", "playerId": pid, "dataChannel": True, "sfu": False}
                    await streamer.send_frame(orjson.dumps(msg_out), TEXT)
    finally:
        del players[pid]
    return ws


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--player-port", type=int, default=18080)
    ap.add_argument("--streamer-port", type=int, default=18888)
    args = ap.parse_args(argv)

    async def serve() -> None:
        handlers = ((args.player_port, player_handler), (args.streamer_port, streamer_handler))
        runners = []
        for port, handler in handlers:
            app = web.Application()
            app.router.add_get("/{tail:.*}", handler)
            runner = web.AppRunner(app, access_log=None, handle_signals=True)
            await runner.setup()
            await web.TCPSite(runner, args.host, port).start()
            runners.append(runner)
        try:
            await asyncio.Event().wait()  # until SIGINT/SIGTERM cancels us
        finally:
            for r in runners:
                await r.cleanup()

    try:
        uvloop.run(serve())
    except (KeyboardInterrupt, web.GracefulExit):
        pass


if __name__ == "__main__":
    main()
