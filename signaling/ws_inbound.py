"""Data frames from aiohttp's frame parser straight to the node, inside the socket's read.

aiohttp's parser puts each message on a queue and wakes the socket's task, which takes it
back out through ``WebSocketResponse.receive()``: a task step, a future and a coroutine
chain per frame, about a tenth of a relay's CPU here (``loadtest/bench_signaling.py
--profile``). ``TapResponse`` gives the parser a queue (``DataTap``) that hands text and
binary messages to the connection's ``Inbound`` at once, in the transport's
``data_received``; pings, pongs, close frames and errors still take aiohttp's queue to
the socket's task, which answers pings and sees the close.

The swap uses aiohttp's internals (the response's ``_reader``/``_parser``, the protocol's
payload parser), so it is made only where they are as expected (aiohttp 3.13+ with its
``decode_text`` reader) and only on a socket whose upgrade request came alone (a client
that sent frames before the 101, which RFC 6455 4.1 forbids, had them parsed already);
anywhere else ``tap`` stays None and frames come through ``receive()`` into the same
``Inbound``. ``tests/unit/test_ws_inbound.py`` says which path the installed aiohttp takes.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from aiohttp import WSMessage, WSMsgType, web

from signaling import errors

if TYPE_CHECKING:
    from signaling.join_trace import PlayerTrace
    from signaling.protocol import Claim
    from signaling.ws import Connection, SignalingNode

try:  # the parser's queue type and the parser (compiled where aiohttp ships its extension)
    from aiohttp._websocket import reader as _parsing
except ImportError:  # pragma: no cover - an aiohttp without them: aiohttp's own path
    _parsing = None  # type: ignore[assignment]

log = structlog.get_logger("signaling")

_TEXT, _BINARY = WSMsgType.TEXT, WSMsgType.BINARY
_QUEUE_LIMIT = 2**16  # aiohttp's own for the control frames that still queue
_HELD_LIMIT = 1024  # frames held while a streamer's id claim is in flight
_WAKE = WSMessage(WSMsgType.CONTINUATION, None, None)  # never a whole message: only ours


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


if _parsing is not None:

    class DataTap(_parsing.WebSocketDataQueue):
        """The parser's queue: data messages go to ``on_data``, everything else queues."""

        def __init__(self, protocol: Any, loop: asyncio.AbstractEventLoop) -> None:
            super().__init__(protocol, _QUEUE_LIMIT, loop=loop)
            self.on_data: Callable[[Any, WSMsgType], None] = self._hold
            self._early: list[tuple[Any, WSMsgType]] | None = []

        def feed_data(self, data: Any, size: int) -> None:
            kind = data[0]
            if kind is _TEXT or kind is _BINARY:
                self.on_data(data[1], kind)
            else:
                super().feed_data(data, size)

        def _hold(self, payload: Any, kind: WSMsgType) -> None:
            assert self._early is not None
            self._early.append((payload, kind))

        def wake(self) -> None:
            """Have the socket's task return from ``receive()``: a close we start must find it
            out of there, or aiohttp closes the transport without waiting for the peer's close
            frame (and a peer still sending then gets a reset, not our close code)."""
            super().feed_data(_WAKE, 0)

        def attach(self, on_data: Callable[[Any, WSMsgType], None]) -> None:
            """From now on data goes to ``on_data``; what came before goes first."""
            early, self._early = self._early or [], None
            self.on_data = on_data
            for payload, kind in early:
                on_data(payload, kind)

else:  # pragma: no cover
    DataTap = None  # type: ignore[misc]


class TapResponse(web.WebSocketResponse):
    """aiohttp's WebSocket response with its parser's queue swapped for a ``DataTap``."""

    tap: DataTap | None = None

    def _post_start(self, request: web.BaseRequest, protocol: str | None, writer: Any) -> None:
        handler = request.protocol
        alone = _parsing is not None and not getattr(handler, "_message_tail", b"x")
        super()._post_start(request, protocol, writer)
        if not alone or self._compress or getattr(handler, "_payload_parser", None) is not self._parser:
            return
        try:
            tap = DataTap(handler, asyncio.get_running_loop())
            parser = _parsing.WebSocketReader(tap, self._max_msg_size, compress=False, decode_text=False)
        except (TypeError, AttributeError):  # pragma: no cover - another aiohttp's internals
            return
        self._reader, self._parser = tap, parser
        handler._payload_parser = parser  # noqa: SLF001 - aiohttp has no hook for it
        self.tap = tap


