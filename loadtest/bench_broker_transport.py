"""Node-to-node delivery over Redis: sharded pub/sub against streams, same run, same Redis.

The Redis broker (signaling/broker_redis.py, docs/signaling-cluster.md) delivers batches
to the owning node by sharded pub/sub. This benchmark measures that choice against Redis
Streams on one redis-server it starts itself (Unix socket, nothing persisted). For each
transport a receiver and a sender run as two child processes (redis-py asyncio under
uvloop, as a signalling node does; they die with this process), so every wake-up of a
real pair of nodes is paid here too:

- ``pubsub``: the receiver SSUBSCRIBEs to its inbox channel and reads with
  ``get_message``, as the broker does on plain Redis; the sender SPUBLISHes batches.
- ``streams``: the receiver XREADs its inbox stream with BLOCK from the last id it read;
  the sender XADDs batches with ``MAXLEN ~ --maxlen``, so the inbox stays bounded.

Batches are made with the broker's own ``pack``/``unpack``; each record carries a
sequence number and its send time from CLOCK_MONOTONIC, which is one clock for every
process on Linux, so the receiver reads one-way latency directly and counts gaps. The
receiver tells the sender how many records it has taken through a pipe (the same for
both transports), which keeps a window of records in flight.

Two phases per transport, on the same two processes:

- **light**: one record at a time (sent, received, then ``--light-gap-ms`` of quiet);
  one-way latency p50/p99.
- **loaded**: the sender sends as fast as the window allows (``--window`` records in
  flight, from being packed to being taken); like the broker's writer, one task sends
  batches one round trip after the other, each holding what the window let through
  while the previous one was in flight, at most ``--batch`` records (so several batches
  are in flight, as on a node with many sockets). Records/s, latency p50/p99, and the
  CPU seconds per 100,000 records of redis-server, sender and receiver (utime + stime
  from /proc/<pid>/stat over the phase, the drain included).

Transports alternate in order over ``--repeat`` rounds; the report is the field-by-field
median. It also says what each transport needs to be safe: for pub/sub, the output
buffer limit past which Redis cuts off a subscriber that falls behind; for streams, the
memory an inbox holds at ``MAXLEN`` (MEMORY USAGE after the loaded phase), kept while idle.

    python -m loadtest.bench_broker_transport --repeat 3 --json broker-transport.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import struct
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis

from loadtest.bench_cluster import median
from loadtest.bench_matchmaker_procs import RedisServer
from loadtest.bench_signaling import machine_info, percentile
from loadtest.children import JsonLineChild, die_with_parent
from signaling.broker_records import pack, unpack

TRANSPORTS = ("pubsub", "streams")
INBOX = "{pf:bench}:in"  # one inbox: a channel for pub/sub, a stream key for streams
TO = "n2/1\x00n1/1"  # a frame's address part, as the broker writes it (to, then origin)
_STAMP = struct.Struct("!QQ")  # sequence number, send time (ns, CLOCK_MONOTONIC)
_ACK = struct.Struct("=Q")  # records taken so far, receiver -> sender
_TICK = os.sysconf("SC_CLK_TCK")


def clock_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def proc_cpu(pid: int) -> float:
    """utime + stime of a process, seconds (fields 14 and 15 of /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


# ----------------------------------------------------------------------------- children


class Receiver:
    def __init__(self, r: Redis, cfg: dict[str, Any]) -> None:
        self.r, self.cfg, self.ack_fd = r, cfg, int(cfg["ack_fd"])
        self.total = self.next_seq = 0  # records taken since start (what the sender's window counts)
        self.task: asyncio.Task[None] | None = None
        self.progress = asyncio.Event()
        self.taken = self.missing = self.disorder = self.calls = 0
        self.lat_ns: list[int] = []

    async def reset(self) -> dict[str, Any]:
        self.taken = self.missing = self.disorder = self.calls = 0
        self.lat_ns = []
        return {}

    def take(self, data: bytes) -> None:
        now = clock_ns()
        for _kind, _to, payload in unpack(data):
            seq, sent = _STAMP.unpack_from(payload)
            self.lat_ns.append(now - sent)
            if seq > self.next_seq:
                self.missing += seq - self.next_seq
            elif seq < self.next_seq:
                self.disorder += 1
            self.next_seq = max(self.next_seq, seq + 1)
            self.taken += 1
            self.total += 1

    def ack(self) -> None:
        self.calls += 1
        os.write(self.ack_fd, _ACK.pack(self.total))
        self.progress.set()

    async def start(self) -> dict[str, Any]:
        if self.cfg["transport"] == "pubsub":
            pubsub = self.r.pubsub()
            await pubsub.ssubscribe(INBOX)
            while True:  # subscribed before the sender may publish
                msg = await pubsub.get_message(timeout=5.0)
                if msg is None:
                    raise RuntimeError("no ssubscribe confirmation")
                if msg["type"] == "ssubscribe":
                    break
            self.task = asyncio.create_task(self._listen(pubsub))
        else:
            self.task = asyncio.create_task(self._xread())
        return {}

    async def _listen(self, pubsub: Any) -> None:
        while True:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg is not None and msg["type"] == "smessage":
                self.take(msg["data"])
                self.ack()

    async def _xread(self) -> None:
        last: bytes | str = "0-0"
        while True:
            got: Any = await self.r.xread({INBOX: last}, count=int(self.cfg["read_count"]), block=1000)
            for _name, entries in got or ():
                for entry_id, fields in entries:
                    self.take(fields[b"d"])
                    last = entry_id
                self.ack()

    async def stats(self, until: int, within: float) -> dict[str, Any]:
        if self.task is not None and self.task.done():
            raise RuntimeError(f"the reader stopped: {self.task.exception()!r}")
        deadline = time.monotonic() + within
        while self.total < until and (left := deadline - time.monotonic()) > 0:
            self.progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.progress.wait(), left)
        return {
            **{"taken": self.taken, "total": self.total, "missing": self.missing, "out_of_order": self.disorder},
            "reads": self.calls,
            "p50_us": _us(percentile(self.lat_ns, 0.5)),
            "p99_us": _us(percentile(self.lat_ns, 0.99)),
            "max_us": _us(max(self.lat_ns, default=None)),
        }


