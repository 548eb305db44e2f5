"""What every Redis store operation rests on: the client, its timeout and error mapping,
the shared round trips, and the tenant lookups (see docs/matchmaker-store.md)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

import msgspec
from redis import exceptions as rx
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from matchmaker.deadlines import Deadlines
from matchmaker.redis_keys import HostKeys, TenantKeys
from matchmaker.redis_scripts import RedisClient, Scripts
from matchmaker.store import BackendUnavailable, NotReplicated
from pixelfleet.redis_node_pipes import NodePipes
from pixelfleet.redis_pipe import Pipe, borrow, pack_command
from pixelfleet.redis_timing import RoundTrips

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_WAIT_MS = 1000
_REDIRECTS = 5  # tries of a call on a Cluster whose slot moved (MOVED, ASK) or script was unknown
CACHE_MAX = 100_000

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    rx.ConnectionError,
    rx.TimeoutError,
    rx.ClusterDownError,
    rx.TryAgainError,
    rx.MasterDownError,
    rx.ReadOnlyError,
    rx.ClusterError,
)

_lookup = msgspec.json.Decoder(tuple[str, str])

# One call of a round trip: (script, keys, args), or (None, (), command) for a command.
Call = tuple[AsyncScript | None, Sequence[str | bytes], Sequence[Any]]


def cmd(*args: str | bytes) -> Call:
    return (None, (), args)


def text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def names(raw: Iterable[Any]) -> list[str]:
    """Members of a reply (redis-py types them as a union of every reply shape)."""
    return [text(m) for m in raw]


def num(x: float) -> str:
    return repr(float(x))


P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S", bound="RedisBase")


Op = Callable[Concatenate[S, P], Coroutine[Any, Any, R]]


def guarded(fn: Op[S, P, R]) -> Op[S, P, R]:
    """Run under the store's timeout; Redis being away becomes BackendUnavailable. Timed
    and, when it fails, counted under the operation's name (``self.round_trips``, /metrics)."""
    name = fn.__name__

    async def wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        started = time.perf_counter()
        try:
            result = await run(self, *args, **kwargs)
        except BaseException:
            self.round_trips.error(name)
            raise
        self.round_trips.observe(name, time.perf_counter() - started)
        return result

    async def run(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        task = asyncio.current_task()
        assert task is not None, "a store operation runs in a task"
        cancels = task.cancelling()
        entry = self._deadlines.enter(task, self.timeout_s)  # asyncio.timeout, cheaper (deadlines.py)
        try:
            try:
                if not self._client_ready:
                    await self._ready_client()
                result = await fn(self, *args, **kwargs)
            finally:
                timed_out = self._deadlines.leave(entry)
        except asyncio.CancelledError:
            if timed_out and task.cancelling() <= cancels:  # our limit, no one else's cancel
                raise BackendUnavailable(f"redis did not answer within {self.timeout_s} s") from None
            raise
        except _UNAVAILABLE as exc:
            _reraise_cancellation(task, cancels, exc)
            raise BackendUnavailable(f"redis is unavailable: {exc}") from exc
        except rx.RedisClusterException as exc:  # also raised for our own mistakes: only
            _reraise_cancellation(task, cancels, exc)
            if isinstance(exc.__cause__, _UNAVAILABLE):  # "cannot connect" is the backend's
                raise BackendUnavailable(f"redis cluster is unavailable: {exc}") from exc
            raise
        except TimeoutError as exc:
            _reraise_cancellation(task, cancels, exc)
            raise BackendUnavailable(f"redis did not answer within {self.timeout_s} s") from exc
        except AttributeError as exc:
            _reraise_cancellation(task, cancels, exc)
            if not closed_under_the_call(exc):
                raise
            raise BackendUnavailable(f"redis is unavailable: its connection closed under the call ({exc})") from exc
        except rx.ResponseError as exc:  # a script error: name the script file's line
            _reraise_cancellation(task, cancels, exc)
            explained = self._scripts.explain(str(exc))
            if explained == str(exc):
                raise
            raise rx.ResponseError(explained) from exc
        _reraise_cancellation(task, cancels, None)
        return result

    wrapper.__name__, wrapper.__qualname__, wrapper.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
    return wrapper


_REDIS_CONNECTION = os.path.join("redis", "asyncio", "connection.py")


def closed_under_the_call(exc: AttributeError) -> bool:
    """redis-py 8.1's cluster client, reading the cluster anew after a node crashed, closes
    connections that another call is using; that call fails on the closed connection's
    reader or writer (None) with AttributeError, raised in redis-py's connection module.
    That is the backend going away, not a mistake of ours (which is raised elsewhere)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_filename.endswith(_REDIS_CONNECTION)


def _reraise_cancellation(task: asyncio.Task[Any] | None, cancels: int, cause: BaseException | None) -> None:
    """A task cancelled during an operation must see CancelledError.

    redis-py 8.1's asyncio client loses cancellations: one that lands while a command
    is on the wire comes back as ConnectionError or TimeoutError, or the command is
    retried and simply returns. Turned into BackendUnavailable, or into a normal result,
    the caller runs on: a loop asked to stop never stops (seen: a sweep loop hung in a
    test's teardown). ``cancels`` is the task's count on entry, so only a cancellation
    requested during this operation counts (the operation's own time limit takes back its own).
    """
    if task is not None and task.cancelling() > cancels:
        raise asyncio.CancelledError() from cause


class RedisBase:
    """The client, the scripts, the key names and the round trips the operations share."""

    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str = "pf",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        wait_replicas: int = 0,
        wait_ms: int = DEFAULT_WAIT_MS,
    ) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(f"the key prefix must be non-empty and have no braces: {prefix!r}")
        if wait_replicas < 0 or (wait_replicas and not 1 <= wait_ms < timeout_s * 1000):
            limit = f"{timeout_s * 1000:g}"
            raise ValueError(f"wait_replicas >= 0, and wait_ms from 1 to under {limit} (the store's timeout)")
        self._r: RedisClient = client
        self._cluster = isinstance(client, RedisCluster)
        self._client_ready = not self._cluster
        self._client_lock = asyncio.Lock()
        self.prefix = prefix
        self.timeout_s = timeout_s
        self._g = HostKeys(prefix)
        self._tenant_keys: dict[str, TenantKeys] = {}
        self._session_tenant: dict[str, str] = {}
        self._ticket_tenant: dict[str, tuple[str, str]] = {}
        self._queued: list[tuple[Sequence[Call], asyncio.Future[list[Any]]]] = []  # next round trip's
        self._sending: set[asyncio.Future[None]] = set()
        self._pipe: Pipe | None = None  # the round trips' own connection (not on a cluster)
        self._pipe_lock = asyncio.Lock()
        self._scripts = Scripts(client)
        self.round_trips = RoundTrips()  # per store operation (``guarded``)
        self._deadlines = Deadlines()  # each operation's time limit (``guarded``)
        # Each round trip on the pipe ends with WAIT: its writes are on this many replicas
        # before any caller hears of them (docs/matchmaker-store.md, "Failover").
        self.wait_replicas, self.wait_ms = wait_replicas, wait_ms
        self._wait = pack_command(("WAIT", wait_replicas, wait_ms)) if wait_replicas else None
        self._node_pipes = (  # on a Cluster: each call and its WAIT on the pipe to its key's node
            NodePipes(client, bound_s=timeout_s, op="store") if self._cluster and wait_replicas else None
        )

    async def _ready_client(self) -> None:
        """redis-py's asyncio RedisCluster (8.1) races its own first ``initialize()``
        when a fresh client gets concurrent commands (a connection is used while it is
        being replaced: AttributeError on ``_writer``). Initialize it once, alone."""
        async with self._client_lock:
            if not self._client_ready:
                assert isinstance(self._r, RedisCluster)
                await self._r.initialize()
                self._client_ready = True

    # --- keys and lookups ---------------------------------------------------------------

    def _keys(self, tenant: str) -> TenantKeys:
        keys = self._tenant_keys.get(tenant)
        if keys is None:
            if len(self._tenant_keys) > CACHE_MAX:
                self._tenant_keys.clear()
            keys = self._tenant_keys[tenant] = TenantKeys(self.prefix, tenant)
        return keys

    def _tag(self, tenant: str) -> str:
        return self._keys(tenant).tag

    @staticmethod
    def _remember(cache: dict[str, R], key: str, value: R) -> None:
        if len(cache) > CACHE_MAX:
            cache.clear()
        cache[key] = value

    def note_tenant(self, session_id: str, tenant: str) -> None:
        self._remember(self._session_tenant, session_id, tenant)

    async def _session_keys(self, session_id: str) -> TenantKeys | None:
        """The keys of the tenant a session lookup names (immutable: cached, or noted
        from a verified token), the lookup sharing a round trip with concurrent calls."""
        tenant = self._session_tenant.get(session_id)
        if tenant is None:
            raw = (await self._batch([cmd("GET", self._g.session_tenant(session_id))]))[0]
            if raw is None:
                return None
            tenant = text(raw)
            self._remember(self._session_tenant, session_id, tenant)
        return self._keys(tenant)

    async def _ticket_keys(self, ticket_id: str) -> tuple[TenantKeys, str] | None:
        """The tenant's keys and the app of a ticket, from its lookup (cached)."""
        found = self._ticket_tenant.get(ticket_id)
        if found is None:
            raw = await self._one(cmd("GET", self._g.ticket_tenant(ticket_id)))
            if raw is None:
                return None
            found = _lookup.decode(raw)
            self._remember(self._ticket_tenant, ticket_id, found)
        return self._keys(found[0]), found[1]

    async def _tenants(self) -> list[str]:
        return sorted(text(t) for t in await self._r.smembers(self._g.tenants))

    # --- round trips ----------------------------------------------------------------------

    async def _one(self, call: Call) -> Any:
        """One call, through the shared round trip (``_batch``)."""
        return (await self._batch([call]))[0]

    async def _batch(self, calls: Sequence[Call], *, ordered: bool = False) -> list[Any]:
        """One round trip. A script the server does not know (restart, failover, new cluster
        node) is loaded and that one call is run again: it had no effect the first time.

        Batches asked for in the same event-loop turn share one write on the store's pipe
        (callers still get only their own results or error): under load, concurrent
        allocations cost one write and one read instead of one each; alone, a batch leaves
        at once, without waiting for the replies to the writes before it.

        redis-py refuses EVALSHA in a cluster pipeline, so on a cluster the calls run
        concurrently instead; ``ordered`` then runs the plain commands first."""
        if not calls:
            return []
        if self._cluster:
            return await self._gather(calls, ordered)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[Any]] = loop.create_future()
        self._queued.append((calls, done))
        if len(self._queued) == 1:
            loop.call_soon(self._send_queued)
        return await done

    def _send_queued(self) -> None:
        queued, self._queued = self._queued, []
        task = asyncio.ensure_future(self._send(queued))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, queued: list[tuple[Sequence[Call], asyncio.Future[list[Any]]]]) -> None:
        calls = [call for batch, _ in queued for call in batch]
        try:
            results = await self._round_trip(calls)
            unknown = [i for i, res in enumerate(results) if isinstance(res, rx.NoScriptError)]
            if unknown:
                await self._run_again_loaded(calls, results, unknown)
        except BaseException as exc:  # the round trip failed: every caller in it hears why
            for _, done in queued:
                if not done.done():
                    done.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        start = 0
        for batch, done in queued:
            mine = results[start : start + len(batch)]
            start += len(batch)
            if done.done():  # its caller gave up (timeout, cancellation)
                continue
            error = next((r for r in mine if isinstance(r, BaseException)), None)
            if error is None:
                done.set_result(mine)
            else:
                done.set_exception(error)

    async def _run_again_loaded(self, calls: Sequence[Call], results: list[Any], unknown: list[int]) -> None:
        """The calls whose script the server did not know (a restart, a failover) had no
        effect: load their scripts, then run them again on the pipe, so that they end with
        the round trip's WAIT like any other. A failure is those callers' alone."""
        try:
            for script in {id(s): s for s, _, _ in (calls[i] for i in unknown) if s is not None}.values():
                await self._r.script_load(script.script)
            again = await self._round_trip([calls[i] for i in unknown])
        except Exception as exc:  # noqa: BLE001 - those callers' error
            again = [exc] * len(unknown)
        for i, res in zip(unknown, again, strict=True):
            results[i] = res

    async def _round_trip(self, calls: Sequence[Call]) -> list[Any]:
        """The calls written on the store's pipe (one dedicated connection, batches not
        waiting for each other's replies: ``pixelfleet.redis_pipe``); an error reply is
        that call's result. Replies get redis-py's usual conversions (``SET`` -> True)."""
        packed = [
            pack_command(args) if script is None else pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))
            for script, keys, args in calls
        ]
        if self._wait is not None:
            packed.append(self._wait)
        pipe = self._pipe if self._pipe is not None and not self._pipe.broken else await self._open_pipe()
        results = await self._on_pipe(pipe, packed)
        if self._wait is not None:
            self._check_replicated(results.pop())
        convert = self._r.response_callbacks
        for i, (script, _keys, args) in enumerate(calls):
            if script is None and not isinstance(results[i], BaseException):
                to = convert.get(args[0])
                if to is not None:
                    results[i] = to(results[i])
        return results

    @staticmethod
    async def _on_pipe(pipe: Pipe, packed: list[bytes]) -> list[Any]:
        """The replies to ``packed``, written as one batch on ``pipe``."""
        replied: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()

        def answered(replies: list[Any] | BaseException) -> None:
            if not replied.done():
                if isinstance(replies, BaseException):
                    replied.set_exception(replies)
                else:
                    replied.set_result(replies)

        try:
            await pipe.send(packed, len(packed), answered)
        except asyncio.CancelledError:
            if replied.done():  # the pipe failed it too: retrieved here, not logged as lost
                replied.exception()
            raise
        except Exception:  # noqa: BLE001, S110 - the write failed: ``answered`` has the error
            pass
        return await replied

    async def _waited_on_node(self, call: Call) -> Any:
        """On a Cluster, one call and its WAIT, written together on the pipe to the primary
        of the call's key: WAIT counts the writes of the connection that sends it, and
        redis-py's cluster client would run the two on whichever pooled connections were
        free. A call refused with MOVED, ASK or NOSCRIPT had no effect: the slot map is read
        anew (``NodePipes``) or the script loaded, and it is sent again, a few times at most."""
        assert self._node_pipes is not None and self._wait is not None
        script, keys, args = call
        key = keys[0] if script is not None else args[1]
        packed = pack_command(args if script is None else ("EVALSHA", script.sha, len(keys), *keys, *args))
        for attempt in range(_REDIRECTS):
            name, pipe = await self._node_pipes.get(key)
            try:
                result, acked = await self._on_pipe(pipe, [packed, self._wait])
            except (rx.ConnectionError, ConnectionError, TimeoutError):
                self._node_pipes.stale(name)  # a failover, maybe: read the slot map anew
                raise
            if isinstance(result, rx.MovedError | rx.AskError):  # ASK: a slot moving; soon MOVED
                self._node_pipes.stale(name)
                await asyncio.sleep(0.05 * attempt)
                continue
            if isinstance(result, rx.NoScriptError) and script is not None:
                await self._on_pipe(pipe, [pack_command(("SCRIPT", "LOAD", script.script))])
                continue
            self._check_replicated(acked)
            if isinstance(result, BaseException):
                raise result
            to = self._r.response_callbacks.get(args[0]) if script is None else None
            return result if to is None else to(result)
        raise BackendUnavailable(f"redis cluster: the slot of {key!r} still moving after {_REDIRECTS} tries")

    def _check_replicated(self, acked: Any) -> None:
        if isinstance(acked, BaseException):  # e.g. WAIT sent to a replica: nothing confirmed
            raise NotReplicated(f"redis refused WAIT: {acked}") from acked
        if int(acked) < self.wait_replicas:
            raise NotReplicated(
                f"redis: the writes reached {int(acked)} of {self.wait_replicas} replicas within {self.wait_ms} ms"
                " (PIXELFLEET_MATCHMAKER__REDIS_WAIT_REPLICAS); they stand on the primary, unconfirmed"
            )

    async def _open_pipe(self) -> Pipe:
        async with self._pipe_lock:  # concurrent first batches share one new connection
            if self._pipe is None or self._pipe.broken:
                assert isinstance(self._r, Redis)
                if self._pipe is not None:  # it broke: Redis restarted or failed over, so the
                    with contextlib.suppress(Exception):  # pool's idle connections are stale too
                        await self._r.connection_pool.disconnect(inuse_connections=False)
                conn, release = await borrow(self._r, self.timeout_s)
                self._pipe = Pipe(conn, release, bound_s=self.timeout_s)
            return self._pipe

    async def _gather(self, calls: Sequence[Call], ordered: bool) -> list[Any]:
        def run(call: Call) -> Awaitable[Any]:
            script, keys, args = call
            if self._node_pipes is not None:
                return self._waited_on_node(call)
            if script is None:
                pending: Awaitable[Any] = self._r.execute_command(*args)
                return pending
            return script(list(keys), list(args))

        if not ordered:
            return list(await asyncio.gather(*map(run, calls)))
        results: list[Any] = [None] * len(calls)
        for first in (True, False):
            todo = [i for i, call in enumerate(calls) if (call[0] is None) is first]
            for i, res in zip(todo, await asyncio.gather(*(run(calls[i]) for i in todo)), strict=True):
                results[i] = res
        return results

    async def aclose(self) -> None:
        if self._sending:  # round trips in flight finish (their callers may still wait)
            await asyncio.gather(*self._sending, return_exceptions=True)
        if self._pipe is not None:
            await self._pipe.aclose()
            self._pipe = None
        if self._node_pipes is not None:
            await self._node_pipes.aclose()
        await self._r.aclose()
