"""The live autoscaler of one pool: every period, read the matchmaker (hosts, slots, queue),
decide with the ``Scaler``, act through the provider, log the decision.

The matchmaker is read in process (``pixelfleet up``) or over its admin API
(``matchmaker.client.MatchmakerApi`` with the admin token). A pool is (tenant, app, region);
a pool without a region is the (tenant, app) in every region. Draining goes through the
matchmaker first, so no player is placed on a host between the decision and its
termination; the host is terminated on a later step, once seen empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import msgspec
import structlog

from autoscale.events import EventsFile
from autoscale.forecast import History
from autoscale.policy import Decision, ForecastSizer, HostState, HostView, PoolView, Scaler
from autoscale.providers.base import FleetProvider, ProviderHost
from matchmaker.models import Host, Slot, SlotState

if TYPE_CHECKING:
    from matchmaker.client import MatchmakerApi
    from matchmaker.service import Matchmaker

log = structlog.get_logger("autoscale")

_SERVING = (SlotState.READY, SlotState.ASSIGNED, SlotState.RESETTING)


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    hosts: list[Host]
    slots: list[Slot]
    # (tenant, app, preferred region or None) -> tickets waiting
    queued: dict[tuple[str, str, str | None], int]


def count_queued(queued: dict[tuple[str, str, str | None], int], key: tuple[str, str, str | None]) -> None:
    queued[key] = queued.get(key, 0) + 1


class Observer(Protocol):
    async def snapshot(self) -> Snapshot: ...

    async def drain(self, host_id: str) -> None: ...


class InProcessObserver:
    """The matchmaker object of this process (``pixelfleet up``)."""

    def __init__(self, matchmaker: Matchmaker) -> None:
        self.mm = matchmaker

    async def snapshot(self) -> Snapshot:
        queued: dict[tuple[str, str, str | None], int] = {}
        for t, a, n in await self.mm.store.queues():
            for ticket in await self.mm.store.waiting(t, a, n):
                count_queued(queued, (t, a, ticket.request.region))
        return Snapshot(hosts=await self.mm.hosts(), slots=await self.mm.store.slots(), queued=queued)

    async def drain(self, host_id: str) -> None:
        await self.mm.drain(host_id, True)


class ApiObserver:
    """A matchmaker over HTTP, through its admin API."""

    def __init__(self, api: MatchmakerApi) -> None:
        self.api = api

    async def snapshot(self) -> Snapshot:
        queued: dict[tuple[str, str, str | None], int] = {}
        for q in await self.api.queues():
            for ticket in q.tickets:
                count_queued(queued, (q.tenant, q.app, ticket.region))
        return Snapshot(hosts=await self.api.hosts(), slots=await self.api.slots(), queued=queued)

    async def drain(self, host_id: str) -> None:
        await self.api.drain(host_id)


def pool_view(
    now: float,
    launched: list[ProviderHost],
    snap: Snapshot,
    tenant: str,
    app: str,
    slots_per_host: int,
    booting_since: dict[str, float] | None = None,
    region: str | None = None,
) -> PoolView:
    """The pool as the scaler sees it: every host the provider launched, READY once the
    matchmaker lists a slot of it serving (ready, assigned or resetting), busy by the slots
    with a session or being reset after one. A host the matchmaker lists draining is
    draining; a dead one (its agent gone) counts as booting until it registers again. A host
    the provider marks draining (a Spot notice) is draining too, with ``drain_pending`` while
    the matchmaker still lists it live and not draining (it could still get players).

    ``booting_since`` (host id -> when first seen booting) is kept up to date in place: set
    for a host seen booting, dropped once it is not, so the scaler can time a boot out.

    With a ``region``, only the slots in that region count (the provider's hosts are in it),
    and the queued demand is the tickets preferring that region plus those preferring none: a
    ticket with no preference can be served anywhere, so each regional pool counts it (erring
    toward warm capacity). Without one, every slot and ticket of (tenant, app) counts."""
    since = booting_since if booting_since is not None else {}
    by_host: dict[str, list[Slot]] = {}
    for s in snap.slots:
        if s.tenant == tenant and s.app == app and (region is None or s.region == region):
            by_host.setdefault(s.host_id, []).append(s)
    hosts = {h.host_id: h for h in snap.hosts}
    views = []
    for p in launched:
        record = hosts.get(p.host_id)
        slots = by_host.get(p.host_id, []) if record is not None and not record.dead else []
        busy = sum(1 for s in slots if s.session_id is not None or s.state in (SlotState.ASSIGNED, SlotState.RESETTING))
        state: HostState = "booting"
        mm_draining = record is not None and record.draining
        if p.draining or mm_draining:
            state = "draining"
        elif any(s.state in _SERVING for s in slots):
            state = "ready"
        pending = p.draining and record is not None and not record.dead and not mm_draining
        if state == "booting":
            since.setdefault(p.host_id, now)
        else:
            since.pop(p.host_id, None)
        views.append(
            HostView(
                host_id=p.host_id,
                state=state,
                slots=len(slots) or slots_per_host,
                busy=busy,
                spot=p.spot,
                drain_pending=pending,
                booting_since=since.get(p.host_id),
            )
        )
    for gone in set(since) - {p.host_id for p in launched}:
        del since[gone]
    queued = sum(
        n
        for (t, a, wants), n in snap.queued.items()
        if t == tenant and a == app and (region is None or wants is None or wants == region)
    )
    return PoolView(now=now, hosts=views, queued=queued)


class Controller:
    def __init__(
        self,
        observer: Observer,
        provider: FleetProvider,
        scaler: Scaler,
        *,
        tenant: str = "default",
        app: str = "default",
        region: str | None = None,
        period_s: float = 60.0,
        decision_log: str | None = None,
        events_file: str | None = None,
        history_file: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.observer = observer
        self.provider = provider
        self.scaler = scaler
        self.tenant, self.app, self.region = tenant, app, region
        self.period_s = period_s
        self.decision_log = Path(decision_log) if decision_log else None
        self.clock = clock
        self.decisions: list[Decision] = []  # the last few, newest last
        self._task: asyncio.Task[None] | None = None
        self._booting_since: dict[str, float] = {}
        # Announced events: those the forecaster started with, plus the events file's,
        # re-read whenever it changes.
        self.events_file = EventsFile(events_file) if events_file else None
        if self.events_file is not None and not isinstance(scaler.sizer, ForecastSizer):
            raise ValueError("an events file needs the forecast sizer")
        self._fixed_events = list(scaler.sizer.forecaster.events) if isinstance(scaler.sizer, ForecastSizer) else []
        # The forecaster's seasonal memory survives a restart: loaded now, saved as each
        # history bucket closes and at the end.
        self.history_file = Path(history_file) if history_file else None
        self._saved_bucket: int | None = None
        self._load_history()

    def reload_events(self) -> bool:
        """Re-read the events file if it changed; whether the forecaster's events changed."""
        if self.events_file is None or not isinstance(self.scaler.sizer, ForecastSizer):
            return False
        events = self.events_file.poll()
        if events is None:
            return False
        self.scaler.sizer.forecaster.events = [*self._fixed_events, *events]
        return True

    async def step(self) -> Decision:
        self.reload_events()
        try:
            await self.provider.poll_notices()
        except Exception as exc:  # noqa: BLE001 - a notice queue down must not stop the scaling
            log.warning("autoscale_notices_failed", error=f"{type(exc).__name__}: {exc}")
        launched = await self.provider.hosts()
        snap = await self.observer.snapshot()
        view = pool_view(
            self.clock(),
            launched,
            snap,
            self.tenant,
            self.app,
            self.scaler.policy.slots_per_host,
            self._booting_since,
            self.region,
        )
        d = self.scaler.decide(view)
        try:
            await self.provider.protect({h.host_id for h in view.hosts if h.busy})
            for host_id in d.drain:
                await self.observer.drain(host_id)
            for host_id in d.terminate:
                await self.provider.terminate(host_id)
            if d.launch:
                await self.provider.launch(d.launch)
        except Exception as exc:
            self._record(d, error=f"{type(exc).__name__}: {exc}")  # what it meant to do, and why it did not
            raise
        self._record(d)
        self._save_history(force=False)
        return d

    def _load_history(self) -> None:
        if self.history_file is None or not isinstance(self.scaler.sizer, ForecastSizer):
            return
        try:
            history = msgspec.json.decode(self.history_file.read_bytes(), type=History)
        except FileNotFoundError:
            return
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("autoscale_history_unreadable", path=str(self.history_file), error=str(exc))
            return
        taken = self.scaler.sizer.forecaster.restore(history)
        log.info(
            "autoscale_history_loaded" if taken else "autoscale_history_ignored",
            path=str(self.history_file),
            buckets=len(history.buckets),
            bucket_s=history.bucket_s,
        )

    def _save_history(self, *, force: bool) -> None:
        if self.history_file is None or not isinstance(self.scaler.sizer, ForecastSizer):
            return
        forecaster = self.scaler.sizer.forecaster
        bucket = int(self.clock() // forecaster.settings.bucket_s)
        if not force and bucket == self._saved_bucket:
            return
        self._saved_bucket = bucket
        tmp = self.history_file.with_name(self.history_file.name + ".tmp")
        try:
            tmp.write_bytes(msgspec.json.encode(forecaster.history()))
            tmp.replace(self.history_file)
        except OSError as exc:
            log.warning("autoscale_history_unsaved", path=str(self.history_file), error=str(exc))

    def _record(self, d: Decision, error: str | None = None) -> None:
        self.decisions = [*self.decisions[-99:], d]
        fields = msgspec.to_builtins(d)
        pool = {"pool": f"{self.tenant}/{self.app}", "region": self.region}
        if error is not None:
            fields["error"] = error
            log.warning("autoscale_decision", **pool, **fields)
        elif d.launch or d.drain or d.terminate:
            log.info("autoscale_decision", **pool, **fields)
        else:
            log.debug("autoscale_decision", **pool, **fields)
        if self.decision_log is not None:
            with self.decision_log.open("ab") as f:
                f.write(msgspec.json.encode({**pool, **fields}) + b"\n")

    async def _run(self) -> None:
        while True:
            try:
                await self.step()
            except Exception as exc:  # noqa: BLE001 - one failed step (matchmaker or cloud API down) is retried
                log.warning("autoscale_step_failed", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(self.period_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._save_history(force=True)
        await self.provider.aclose()
