"""The session record: its figures, its time order, its sinks, and the documented end reasons."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest
from structlog.testing import capture_logs

from matchmaker.models import RECORD_FORMAT_VERSION, EndReason, Session, SessionRecord
from matchmaker.records import JsonLinesSink, MemorySink, open_sink, record_of, times_ordered

DOC = Path(__file__).resolve().parents[2] / "docs" / "records.md"


def ended(
    i: int = 0,
    *,
    created: float = 100.0,
    connected: float | None = 101.0,
    end: float = 110.0,
    share: float | None = 0.5,
    reason: EndReason = EndReason.PLAYER_LEFT,
) -> Session:
    return Session(
        session_id=f"s{i}",
        tenant="t",
        app="a",
        slot_id="h/0",
        host_id="h",
        region="r",
        streamer_id="h-0",
        signaling_url="ws://s",
        client_key="k",
        created_at=created,
        connected_at=connected,
        last_activity=created,
        ended_at=end + i,
        end_reason=reason,
        gpu_share=share,
    )


def test_a_record_bills_the_connected_time_and_the_gpu_over_the_held_time() -> None:
    r = record_of(ended(created=100.0, connected=101.5, end=110.0, share=0.5))
    assert r.format_version == RECORD_FORMAT_VERSION == 1
    assert (r.duration_s, r.held_s, r.gpu_share, r.gpu_seconds) == (8.5, 10.0, 0.5, 5.0)
    assert (r.streamer_id, r.client_key, r.end_reason) == ("h-0", "k", EndReason.PLAYER_LEFT)
    assert times_ordered(r)


def test_a_session_never_connected_bills_no_time_but_its_gpu_hold() -> None:
    r = record_of(ended(connected=None, end=160.0, share=1.0, reason=EndReason.NEVER_CONNECTED))
    assert (r.connected_at, r.duration_s, r.held_s, r.gpu_seconds) == (None, 0.0, 60.0, 60.0)
    assert times_ordered(r)


def test_a_slot_stored_before_gpu_share_existed_reads_as_a_whole_gpu() -> None:
    assert record_of(ended(share=None)).gpu_seconds == 10.0


def test_a_session_that_has_not_ended_has_no_record() -> None:
    live = msgspec.structs.replace(ended(), ended_at=None, end_reason=None)
    with pytest.raises(ValueError, match="has not ended"):
        record_of(live)


@pytest.mark.parametrize(
    ("created", "connected", "end"),
    [(100.0, 99.0, 110.0), (100.0, 111.0, 110.0), (100.0, None, 99.42)],
    ids=["connected-before-created", "connected-after-end", "ended-before-created"],
)
def test_times_out_of_order_are_told(created: float, connected: float | None, end: float) -> None:
    assert not times_ordered(record_of(ended(created=created, connected=connected, end=end)))


async def test_the_file_sink_writes_one_valid_ordered_record_per_line(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "records.jsonl"
    sink = JsonLinesSink(path)
    await sink.write([ended(i) for i in range(3)])
    await sink.write([ended(3, connected=None, reason=EndReason.HOST_DEAD)])
    lines = path.read_bytes().splitlines()
    records = [msgspec.json.decode(line, type=SessionRecord) for line in lines]
    assert [r.session_id for r in records] == ["s0", "s1", "s2", "s3"]
    for r in records:
        assert r.created_at <= (r.connected_at if r.connected_at is not None else r.created_at) <= r.ended_at
        assert times_ordered(r)
    assert records[3].end_reason is EndReason.HOST_DEAD and records[3].duration_s == 0.0


async def test_a_record_with_times_out_of_order_is_written_as_it_is_with_a_warning(tmp_path: Path) -> None:
    """Billing data is never dropped: the times as they came tell the bug, the durations
    do not go negative."""
    path = tmp_path / "records.jsonl"
    bad = ended(created=100.0, connected=None, end=99.42, reason=EndReason.HOST_DEAD)
    with capture_logs() as logs:
        await JsonLinesSink(path).write([bad, ended(1)])
    [r, good] = [msgspec.json.decode(line, type=SessionRecord) for line in path.read_bytes().splitlines()]
    assert (r.created_at, r.ended_at, r.duration_s, r.held_s, r.gpu_seconds) == (100.0, 99.42, 0.0, 0.0, 0.0)
    assert good.session_id == "s1"
    warnings = [e for e in logs if e["event"] == "record_times_out_of_order"]
    assert [(w["session"], w["log_level"]) for w in warnings] == [("s0", "warning")]


async def test_memory_sink_keeps_the_last_records_and_counts_the_dropped() -> None:
    sink = MemorySink(max_records=3)
    await sink.write([ended(i) for i in range(2)])
    assert [r.session_id for r in sink.records] == ["s0", "s1"] and sink.dropped == 0
    await sink.write([ended(i) for i in range(2, 7)])
    assert [r.session_id for r in sink.records] == ["s4", "s5", "s6"] and sink.dropped == 4


def test_the_settings_pick_the_sink() -> None:
    assert isinstance(open_sink("/tmp/records.jsonl"), JsonLinesSink)
    memory = open_sink(None, 5)
    assert isinstance(memory, MemorySink) and memory.records.maxlen == 5
    default = open_sink(None)
    assert isinstance(default, MemorySink) and default.records.maxlen == 10_000


def test_the_doc_lists_exactly_the_end_reasons() -> None:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## End reasons", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `([a-z_]+)` \| \S", section, flags=re.MULTILINE)
    assert sorted(documented) == sorted(r.value for r in EndReason)
    assert len(documented) == len(set(documented))


def test_the_doc_lists_exactly_the_record_fields() -> None:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Fields", 1)[1].split("\n## ", 1)[0]
    documented = [
        name
        for cell in re.findall(r"^\| (`[^|]+) \|", section, re.MULTILINE)
        for name in re.findall(r"`([a-z_]+)`", cell)
    ]
    assert sorted(documented) == sorted(SessionRecord.__struct_fields__)