def _us(ns: float | None) -> float | None:
    return None if ns is None else round(ns / 1000, 1)


class Sender:
    def __init__(self, r: Redis, cfg: dict[str, Any]) -> None:
        self.r, self.cfg, self.ack_fd = r, cfg, int(cfg["ack_fd"])
        self.seq = self.acked = self.unheard = 0
        self.filler = b"x" * max(0, int(cfg["payload"]) - _STAMP.size)
        self.acks = asyncio.Event()
        self._buf = b""
        os.set_blocking(self.ack_fd, False)
        asyncio.get_running_loop().add_reader(self.ack_fd, self._on_ack)

    def _on_ack(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self._buf += os.read(self.ack_fd, 65536)
        whole = len(self._buf) - len(self._buf) % _ACK.size
        if whole:
            self.acked = _ACK.unpack_from(self._buf, whole - _ACK.size)[0]
            self._buf = self._buf[whole:]
            self.acks.set()

    def _pack(self, n: int) -> bytes:
        first, self.seq = self.seq, self.seq + n
        return pack([(0, TO, _STAMP.pack(seq, clock_ns()) + self.filler) for seq in range(first, first + n)])

    async def send(self, n: int) -> None:
        data = self._pack(n)
        if self.cfg["transport"] == "pubsub":
            if not await self.r.spublish(INBOX, data):
                self.unheard += n  # no subscriber: dropped (reported; the broker tells the senders)
        else:
            await self.r.xadd(INBOX, {"d": data}, maxlen=int(self.cfg["maxlen"]), approximate=True)

    async def _heard(self, within: float) -> None:
        self.acks.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.acks.wait(), within)

    async def light(self, count: int, gap_ms: float) -> dict[str, Any]:
        first, t0, self.unheard = self.seq, time.monotonic(), 0
        for _ in range(count):
            await self.send(1)
            deadline = time.monotonic() + 5.0
            while self.acked < self.seq and time.monotonic() < deadline:
                await self._heard(deadline - time.monotonic())
            await asyncio.sleep(gap_ms / 1000)
        return self._done(first, count, t0)

    async def load(self, seconds: float, window: int, batch: int) -> dict[str, Any]:
        first, batches, t0, self.unheard = self.seq, 0, time.monotonic(), 0
        end = t0 + seconds
        while time.monotonic() < end:
            room = window - (self.seq - self.acked)
            if room <= 0:
                await self._heard(max(0.001, end - time.monotonic()))
                continue
            await self.send(min(room, batch))
            batches += 1
        return self._done(first, batches, t0)

    def _done(self, first: int, batches: int, t0: float) -> dict[str, Any]:
        took = time.monotonic() - t0
        return {"sent": self.seq - first, "batches": batches, "seconds": took, "seq": self.seq, "unheard": self.unheard}


