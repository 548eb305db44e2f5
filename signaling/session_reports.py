"""Signalling's connect and leave reports to the matchmaker over HTTP, batched.

Reports queue here and go out together in ``POST /api/v1/sessions/events`` (each item
with its session's own token): a batch leaves once ``batch_max`` reports wait, or
``linger_s`` after the first one came, whichever is first. One batch is in flight at a
time, so one session's reports reach the matchmaker in the order they were made (the
matchmaker applies one session's items of a batch in list order).

Only a 5xx or no answer is retried (the whole batch, or the items answered 5xx); any
other answer is final, a 410 (the session has ended) included, and is logged per item.
A matchmaker without the batch route (404: older than it) is remembered, and every
report then goes alone to ``POST /api/v1/sessions/{id}/events`` as before. ``aclose``
sends what is still queued before it returns (for 5 s at most).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from dataclasses import dataclass

import aiohttp
import msgspec
import structlog

from pixelfleet.tokens import SessionClaims

log = structlog.get_logger("signaling")

BATCH_BYTES = 60_000  # a batch's body stays under the matchmaker's 64 KiB limit
MAX_BATCH = 256  # the matchmaker's bound on items per batch
_BATCH_PATH = "/api/v1/sessions/events"


@dataclass(slots=True)
class _Report:
    event: str
    session_id: str
    token: str
    item: bytes  # its JSON item in the batch body
    done: asyncio.Future[None]


class _Outcome(msgspec.Struct):
    status: int
    error: str | None = None
    end_reason: str | None = None


class _Results(msgspec.Struct):
    results: list[_Outcome]


class _Ended(msgspec.Struct):
    end_reason: str | None = None


def end_reason(raw: bytes) -> str | None:
    """The ``end_reason`` of the matchmaker's 410 body (signalling does not import its models)."""
    try:
        return msgspec.json.decode(raw, type=_Ended).end_reason
    except msgspec.DecodeError:
        return None


