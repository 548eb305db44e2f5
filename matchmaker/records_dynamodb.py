"""Session records into a DynamoDB table (``PIXELFLEET_MATCHMAKER__RECORDS_TABLE``): what a
replica on Fargate, whose disk goes with the task, keeps its billing records in.

Records come at least once (docs/records.md): the service takes them under a lease, and
acknowledges them only after ``write`` returns. So each item is keyed by ``session_id``,
and a repeat overwrites the item with the same content (idempotent); a batch is written
with ``BatchWriteItem`` (25 items a request), the items DynamoDB leaves unprocessed
(throttling) are sent again with a bounded, growing delay, and what is still unwritten
after the last try raises, which leaves the whole batch unacknowledged for a later flush.
The boto3 calls run in a thread so the event loop never waits on the network.

Each item carries every field of the record (numbers as DynamoDB numbers, written from
their decimal text, so 0.1 stays 0.1; a null as NULL) plus ``expires_at``, the table's TTL
attribute: ``ended_at`` plus the retention, in whole Unix seconds.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import msgspec
import structlog

from matchmaker.models import Session, SessionRecord
from matchmaker.records import records_of

__all__ = ["BATCH_ITEMS", "TTL_ATTRIBUTE", "DynamoDbSink", "RecordWriteError", "item_of"]

log = structlog.get_logger("matchmaker")

BATCH_ITEMS = 25  # BatchWriteItem's limit per request
TTL_ATTRIBUTE = "expires_at"  # the table's TTL attribute (deploy/cdk: data.py)


class RecordWriteError(RuntimeError):
    """Records that did not reach the table: the batch stays unacknowledged."""


def _value(v: Any) -> dict[str, Any]:
    if v is None:
        return {"NULL": True}
    if isinstance(v, bool):
        return {"BOOL": v}
    if isinstance(v, int | float):
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"not a finite number: {v!r}")
        return {"N": str(Decimal(repr(v)))}
    return {"S": str(v)}


def item_of(record: SessionRecord, retention_s: float) -> dict[str, dict[str, Any]]:
    """The table item of a record (DynamoDB's typed attribute values)."""
    fields: dict[str, Any] = msgspec.to_builtins(record)
    item = {name: _value(value) for name, value in fields.items()}
    if "client_key" not in item:  # msgspec leaves out a field at its default; keep every field
        item["client_key"] = {"NULL": True}
    item[TTL_ATTRIBUTE] = {"N": str(int(record.ended_at + retention_s))}
    return item


def _default_client(region: str | None) -> Any:
    import boto3  # the `aws` extra: only a replica that writes to a table needs it

    return boto3.client("dynamodb", **({"region_name": region} if region else {}))


class DynamoDbSink:
    """``RecordSink`` writing to one table. ``client_factory`` takes the region (tests pass a
    moto-backed or failing client)."""

    def __init__(
        self,
        table: str,
        *,
        retention_days: float = 400.0,
        region: str | None = None,
        client_factory: Callable[[str | None], Any] = _default_client,
        attempts: int = 6,
        first_delay_s: float = 0.05,
        max_delay_s: float = 2.0,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.table = table
        self.retention_s = retention_days * 86400.0
        self.attempts = attempts
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self._client_factory = client_factory
        self._region = region
        self._client: Any = None

    async def _get_client(self) -> Any:
        if self._client is None:  # made in a thread too: boto3 reads its configuration files
            self._client = await asyncio.to_thread(self._client_factory, self._region)
        return self._client

    async def write(self, sessions: list[Session]) -> None:
        if not sessions:
            return
        # One item per session: a repeat within a batch is the same record, and
        # BatchWriteItem refuses a request that names one key twice.
        items = {r.session_id: item_of(r, self.retention_s) for r in records_of(sessions)}
        values = list(items.values())
        for start in range(0, len(values), BATCH_ITEMS):
            await self._write_batch(values[start : start + BATCH_ITEMS])

    async def _write_batch(self, items: list[dict[str, dict[str, Any]]]) -> None:
        client = await self._get_client()
        pending: list[dict[str, Any]] = [{"PutRequest": {"Item": item}} for item in items]
        delay = self.first_delay_s
        for attempt in range(1, self.attempts + 1):
            reply = await asyncio.to_thread(client.batch_write_item, RequestItems={self.table: pending})
            pending = reply.get("UnprocessedItems", {}).get(self.table, [])
            if not pending:
                return
            if attempt < self.attempts:
                await asyncio.sleep(delay)
                delay = min(self.max_delay_s, delay * 2)
        log.warning("records_table_unprocessed", table=self.table, records=len(pending), attempts=self.attempts)
        raise RecordWriteError(f"{len(pending)} records left unprocessed by {self.table} after {self.attempts} tries")
