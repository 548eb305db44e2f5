"""Session records into DynamoDB (``PIXELFLEET_MATCHMAKER__RECORDS_TABLE``): a real matchmaker
(memory store) ends real sessions, and its records land in a table that moto plays, with
every documented field, the TTL attribute and numbers as DynamoDB numbers. A record written
twice (the at-least-once repeat) leaves one item. A table that refuses the write leaves the
record unacknowledged and logged, and a later flush writes it once the table is there.
UnprocessedItems (throttling), which moto never returns, is played by a client that leaves
items unprocessed for a few calls and then passes them through to moto's table."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import msgspec
import pytest
from moto import mock_aws
from structlog.testing import capture_logs

from matchmaker.config import MatchmakerSettings
from matchmaker.models import AllocationRequest, EndReason, SessionRecord
from matchmaker.records import BothSinks, JsonLinesSink, open_sink
from matchmaker.records_dynamodb import TTL_ATTRIBUTE, DynamoDbSink, RecordWriteError
from matchmaker.server import build_matchmaker
from matchmaker.service import Allocation, Matchmaker
from tests.support.hosts import heartbeat, registration

pytestmark = pytest.mark.integration

REGION = "us-east-1"
TABLE = "pixelfleet-test-sessions"
DOC = Path(__file__).resolve().parents[2] / "docs" / "records.md"
DAY = 86400


class Clock:
    def __init__(self, now: float = 1_718_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Any:
    for k, v in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(k, v)
    with mock_aws():
        yield boto3.client("dynamodb", region_name=REGION)


def create_table(client: Any) -> None:
    """The table as deploy/cdk's data stack makes it: key session_id, TTL on expires_at."""
    client.create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "session_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "session_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    client.update_time_to_live(
        TableName=TABLE, TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE}
    )


def items(client: Any) -> dict[str, dict[str, Any]]:
    from boto3.dynamodb.types import TypeDeserializer

    d = TypeDeserializer()
    out = {}
    for item in client.scan(TableName=TABLE)["Items"]:
        out[item["session_id"]["S"]] = {k: d.deserialize(v) for k, v in item.items()}
    return out


def matchmaker(clock: Clock, **settings: Any) -> Matchmaker:
    s = MatchmakerSettings(session_token_secret="s" * 40, records_table=TABLE, **settings)
    return build_matchmaker(s, clock=clock)


async def two_sessions(mm: Matchmaker, clock: Clock) -> list[str]:
    """Two sessions on a real host: one connected and left, one never connected (ended by
    an operator); returns their ids."""
    await mm.register_host(registration("h1", slots=2, gpu_share=0.5))
    await mm.heartbeat("h1", heartbeat(("ready", "ready")))
    ids = []
    for key in ("player-1", "player-2"):
        got = await mm.allocate(AllocationRequest(tenant="acme", app="game", client_key=key, subject="u"))
        assert isinstance(got, Allocation)
        ids.append(got.session.session_id)
    clock.now += 2.5
    await mm.player_connected(ids[0])
    clock.now += 60.25
    await mm.end(ids[0], EndReason.PLAYER_LEFT)
    await mm.end(ids[1], EndReason.FORCE_ENDED)
    return ids


async def flushed(mm: Matchmaker) -> None:
    if mm._flushing is not None:  # noqa: SLF001 - the background flush the end kicked off
        await mm._flushing  # noqa: SLF001


async def test_ended_sessions_land_in_the_table_with_every_field(aws: Any) -> None:
    create_table(aws)
    clock = Clock()
    mm = matchmaker(clock, records_retention_days=30)
    try:
        ids = await two_sessions(mm, clock)
        await flushed(mm)
        stored = items(aws)
        assert set(stored) == set(ids)
        fields = set(SessionRecord.__struct_fields__)
        assert {"format_version", "session_id", "client_key", "gpu_seconds"} <= fields
        assert fields <= set(re.findall(r"`([a-z_]+)`", DOC.read_text()))  # every field is documented
        left, forced = stored[ids[0]], stored[ids[1]]
        for item in stored.values():
            assert set(item) == fields | {TTL_ATTRIBUTE}
            assert item[TTL_ATTRIBUTE] == int(item["ended_at"]) + 30 * DAY
            assert all(isinstance(item[f], Decimal) for f in ("created_at", "ended_at", "held_s", "gpu_seconds"))
        assert left["end_reason"] == "player_left" and forced["end_reason"] == "force_ended"
        assert (left["duration_s"], left["held_s"], left["gpu_share"], left["gpu_seconds"]) == (
            Decimal("60.25"),
            Decimal("62.75"),
            Decimal("0.5"),
            Decimal("31.375"),
        )
        assert forced["connected_at"] is None and forced["duration_s"] == 0
        assert left["client_key"] == "player-1" and left["format_version"] == 1
        assert (left["tenant"], left["app"], left["host_id"], left["region"]) == ("acme", "game", "h1", "eu")
        assert {left["slot_id"], forced["slot_id"]} == {"h1/0", "h1/1"}
        # nothing left to take: both were acknowledged after the write
        assert await mm.store.take_records(clock.now + 3600, 30.0, 10) == []
    finally:
        await mm.aclose()


