"""Why a host drains, and the EC2 Spot interruption notice.

Three triggers: SIGTERM (the agent is being stopped), an operator's drain (the
matchmaker's heartbeat reply says ``draining``), and a Spot interruption notice from
the instance metadata service. ``SpotWatcher`` polls
``/latest/meta-data/spot/instance-action`` with an IMDSv2 session token: 404 means
nothing is scheduled; 200 carries ``{"action": "terminate"|"stop"|"hibernate",
"time": "2026-11-27T08:22:00Z"}``, two minutes ahead. An answer that is not that
(garbage, a proxy's HTML page, a bad time) is counted and logged, never acted on.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import structlog

log = structlog.get_logger("gpu_agent.drain")

TOKEN_PATH = "/latest/api/token"
ACTION_PATH = "/latest/meta-data/spot/instance-action"
TOKEN_TTL_S = 21600
SPOT_ACTIONS = ("terminate", "stop", "hibernate")


class DrainReason(enum.StrEnum):
    SIGTERM = "sigterm"
    ADMIN = "admin"
    SPOT = "spot"


@dataclass(frozen=True, slots=True)
class SpotNotice:
    action: str
    time: dt.datetime  # UTC

    def seconds_left(self, now: float | None = None) -> float:
        return self.time.timestamp() - (time.time() if now is None else now)


def parse_instance_action(body: bytes) -> SpotNotice:
    """The 200 body of ``spot/instance-action``; ValueError for anything else."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    action, when = data.get("action"), data.get("time")
    if action not in SPOT_ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    if not isinstance(when, str):
        raise ValueError("no time")
    try:
        moment = dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"bad time {when!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return SpotNotice(action=action, time=moment.astimezone(dt.UTC))


class SpotWatcher:
    """Polls IMDS until a valid notice arrives, then calls ``on_notice`` once and stops."""

    def __init__(
        self, imds_url: str, on_notice: Callable[[SpotNotice], None], *, poll_s: float = 5.0, timeout_s: float = 2.0
    ) -> None:
        self.base = imds_url.rstrip("/")
        self.on_notice = on_notice
        self.poll_s = poll_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._http: aiohttp.ClientSession | None = None
        self._token: str | None = None
        self._token_until = 0.0
        self.polls = 0
        self.garbage = 0
        self.unreachable = 0
        self.notice: SpotNotice | None = None
        self._task: asyncio.Task[None] | None = None

    async def _get_token(self) -> str:
        if self._token is None or time.monotonic() > self._token_until:
            assert self._http is not None
            async with self._http.put(
                self.base + TOKEN_PATH, headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_S)}
            ) as r:
                if r.status != 200:
                    raise ValueError(f"token request answered {r.status}")
                token = (await r.text()).strip()
            if not token or len(token) > 4096:
                raise ValueError("empty or oversized token")
            self._token, self._token_until = token, time.monotonic() + TOKEN_TTL_S - 60
        return self._token

    async def poll(self) -> SpotNotice | None:
        """One look. None: nothing scheduled, IMDS unreachable, or garbage (counted)."""
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=self._timeout)
        self.polls += 1
        try:
            for _ in range(2):  # a 401 means the token expired early: fetch one more
                token = await self._get_token()
                async with self._http.get(self.base + ACTION_PATH, headers={"X-aws-ec2-metadata-token": token}) as r:
                    status, body = r.status, await _bounded_body(r)
                if status != 401:
                    break
                self._token = None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.unreachable += 1
            if self.unreachable == 1:
                log.info("imds_unreachable", url=self.base, error=f"{type(exc).__name__}: {exc}")
            return None
        except ValueError as exc:
            self.garbage += 1
            log.warning("imds_garbage", error=str(exc))
            return None
        if status == 404:
            return None
        if status != 200:
            self.garbage += 1
            log.warning("imds_garbage", status=status)
            return None
        try:
            return parse_instance_action(body)
        except ValueError as exc:
            self.garbage += 1
            log.warning("imds_garbage", error=str(exc), body=body[:120].decode(errors="replace"))
            return None

    async def _run(self) -> None:
        while self.notice is None:
            notice = await self.poll()
            if notice is not None:
                self.notice = notice
                log.warning(
                    "spot_interruption_notice",
                    action=notice.action,
                    time=notice.time.isoformat(),
                    seconds_left=round(notice.seconds_left(), 1),
                )
                self.on_notice(notice)
                return
            await asyncio.sleep(self.poll_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="spot-watcher")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._http is not None:
            await self._http.close()


async def _bounded_body(r: aiohttp.ClientResponse, limit: int = 64 * 1024) -> bytes:
    """The whole body, at most ``limit`` bytes: ``read(n)`` alone returns what has arrived."""
    body = b""
    async for chunk in r.content.iter_any():
        body += chunk
        if len(body) >= limit:
            return body[:limit]
    return body
