"""The Lua scripts of the Redis store, loaded from ``matchmaker/lua/`` and registered once.

A script's first line may name shared helper files: ``--! include: prelude tenant``.
The loader puts those helpers before the script's text, so Redis numbers the lines of
the whole: an error on line N of what Redis ran is line ``N - offset`` of the script's
file, where ``offset`` is the number of helper lines. ``explain`` rewrites the line
numbers of a Redis script error that way (``@user_script:N`` becomes
``matchmaker/lua/NAME.lua:M``, or ``.../HELPER.lua:M`` for a helper's line), so an error
points at the file a reader opens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

RedisClient = Redis | RedisCluster

_INCLUDE = "--! include:"
_LINE = re.compile(r"user_script:(\d+)")


def _read(name: str) -> str:
    return resources.files("matchmaker").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class Source:
    """A script as sent to Redis, and where each of its lines came from."""

    name: str
    text: str
    parts: tuple[tuple[str, int], ...]  # (file name, lines) in the order they were joined

    def where(self, line: int) -> str:
        """``lua/FILE.lua:N`` of line ``line`` of the text Redis ran."""
        for name, count in self.parts:
            if line <= count:
                return f"matchmaker/lua/{name}.lua:{line}"
            line -= count
        return f"matchmaker/lua/{self.name}.lua:?"


def load_source(name: str) -> Source:
    body = _read(name)
    first = body.split("\n", 1)[0]
    includes = first[len(_INCLUDE) :].split() if first.startswith(_INCLUDE) else []
    texts = [_read(n) for n in includes]
    parts = [(n, t.count("\n")) for n, t in zip(includes, texts, strict=True)]
    return Source(name, "".join(texts) + body, (*parts, (name, body.count("\n") + 1)))


class Scripts:
    """Every script, registered with one client (EVALSHA; reloaded on NOSCRIPT by redis-py)."""

    NAMES = (
        "register_host",
        "heartbeat_host",
        "set_draining",
        "expire_hosts",
        "forget_hosts",
        "drop_hosts",
        "host_meta",
        "mark_clean",
        "apply_host",
        "heartbeat_slots",
        "allocate",
        "end_session",
        "session_op",
        "due_sessions",
        "enqueue",
        "ticket_mark",
        "finish_ticket",
        "position",
        "queue_lengths",
        "take_records",
        "ack_records",
    )

    def __init__(self, client: RedisClient) -> None:
        self._sources = {name: load_source(name) for name in self.NAMES}
        self._by_sha: dict[str, Source] = {}
        self._scripts: dict[str, AsyncScript] = {}
        for name, src in self._sources.items():
            script = client.register_script(src.text)
            self._scripts[name] = script
            self._by_sha[str(script.sha)] = src
        s = self._scripts
        self.register_host, self.heartbeat_host, self.set_draining = (
            s["register_host"],
            s["heartbeat_host"],
            s["set_draining"],
        )
        self.expire_hosts, self.forget_hosts, self.drop_hosts = s["expire_hosts"], s["forget_hosts"], s["drop_hosts"]
        self.host_meta, self.mark_clean, self.apply_host = s["host_meta"], s["mark_clean"], s["apply_host"]
        self.heartbeat_slots, self.allocate, self.end_session = s["heartbeat_slots"], s["allocate"], s["end_session"]
        self.session_op, self.due_sessions, self.enqueue = s["session_op"], s["due_sessions"], s["enqueue"]
        self.ticket_mark, self.finish_ticket, self.position = s["ticket_mark"], s["finish_ticket"], s["position"]
        self.queue_lengths, self.take_records, self.ack_records = (
            s["queue_lengths"],
            s["take_records"],
            s["ack_records"],
        )

    def explain(self, message: str) -> str:
        """A Redis script error with its line numbers translated to the script files'."""
        src = next((s for sha, s in self._by_sha.items() if sha in message), None)
        if src is None:
            return message
        return _LINE.sub(lambda m: src.where(int(m.group(1))), message)
