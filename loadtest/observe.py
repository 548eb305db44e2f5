"""What the servers say while a load test runs: their own counters and, when they run
on this machine, their CPU and memory.

Signalling's ``/api/status`` gives the players and streamers it holds now; the
matchmaker's admin listings (with ``PIXELFLEET_ADMIN_TOKEN``) give live sessions and
queue lengths; its records file (``--records``) holds every ended session. A server on
this machine is found by the port it listens on (psutil), so its CPU and RSS (and
those of its children: ``pixelfleet up`` runs its streamers as children) are sampled.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import psutil

SAMPLE_S = 0.5


class TargetRefused(ValueError):
    """A target that is not this machine, without ``--i-own-this-target``."""


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_loopback(urls: list[str], i_own_it: bool) -> None:
    far = [u for u in urls if not is_loopback(u)]
    if far and not i_own_it:
        raise TargetRefused(
            f"refusing to load {', '.join(far)}: not a loopback address. Load only what you own; "
            "if you do, pass --i-own-this-target"
        )


def http_base(url: str) -> str:
    """``ws://h:p/x`` -> ``http://h:p`` (and wss -> https)."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}"


def listening_pid(url: str) -> int | None:
    """The local process listening on the URL's port, if this user can see it."""
    parts = urlsplit(url)
    if not is_loopback(url):
        return None
    port = parts.port or (443 if parts.scheme in ("https", "wss") else 80)
    with contextlib.suppress(psutil.Error, OSError):
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                return int(c.pid)
    return None


class ProcSampler:
    """CPU (cores) and RSS of one process and of it with its children."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.last: dict[int, float] = {}
        self.t = time.monotonic()

    def _cpu(self, p: psutil.Process) -> float:
        t = p.cpu_times()
        return float(t.user + t.system)

    def sample(self) -> dict[str, float]:
        now = time.monotonic()
        procs = [self.proc]
        with contextlib.suppress(psutil.Error):
            procs += self.proc.children(recursive=True)
        cpu_main = cpu_tree = 0.0
        rss_main = rss_tree = 0
        seen: dict[int, float] = {}
        for p in procs:
            with contextlib.suppress(psutil.Error):
                c = self._cpu(p)
                seen[p.pid] = c
                delta = c - self.last.get(p.pid, c)
                rss = p.memory_info().rss
                cpu_tree += delta
                rss_tree += rss
                if p.pid == self.proc.pid:
                    cpu_main, rss_main = delta, rss
        dt = max(1e-6, now - self.t)
        self.last, self.t = seen, now
        return {
            "cpu": cpu_main / dt,
            "rss": rss_main,
            "tree_cpu": cpu_tree / dt,
            "tree_rss": rss_tree,
            "tree_procs": len(procs),
        }


class Observer:
    """Samples every ``SAMPLE_S`` until stopped; ``samples`` is the time series."""

    def __init__(self, target: dict[str, Any], admin_token: str | None, server_pid: int | None) -> None:
        self.target = target
        self.admin_token = admin_token
        self.samples: list[dict[str, Any]] = []
        self.errors: dict[str, int] = {}
        url = target.get("player_url") or target.get("matchmaker_url") or ""
        self.status_base = http_base(url)
        pid = server_pid or listening_pid(url)
        self.pid = pid
        self.proc: ProcSampler | None = None
        if pid is not None:
            with contextlib.suppress(psutil.Error):
                self.proc = ProcSampler(pid)
        self._stop = asyncio.Event()

    async def _json(self, http: aiohttp.ClientSession, path: str, admin: bool = False) -> Any:
        headers = {"Authorization": f"Bearer {self.admin_token}"} if admin and self.admin_token else {}
        try:
            async with http.get(self.status_base + path, headers=headers) as r:
                if r.status != 200:
                    self.errors[f"{path} {r.status}"] = self.errors.get(f"{path} {r.status}", 0) + 1
                    return None
                return orjson.loads(await r.read())
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError, OSError) as exc:
            key = f"{path} {type(exc).__name__}"
            self.errors[key] = self.errors.get(key, 0) + 1
            return None

    async def sample(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        t = time.time()
        status = await self._json(http, "/api/status")
        out: dict[str, Any] = {"t": (t + time.time()) / 2}  # the server answered about then
        if isinstance(status, dict):
            out["sig_players"] = status.get("player_count")
            out["sig_streamers"] = status.get("streamer_count")
        if self.target["kind"] == "platform" and self.admin_token:
            queues = await self._json(http, "/api/v1/admin/queue", admin=True)
            if isinstance(queues, list):
                out["queue_length"] = sum(int(q.get("length", 0)) for q in queues)
            sessions = await self._json(http, "/api/v1/admin/sessions", admin=True)
            if isinstance(sessions, list):
                out["mm_sessions"] = len(sessions)
        if self.proc is not None:
            with contextlib.suppress(psutil.Error):
                out.update({f"server_{k}": v for k, v in self.proc.sample().items()})
        return out

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=2.0)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while not self._stop.is_set():
                self.samples.append(await self.sample(http))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), SAMPLE_S)

    def stop(self) -> None:
        self._stop.set()


def read_records(path: str | None, session_ids: set[str]) -> dict[str, Any] | None:
    """The matchmaker's records of our sessions (docs/records.md): count and end reasons."""
    if not path:
        return None
    reasons: dict[str, int] = {}
    found: set[str] = set()
    with contextlib.suppress(OSError), Path(path).open("rb") as f:
        for line in f:
            with contextlib.suppress(orjson.JSONDecodeError):
                rec = orjson.loads(line)
                sid = rec.get("session_id") if isinstance(rec, dict) else None
                if sid in session_ids and sid not in found:
                    found.add(sid)
                    reason = str(rec.get("end_reason"))
                    reasons[reason] = reasons.get(reason, 0) + 1
    return {"matched": len(found), "end_reasons": reasons}


async def wait_records(path: str | None, session_ids: set[str], limit_s: float) -> dict[str, Any] | None:
    """Records are written when a session ends (after the reconnect grace): wait for them."""
    deadline = time.monotonic() + limit_s
    while True:
        rec = read_records(path, session_ids)
        if rec is None or rec["matched"] >= len(session_ids) or time.monotonic() > deadline:
            return rec
        await asyncio.sleep(0.25)
