"""What the Redis broker writes and reads: a batch's records (the delivery format every
node of every release reads, skipping record kinds it does not know), and the directory's
holder and count values (docs/signaling-cluster.md, "Keys and channels")."""

from __future__ import annotations

import struct
from typing import Any

import orjson
import structlog

from signaling.broker import NodeCounts
from signaling.peer_links import Holder

log = structlog.get_logger("signaling.cluster")

_HEAD = struct.Struct("!BHI")  # kind, address length, payload length
ORIGIN = "\x00"  # a frame's record: "<to>\0<origin>" in the address part
FRAME, LINK, HEARTBEAT = 0, 1, 2  # record kinds; a node ignores kinds it does not know


def pack(items: list[tuple[int, str, bytes]]) -> bytes:
    """One batch: records of (kind, to-address, payload)."""
    out = bytearray()
    for kind, to, payload in items:
        raw = to.encode()
        out += _HEAD.pack(kind, len(raw), len(payload))
        out += raw
        out += payload
    return bytes(out)


def unpack(batch: bytes) -> list[tuple[int, str, bytes]]:
    """Raises ``ValueError`` on a truncated batch."""
    items, view, at = [], memoryview(batch), 0
    while at < len(batch):
        if at + _HEAD.size > len(batch):
            raise ValueError("truncated batch header")
        kind, alen, plen = _HEAD.unpack_from(batch, at)
        at += _HEAD.size
        end = at + alen + plen
        if end > len(batch):
            raise ValueError("truncated batch record")
        items.append((kind, bytes(view[at : at + alen]).decode(), bytes(view[at + alen : end])))
        at = end
    return items


def holder_args(holder: Holder | None) -> tuple[str, str]:
    return ("", "") if holder is None else (holder.credential_id, holder.tenant)


def holder_of(fields: Any) -> Holder | None:
    """A holder from ``[jti, tenant]``; None for anything else (missing: an older node)."""
    if isinstance(fields, list) and len(fields) == 2:
        jti, tenant = fields
        if isinstance(jti, str) and jti and isinstance(tenant, str):
            return Holder(jti, tenant)
    return None


def held_by(raw: bytes | None, conn: str) -> Holder | None:
    """The holders-hash value for an id, if it names the entry's own address: one that
    does not is stale (an older node changed the entry) and is ignored."""
    if raw is None:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, list) or len(value) != 3 or value[0] != conn:
        return None
    return holder_of(value[1:])


def decode_counts(flat: list[bytes], own: str) -> dict[str, NodeCounts]:
    """``[node, JSON, ...]`` from the beat script; a malformed record is skipped."""
    out: dict[str, NodeCounts] = {}
    for raw_node, raw in zip(flat[::2], flat[1::2], strict=True):
        node = raw_node.decode()
        if node == own:
            continue
        try:
            value = orjson.loads(raw)
            subs = {str(k): int(v) for k, v in value.get("sub", {}).items()}
            out[node] = NodeCounts(int(value["p"]), int(value["s"]), subs)
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
            log.warning("bad_node_counts", node=node)
    return out