class DiesBeforeTheAck:
    """The table sink of a replica that dies after its first write, before acknowledging."""

    def __init__(self) -> None:
        self.sink, self.writes = DynamoDbSink(TABLE), 0

    async def write(self, sessions: list[Any]) -> None:
        self.writes += 1
        await self.sink.write(sessions)
        if self.writes == 1:
            raise RuntimeError("replica gone between the write and the acknowledgement")


async def test_a_repeat_overwrites_its_own_item(aws: Any) -> None:
    from tests.unit.test_matchmaker_records import ended

    create_table(aws)
    clock = Clock()
    sink = DiesBeforeTheAck()
    mm = build_matchmaker(MatchmakerSettings(session_token_secret="s" * 40), sink=sink, clock=clock)
    try:
        ids = await two_sessions(mm, clock)
        await flushed(mm)
        first = items(aws)
        assert set(first) == set(ids) and sink.writes == 1
        clock.now += 31  # the lease runs out: the records are taken and written again
        await mm.sweep()
        assert sink.writes == 2 and items(aws) == first
        assert await mm.store.take_records(clock.now + 3600, 30.0, 10) == []
    finally:
        await mm.aclose()
    # a session twice in one batch (BatchWriteItem refuses a key named twice in a request)
    await DynamoDbSink(TABLE).write([ended(7), ended(7)])
    assert set(items(aws)) == {*ids, "s7"}


async def test_a_failed_write_leaves_the_record_unacknowledged_and_logged(aws: Any) -> None:
    clock = Clock()
    mm = matchmaker(clock)  # no table yet
    try:
        with capture_logs() as logs:
            ids = await two_sessions(mm, clock)
            await flushed(mm)
        failed = [e for e in logs if e["event"] == "record_sink_failed"]
        assert failed and "ResourceNotFoundException" in failed[0]["error"], logs
        # unacknowledged: taken again once the lease has run out, by this replica's next sweep
        create_table(aws)
        clock.now += 31
        await mm.sweep()
        assert set(items(aws)) == set(ids)
    finally:
        await mm.aclose()


class Throttled:
    """A client whose BatchWriteItem leaves everything unprocessed ``refusals`` times."""

    def __init__(self, real: Any, refusals: int) -> None:
        self.real, self.refusals, self.calls = real, refusals, 0

    def batch_write_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:  # noqa: N803 - boto3's name
        self.calls += 1
        if self.calls <= self.refusals:
            return {"UnprocessedItems": RequestItems}
        reply: dict[str, Any] = self.real.batch_write_item(RequestItems=RequestItems)
        return reply


async def test_unprocessed_items_are_retried_then_given_up_on(aws: Any) -> None:
    from tests.unit.test_matchmaker_records import ended

    create_table(aws)
    sessions = [ended(i) for i in range(30)]  # two requests: 25 + 5
    slow = Throttled(aws, refusals=2)
    sink = DynamoDbSink(TABLE, client_factory=lambda _: slow, first_delay_s=0.001, attempts=3)
    await sink.write(sessions)
    assert len(items(aws)) == 30 and slow.calls == 4  # 2 refused + 25 + 5
    stuck = Throttled(aws, refusals=10**6)
    sink = DynamoDbSink(TABLE, client_factory=lambda _: stuck, first_delay_s=0.001, attempts=3)
    with capture_logs() as logs, pytest.raises(RecordWriteError, match="unprocessed"):
        await sink.write([ended(99)])
    assert stuck.calls == 3 and [e["event"] for e in logs] == ["records_table_unprocessed"]
    assert "s99" not in items(aws)


def test_the_settings_pick_the_table_and_the_file(tmp_path: Path) -> None:
    table = open_sink(None, table=TABLE, retention_days=7)
    assert isinstance(table, DynamoDbSink) and table.retention_s == 7 * DAY
    both = open_sink(str(tmp_path / "r.jsonl"), table=TABLE)
    assert isinstance(both, BothSinks)
    assert [type(s) for s in both.sinks] == [JsonLinesSink, DynamoDbSink]
    with pytest.raises(msgspec.ValidationError, match="records_retention_days"):
        msgspec.convert({"records_retention_days": 0}, MatchmakerSettings)
