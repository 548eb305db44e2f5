"""The tap that takes data frames from aiohttp's parser straight to the node
(signaling/ws_inbound.py) is in place on the installed aiohttp: if an aiohttp upgrade
changes the internals it uses, these tests say so (the server would still work, through
``receive()``, but slower)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer

from signaling.ws_inbound import TapResponse


async def _serve(handler: Any) -> TestClient:  # type: ignore[type-arg]
    app = web.Application()
    app.router.add_get("/", handler)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


async def _tapped(request: web.Request) -> TapResponse:
    ws = TapResponse(autoping=False, compress=False, decode_text=False)
    await ws.prepare(request)
    assert ws.tap is not None, "the installed aiohttp's internals are not as ws_inbound expects"
    return ws


async def test_data_frames_arrive_in_order_without_the_task_reading_and_control_frames_still_queue() -> None:
    got: list[tuple[Any, WSMsgType]] = []
    ready: asyncio.Future[TapResponse] = asyncio.get_running_loop().create_future()
    release: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = await _tapped(request)
        assert ws.tap is not None
        ws.tap.attach(lambda payload, kind: got.append((payload, kind)))
        ready.set_result(ws)
        await release  # the task reads nothing while the data frames arrive
        msg = await ws.receive()
        assert msg.type is WSMsgType.PING and msg.data == b"hi"  # control frames take aiohttp's queue
        await ws.close()
        return ws

    client = await _serve(handler)
    try:
        ws = await client.ws_connect("/")
        await ready
        for i in range(50):
            await ws.send_str(f'{{"n":{i}}}')
        await ws.send_bytes(b'{"n":"binary"}')
        await ws.ping(b"hi")
        for _ in range(200):
            if len(got) == 51:
                break
            await asyncio.sleep(0.01)
        assert got == [(f'{{"n":{i}}}'.encode(), WSMsgType.TEXT) for i in range(50)] + [
            (b'{"n":"binary"}', WSMsgType.BINARY)
        ]
        release.set_result(None)
        closing = await ws.receive()
        assert closing.type is aiohttp.WSMsgType.CLOSE
    finally:
        await client.close()


async def test_frames_before_attach_are_handed_over_first() -> None:
    got: list[bytes] = []
    attach: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = await _tapped(request)
        await attach
        assert ws.tap is not None
        ws.tap.attach(lambda payload, kind: got.append(payload))
        await done
        await ws.close()
        return ws

    client = await _serve(handler)
    try:
        ws = await client.ws_connect("/")
        await ws.send_str("early")
        await asyncio.sleep(0.1)
        attach.set_result(None)
        await asyncio.sleep(0.05)
        await ws.send_str("late")
        for _ in range(200):
            if len(got) == 2:
                break
            await asyncio.sleep(0.01)
        assert got == [b"early", b"late"]
        done.set_result(None)
        await ws.close()
    finally:
        await client.close()