class Inbound:
    """One socket's data frames, in order: rate check, parse, the core, its actions.

    Called from the tap (inside the transport's read) or from the socket's task. A
    streamer's id claim (a cluster) is awaited in a task of its own, and the frames that
    come meanwhile are held and run after it, as they would have waited for the task.
    """

    __slots__ = (
        "_node",
        "_conn",
        "_connection",
        "_role",
        "_take",
        "_now",
        "_run",
        "_receive",
        "traced",
        "held",
        "stopped",
        "claimer",
        "wake",
    )

    def __init__(
        self, node: SignalingNode, connection: Connection, take: Callable[[float], bool], traced: PlayerTrace | None
    ) -> None:
        self._node = node
        self._conn = connection.conn
        self._connection = connection
        self._role = connection.role
        self._take = take
        self._now = asyncio.get_running_loop().time
        self._run = node.run  # bound once: both are called for every frame
        self._receive = node.core.receive
        self.traced = traced
        self.held: collections.deque[tuple[Any, WSMsgType]] | None = None  # while a claim is in flight
        self.stopped = False  # closed by us: nothing more is read
        self.claimer: asyncio.Task[None] | None = None
        self.wake: Callable[[], None] | None = None  # the tap's, where frames come from it

    def start(self, claims: list[Claim]) -> None:
        """The greeting's claims (a cluster streamer's first id), before any frame runs."""
        if claims:
            self._claim_then_go_on(claims)

    def on_data(self, payload: Any, kind: WSMsgType) -> None:
        if self.stopped:
            return
        if not self._take(self._now()):
            self._node.stats.rate_limited[self._role] += 1
            self.stop(errors.RATE_LIMITED, "message rate limit exceeded")
            return
        held = self.held
        if held is not None:
            if len(held) >= _HELD_LIMIT:
                self.stop(errors.POLICY_VIOLATION, "too many frames before the streamer id was settled")
                return
            held.append((payload, kind))
            return
        try:
            claims = self._one(payload, kind)
        except Exception:  # noqa: BLE001 - a bug must cost this socket only, and be seen
            self._failed()
            return
        if claims:
            self._claim_then_go_on(claims)

    def stop(self, code: int, reason: str) -> None:
        """Close the socket for what it sent. The socket's task leaves its loop first (woken,
        it runs before the close's own task), so the close waits for the peer's close frame
        as it did when that task read every frame itself."""
        self.stopped = True
        self.held = None
        if self.wake is not None:
            self.wake()
        self._connection.close(code, reason)

    def _failed(self) -> None:
        log.exception("frame_failed", conn=self._conn, role=self._role.value)
        self.stop(errors.INTERNAL_ERROR, "internal error")

    def _one(self, payload: Any, kind: WSMsgType) -> list[Claim]:
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            if kind is _TEXT and type(payload) is bytes and not _is_utf8(payload):  # RFC 6455 8.1
                self.stop(errors.INVALID_TEXT, "text frame is not valid UTF-8")
                return []
            self._run(self._node.core.reject(self._conn, "frame is not valid UTF-8 JSON"))
            return []
        claims = self._run(self._receive(self._conn, obj))
        traced = self.traced
        if traced is not None and traced.waiting:  # a traced player, until its answer
            traced.saw(obj)
        return claims

    def _claim_then_go_on(self, claims: list[Claim]) -> None:
        self.held = collections.deque()
        self.claimer = asyncio.create_task(self._claims(claims), name=f"claim-{self._conn}")

    async def _claims(self, claims: list[Claim]) -> None:
        try:
            while claims:
                await self._node.claim(claims)
                claims = []
                while not claims and self.held and not self.stopped:
                    claims = self._one(*self.held.popleft())
        except Exception:  # noqa: BLE001 - as in on_data
            self._failed()
        finally:
            if not self.stopped:
                self.held = None
