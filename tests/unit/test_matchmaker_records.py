"""The records sink without a file is bounded: a long-running replica must not grow forever."""

from __future__ import annotations

from matchmaker.models import EndReason, Session
from matchmaker.records import JsonLinesSink, MemorySink, open_sink


def ended(i: int) -> Session:
    return Session(
        session_id=f"s{i}",
        tenant="t",
        app="a",
        slot_id="h/0",
        host_id="h",
        region="r",
        streamer_id="h-0",
        signaling_url="ws://s",
        created_at=0.0,
        connected_at=1.0,
        last_activity=1.0,
        ended_at=2.0 + i,
        end_reason=EndReason.PLAYER_LEFT,
    )


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