async def serve(cfg: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    r = Redis.from_url(cfg["url"])
    worker: Receiver | Sender = Receiver(r, cfg) if cfg["role"] == "receiver" else Sender(r, cfg)
    commands = {"start", "reset", "stats"} if isinstance(worker, Receiver) else {"light", "load"}
    while line := await reader.readline():
        cmd = orjson.loads(line)
        name = cmd.pop("cmd")
        if name == "quit":
            sys.stdout.buffer.write(b'{"ok": true}\n')
            break
        try:
            if name not in commands:
                raise ValueError(f"unknown command {name!r}")
            out = {"ok": True, **await getattr(worker, name)(**cmd)}
        except Exception as exc:  # reported to the orchestrator, which fails the run
            out = {"ok": False, "error": repr(exc)}
        sys.stdout.buffer.write(orjson.dumps(out) + b"\n")
        sys.stdout.buffer.flush()
    sys.stdout.buffer.flush()
    if isinstance(worker, Receiver) and worker.task is not None:
        worker.task.cancel()
        with contextlib.suppress(BaseException):
            await worker.task
    await r.aclose()


# ----------------------------------------------------------------------------- orchestrator


async def spawn(cfg: dict[str, Any], log: Path, fd: int) -> JsonLineChild:
    with open(log, "wb") as err:  # noqa: ASYNC230 - one small local file per child
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "loadtest.bench_broker_transport", "--config", json.dumps(cfg)),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            preexec_fn=die_with_parent,
            pass_fds=(fd,),
        )
    return JsonLineChild(cfg["role"], proc, str(log))


async def run_transport(transport: str, opts: argparse.Namespace, server: RedisServer, folder: Path) -> dict[str, Any]:
    server.client.delete(INBOX)
    rfd, wfd = os.pipe()
    base = {"transport": transport, "url": server.url, "payload": opts.payload, "maxlen": opts.maxlen}
    base["read_count"] = opts.read_count
    children: list[JsonLineChild] = []
    try:
        children.append(await spawn(base | {"role": "receiver", "ack_fd": wfd}, folder / f"{transport}-r.log", wfd))
        children.append(await spawn(base | {"role": "sender", "ack_fd": rfd}, folder / f"{transport}-s.log", rfd))
    except BaseException:
        for child in children:
            await child.stop()
        raise
    finally:
        os.close(rfd)
        os.close(wfd)
    recv, send = children
    t = opts.timeout
    pids = {"redis": server.pid, "sender": send.proc.pid, "receiver": recv.proc.pid}

    async def phase(cmd: str, **kw: Any) -> dict[str, Any]:
        await recv.call(t, "reset")
        cpu0 = {k: proc_cpu(p) for k, p in pids.items()}
        sent = await send.call(t + kw.get("seconds", 0), cmd, **kw)
        got = await recv.call(t, "stats", until=sent["seq"], within=opts.drain)
        cpu = {k: proc_cpu(p) - cpu0[k] for k, p in pids.items()}
        n = got["taken"]
        return {
            "sent": sent["sent"],
            "received": n,
            "lost": sent["sent"] - n,
            "no_subscriber": sent["unheard"],
            **{k: got[k] for k in ("missing", "out_of_order", "reads", "p50_us", "p99_us", "max_us")},
            "msgs_per_s": round(n / sent["seconds"]) if sent["seconds"] > 0 else None,
            "records_per_batch": round(sent["sent"] / sent["batches"], 1) if sent["batches"] else None,
            "cpu_s_per_100k": {k: round(v / n * 1e5, 3) if n else None for k, v in cpu.items()},
        }

    try:
        await recv.call(t, "start")
        light = await phase("light", count=opts.light, gap_ms=opts.light_gap_ms)
        if opts.warmup > 0:
            await phase("load", seconds=opts.warmup, window=opts.window, batch=opts.batch)
        loaded = await phase("load", seconds=opts.seconds, window=opts.window, batch=opts.batch)
        out: dict[str, Any] = {"light": light, "loaded": loaded}
        if transport == "streams":
            entries = int(server.client.xlen(INBOX))
            memory = int(server.client.memory_usage(INBOX, samples=0) or 0)
            out["inbox"] = {"entries": entries, "bytes": memory, "bytes_per_entry": round(memory / max(entries, 1))}
        return out
    finally:
        await send.stop()
        await recv.stop()


def pubsub_buffer_limit(server: RedisServer) -> dict[str, int]:
    """``client-output-buffer-limit`` for the pubsub class: hard bytes, soft bytes, soft seconds."""
    words = str(server.client.config_get("client-output-buffer-limit")["client-output-buffer-limit"]).split()
    at = words.index("pubsub")
    hard, soft, secs = (int(w) for w in words[at + 1 : at + 4])
    return {"hard_bytes": hard, "soft_bytes": soft, "soft_seconds": secs}


async def run(opts: argparse.Namespace) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="bench-broker-transport-"))
    server = RedisServer(None, str(folder))
    try:
        server.start()
        rounds: list[dict[str, Any]] = []
        for r in range(opts.repeat):
            order = TRANSPORTS if r % 2 == 0 else TRANSPORTS[::-1]  # drift falls on both sides
            res: dict[str, Any] = {}
            for transport in order:
                print(f"[bench_broker_transport] round {r + 1}/{opts.repeat}, {transport}", file=sys.stderr, flush=True)
                res[transport] = await run_transport(transport, opts, server, folder)
            rounds.append({k: res[k] for k in TRANSPORTS})
        limit = pubsub_buffer_limit(server)
    finally:
        server.stop()
    return {
        "machine": machine_info(),
        "options": vars(opts),
        "redis": {"version": server.version, "pubsub_output_buffer_limit": limit},
        "logs": str(folder),
        "transports": median(rounds),
        "rounds": rounds,
    }


