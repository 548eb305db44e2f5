"""The Spot interruption notice: parsing, and the poller against a stand-in IMDS on
loopback serving the documented answers, then garbage."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from gpu_agent.drain import SpotNotice, SpotWatcher, parse_instance_action


def test_documented_notice() -> None:
    n = parse_instance_action(b'{"action": "terminate", "time": "2026-11-27T08:22:00Z"}')
    assert n == SpotNotice(action="terminate", time=dt.datetime(2026, 11, 27, 8, 22, tzinfo=dt.UTC))
    assert n.seconds_left(now=n.time.timestamp() - 120) == 120


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<html>proxy error</html>",
        b"\xff\xfe",
        b"[]",
        b'"terminate"',
        b'{"action": "explode", "time": "2026-11-27T08:22:00Z"}',
        b'{"action": "stop"}',
        b'{"action": "stop", "time": 5}',
        b'{"action": "stop", "time": "soon"}',
    ],
)
def test_garbage_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError):
        parse_instance_action(body)


class Imds:
    def __init__(self) -> None:
        self.answer: tuple[int, bytes] = (404, b"")
        self.token_answer: tuple[int, str] = (200, "tok-1")
        self.tokens_issued = 0
        self.expire_next = False

    def app(self) -> web.Application:
        async def token(request: web.Request) -> web.Response:
            self.tokens_issued += 1
            status, text = self.token_answer
            return web.Response(status=status, text=text)

        async def action(request: web.Request) -> web.Response:
            if self.expire_next or request.headers.get("X-aws-ec2-metadata-token") != self.token_answer[1]:
                self.expire_next = False
                return web.Response(status=401)
            status, body = self.answer
            return web.Response(status=status, body=body)

        app = web.Application()
        app.router.add_put("/latest/api/token", token)
        app.router.add_get("/latest/meta-data/spot/instance-action", action)
        return app


@pytest.fixture
async def imds(aiohttp_server) -> AsyncIterator[tuple[Imds, str]]:  # type: ignore[no-untyped-def]
    stand_in = Imds()
    server = await aiohttp_server(stand_in.app())
    yield stand_in, f"http://127.0.0.1:{server.port}"


async def test_poller_quiet_then_garbage_then_notice(imds: tuple[Imds, str]) -> None:
    stand_in, url = imds
    notices: list[SpotNotice] = []
    w = SpotWatcher(url, notices.append, poll_s=0.01)
    assert await w.poll() is None and w.garbage == 0  # 404: nothing scheduled
    for status, body in [(200, b"not json"), (200, b'{"action": "reboot"}'), (500, b"oops"), (200, b"{" * 70000)]:
        stand_in.answer = (status, body)
        assert await w.poll() is None
    assert w.garbage == 4 and not notices
    stand_in.expire_next = True  # a 401: the token is fetched again
    stand_in.answer = (200, b'{"action": "hibernate", "time": "2026-11-27T08:22:00Z"}')
    notice = await w.poll()
    assert notice is not None and notice.action == "hibernate" and stand_in.tokens_issued == 2
    w.start()
    for _ in range(500):
        if notices:
            break
        await __import__("asyncio").sleep(0.01)
    assert len(notices) == 1 and w.notice == notices[0]
    await w.aclose()


async def test_bad_token_endpoint_and_no_imds(imds: tuple[Imds, str]) -> None:
    stand_in, url = imds
    stand_in.token_answer = (403, "")
    w = SpotWatcher(url, lambda _: None)
    assert await w.poll() is None and w.garbage == 1
    await w.aclose()
    nowhere = SpotWatcher("http://127.0.0.1:9", lambda _: None, timeout_s=0.5)
    assert await nowhere.poll() is None and nowhere.unreachable == 1
    await nowhere.aclose()