class HttpReporter:
    """Reports to the matchmaker at ``base_url``, authenticated by each session's token.

    ``batch_max`` 1 sends every report alone (the single route); ``linger_s`` is how long
    the first queued report waits for others (PIXELFLEET_REPORT_BATCH_MAX and
    PIXELFLEET_REPORT_LINGER_S)."""

    def __init__(
        self,
        base_url: str,
        *,
        attempts: int = 3,
        timeout_s: float = 2.0,
        report_token: str | None = None,
        batch_max: int = 64,
        linger_s: float = 0.05,
    ) -> None:
        # The report token tells the matchmaker a connect/disconnect comes from signalling,
        # not from a player holding its own session token (PIXELFLEET_REPORT_TOKEN).
        self._report = {"X-Pixelfleet-Report-Token": report_token} if report_token else {}
        self._base = base_url.rstrip("/")
        self._attempts = max(1, attempts)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._http: aiohttp.ClientSession | None = None
        self._batch_max = min(MAX_BATCH, max(1, batch_max))
        self._linger_s = max(0.0, linger_s)
        self.batches = self._batch_max > 1  # False: the single route (set, or the matchmaker lacks the batch one)
        self._queue: collections.deque[_Report] = collections.deque()
        self._sender: asyncio.Task[None] | None = None
        self._full = asyncio.Event()
        self._closing = False

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=self._timeout)
        return self._http

    async def report(self, event: str, claims: SessionClaims, token: str) -> None:
        """Returns once the matchmaker has answered the report (any final answer);
        ``ConnectionError`` when it never did."""
        if not self.batches:
            await self._single(event, claims.session_id, token)
            return
        item = msgspec.json.encode({"session_id": claims.session_id, "token": token, "event": event})
        done = asyncio.get_running_loop().create_future()
        self._queue.append(_Report(event, claims.session_id, token, item, done))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_queued())
        elif len(self._queue) >= self._batch_max:
            self._full.set()
        await done

    async def _send_queued(self) -> None:
        batch: list[_Report] = []
        try:
            while self._queue:
                if len(self._queue) < self._batch_max and self._linger_s and not self._closing:
                    self._full.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), self._linger_s)
                batch = self._take()
                await self._send(batch)
        finally:  # cancelled (a close that could not wait longer): nobody waits forever
            for r in [*batch, *self._queue]:
                _settle(r, ConnectionError(f"the {r.event} report was not sent: signalling is closing"))
            self._queue.clear()

    def _take(self) -> list[_Report]:
        batch = [self._queue.popleft()]
        size = len(batch[0].item)
        while self._queue and len(batch) < self._batch_max and size + len(self._queue[0].item) + 1 <= BATCH_BYTES:
            batch.append(self._queue.popleft())
            size += len(batch[-1].item) + 1
        return batch

    async def _send(self, batch: list[_Report]) -> None:
        pending = batch
        for attempt in range(self._attempts):
            if not self.batches:
                await self._alone(pending)
                return
            status, raw = await self._post(pending)
            if status in (404, 405):  # a matchmaker older than the batch route
                self.batches = False
                log.info("session_reports_single", reason="the matchmaker has no batch route", status=status)
                await self._alone(pending)
                return
            if status is not None and status < 500:
                pending = self._answered(pending, status, raw)
                if not pending:
                    return
            await asyncio.sleep(0.2 * 2**attempt)
        for r in pending:
            _settle(r, ConnectionError(f"matchmaker did not take the {r.event} report"))

    async def _post(self, batch: list[_Report]) -> tuple[int | None, bytes]:
        body = b'{"events":[' + b",".join(r.item for r in batch) + b"]}"
        headers = {"Content-Type": "application/json", **self._report}
        try:
            async with self._session().post(self._base + _BATCH_PATH, data=body, headers=headers) as r:
                return r.status, await r.read()
        except (aiohttp.ClientError, TimeoutError):
            return None, b""

    def _answered(self, batch: list[_Report], status: int, raw: bytes) -> list[_Report]:
        """Settle what the answer settles; the items answered 5xx are left to retry."""
        if status != 200:  # the whole batch refused (its body or the report token): final
            log.warning(
                "session_reports_refused", status=status, reports=len(batch), detail=raw[:200].decode("replace")
            )
            for r in batch:
                _settle(r)
            return []
        try:
            results = msgspec.json.decode(raw, type=_Results).results
        except msgspec.DecodeError:
            results = []
        if len(results) != len(batch):
            log.warning("session_reports_unreadable", reports=len(batch), detail=raw[:200].decode("replace"))
            for r in batch:
                _settle(r)
            return []
        retry = []
        for r, outcome in zip(batch, results, strict=True):
            if outcome.status >= 500:
                retry.append(r)
                continue
            _logged(r.event, r.session_id, outcome.status, outcome.error, outcome.end_reason)
            _settle(r)
        return retry

    async def _alone(self, batch: list[_Report]) -> None:
        """Each report on the single route: one session's in order, sessions side by side."""
        by_session: dict[str, list[_Report]] = {}
        for r in batch:
            by_session.setdefault(r.session_id, []).append(r)

        async def in_order(reports: list[_Report]) -> None:
            for r in reports:
                try:
                    await self._single(r.event, r.session_id, r.token)
                except ConnectionError as exc:
                    _settle(r, exc)
                else:
                    _settle(r)

        await asyncio.gather(*(in_order(reports) for reports in by_session.values()))

    async def _single(self, event: str, session_id: str, token: str) -> None:
        """POST ``/api/v1/sessions/{id}/events`` alone, with the token as its bearer."""
        url = f"{self._base}/api/v1/sessions/{session_id}/events"
        for attempt in range(self._attempts):
            try:
                async with self._session().post(
                    url,
                    data=msgspec.json.encode({"event": event}),
                    headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json", **self._report},
                ) as r:
                    if r.status < 500:  # an answer: final, 410 (the session has ended) included
                        reason = end_reason(await r.read()) if r.status == 410 else None
                        _logged(event, session_id, r.status, None, reason)
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.2 * 2**attempt)
        raise ConnectionError(f"matchmaker did not take the {event} report")

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (no more lingering; for ``timeout_s`` at most, as a down
        matchmaker must not hold signalling's shutdown), then close the connections."""
        self._closing = True
        self._full.set()
        if self._sender is not None and not self._sender.done():
            await asyncio.wait({self._sender}, timeout=timeout_s)
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
        if self._http is not None:
            await self._http.close()
            self._http = None


def _logged(event: str, session_id: str, status: int, error: str | None, reason: str | None) -> None:
    if status == 410:
        log.info("session_report_after_end", report=event, session=session_id, end_reason=reason)
    elif status >= 400:
        log.warning("session_report_refused", status=status, error=error, report=event, session=session_id)


def _settle(report: _Report, exc: BaseException | None = None) -> None:
    if report.done.done():  # its reporter went away (cancelled)
        return
    if exc is None:
        report.done.set_result(None)
    else:
        report.done.set_exception(exc)