def render(report: dict[str, Any]) -> str:
    def f(v: Any, fmt: str = "{:,.1f}") -> str:
        return "-" if v is None else fmt.format(v)

    o = report["options"]
    lines = [
        f"node->node delivery, redis {report['redis']['version']}, payload {o['payload']} B, "
        f"window {o['window']}, batches of at most {o['batch']}, median of {o['repeat']} round(s)",
        f"{'transport':<10}{'light p50/p99 us':>18}{'loaded msg/s':>14}{'loaded p50/p99 us':>20}"
        f"{'rec/batch':>11}{'CPU s/100k redis/send/recv':>30}{'lost':>6}",
    ]
    for name, r in report["transports"].items():
        li, lo = r["light"], r["loaded"]
        cpu = "/".join(f(lo["cpu_s_per_100k"][k], "{:.2f}") for k in ("redis", "sender", "receiver"))
        lost = sum((p["lost"] or 0) + (p["missing"] or 0) for p in (li, lo))
        lines.append(
            f"{name:<10}{f(li['p50_us']) + '/' + f(li['p99_us']):>18}{f(lo['msgs_per_s'], '{:,.0f}'):>14}"
            f"{f(lo['p50_us']) + '/' + f(lo['p99_us']):>20}{f(lo['records_per_batch']):>11}{cpu:>30}{lost:>6}"
        )
    lim = report["redis"]["pubsub_output_buffer_limit"]
    lines.append(
        f"safe, pubsub: nothing stored; a subscriber that falls behind is cut off by Redis past "
        f"{lim['hard_bytes']:,} B, or {lim['soft_bytes']:,} B for {lim['soft_seconds']} s "
        "(client-output-buffer-limit pubsub), losing what was in flight"
    )
    inbox = report["transports"].get("streams", {}).get("inbox") or {}
    lines.append(
        f"safe, streams: each inbox keeps ~MAXLEN {o['maxlen']:,} entries, held while idle: here "
        f"{f(inbox.get('entries'), '{:,.0f}')} entries, {f(inbox.get('bytes'), '{:,.0f}')} B "
        f"({f(inbox.get('bytes_per_entry'), '{:,.0f}')} B/entry, MEMORY USAGE after the loaded phase); "
        "a reader more than MAXLEN entries behind misses entries silently"
    )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--light", type=int, default=1000, help="light phase: records, one at a time (default 1000)")
    ap.add_argument("--light-gap-ms", type=float, default=0.5, help="quiet after each light record, ms (default 0.5)")
    ap.add_argument("--seconds", type=float, default=3.0, help="loaded phase, s (default 3)")
    ap.add_argument("--warmup", type=float, default=0.5, help="unmeasured load before it, s (default 0.5)")
    ap.add_argument("--window", type=int, default=256, help="records in flight when loaded (default 256)")
    ap.add_argument("--batch", type=int, default=32, help="most records in one batch when loaded (default 32)")
    ap.add_argument("--payload", type=int, default=300, help="record payload, bytes (default 300, min 16)")
    ap.add_argument("--maxlen", type=int, default=1000, help="streams: MAXLEN ~ of an inbox, entries (default 1000)")
    ap.add_argument("--read-count", type=int, default=1000, help="streams: XREAD COUNT (default 1000)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds, transports alternating in order; medians")
    ap.add_argument("--drain", type=float, default=5.0, help="wait for in-flight records after a phase, s")
    ap.add_argument("--timeout", type=float, default=30.0, help="per-command timeout for the children, s")
    ap.add_argument("--json", help="also write the full report to this file")
    ap.add_argument("--config", help=argparse.SUPPRESS)  # a child process of this benchmark
    opts = ap.parse_args(argv)
    if opts.repeat < 1 or opts.light < 1 or opts.window < 1 or opts.batch < 1 or opts.maxlen < 1 or opts.seconds <= 0:
        ap.error("--repeat, --light, --window, --batch, --maxlen and --seconds must be positive")
    if opts.payload < _STAMP.size:
        ap.error(f"--payload: at least {_STAMP.size} bytes")
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    import uvloop

    opts = parse_args(argv)
    if opts.config:
        die_with_parent()
        uvloop.run(serve(json.loads(opts.config)))
        return 0
    del opts.config
    report = uvloop.run(run(opts))
    print(render(report))
    if opts.json:
        Path(opts.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
