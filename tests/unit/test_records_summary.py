"""``pixelfleet records summary``: usage per tenant, app and end reason, each session once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from matchmaker.models import EndReason, Session
from matchmaker.records import record_of
from matchmaker.records_summary import BadRecord, read_lines, render_table, summarize
from pixelfleet.cli import main


def line(
    sid: str,
    *,
    tenant: str = "acme",
    app: str = "game",
    reason: EndReason = EndReason.PLAYER_LEFT,
    connected_s: float | None = 60.0,
    held_s: float = 90.0,
    share: float = 0.5,
) -> bytes:
    """One record as the sink writes it: created at 1000, ended ``held_s`` later."""
    end = 1000.0 + held_s
    s = Session(
        session_id=sid,
        tenant=tenant,
        app=app,
        slot_id="h/0",
        host_id="h",
        region="eu",
        streamer_id="h-0",
        signaling_url="ws://s",
        created_at=1000.0,
        connected_at=None if connected_s is None else end - connected_s,
        last_activity=1000.0,
        ended_at=end,
        end_reason=reason,
        gpu_share=share,
    )
    return msgspec.json.encode(record_of(s)) + b"\n"


def lines(*raw: bytes, name: str = "f") -> list[tuple[str, bytes]]:
    return [(f"{name}:{i}", r) for i, r in enumerate(raw, 1)]


def test_usage_per_tenant_app_and_reason_with_totals() -> None:
    s = summarize(
        lines(
            line("a", connected_s=60.0, held_s=90.0, share=0.5),
            line("b", connected_s=120.0, held_s=3600.0, share=1.0),
            line("c", reason=EndReason.FORCE_ENDED, connected_s=30.0, held_s=36.0, share=0.25),
            line("d", tenant="beta", app="maze", reason=EndReason.NEVER_CONNECTED, connected_s=None, held_s=60.0),
        )
    )
    left = s.by_group[("acme", "game", "player_left")]
    assert (left.sessions, left.minutes, left.gpu_seconds) == (2, 3.0, 45.0 + 3600.0)
    forced = s.by_group[("acme", "game", "force_ended")]
    assert (forced.sessions, forced.minutes, forced.gpu_seconds) == (1, 0.5, 9.0)
    never = s.by_group[("beta", "maze", "never_connected")]
    assert (never.sessions, never.minutes, never.gpu_seconds) == (1, 0.0, 30.0)
    assert (s.by_tenant["acme"].sessions, s.by_tenant["acme"].minutes) == (3, 3.5)
    assert (s.total.sessions, s.total.connected_s, s.total.gpu_seconds) == (4, 210.0, 3684.0)
    assert s.total.gpu_hours == pytest.approx(3684.0 / 3600.0)
    assert (s.records, s.repeats, s.out_of_order, s.skipped) == (4, 0, 0, [])


def test_a_session_written_more_than_once_counts_once_across_files() -> None:
    a, b = line("a", connected_s=60.0), line("b", connected_s=120.0)
    s = summarize([*lines(a, b, name="r0"), *lines(b"\n", a, name="r1")])
    assert (s.total.sessions, s.total.connected_s, s.records, s.repeats) == (2, 180.0, 3, 1)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b'{"session_id": "a", "tenant": "acme"', "not JSON"),
        (b'{"session_id": "a"}', "not a session record"),
        (line("a").replace(b'"player_left"', b'"went_home"'), "not a session record.*end_reason"),
        (line("a").replace(b'"duration_s":60.0', b'"duration_s":-1.0'), "not a session record.*duration_s"),
        (line("a").replace(b'"format_version":1', b'"format_version":2'), "record format 2, this pixelfleet reads"),
        (line("a").replace(b'"format_version":1,', b""), "not a session record.*format_version"),
    ],
    ids=["cut-short", "missing-fields", "unknown-reason", "negative-duration", "newer-format", "older-format"],
)
def test_an_invalid_line_is_an_error_naming_its_file_and_line(raw: bytes, why: str) -> None:
    with pytest.raises(BadRecord, match=f"^r0:2: {why}"):
        summarize(lines(line("a"), raw, line("b"), name="r0"))


def test_invalid_lines_are_skipped_and_counted_when_asked() -> None:
    s = summarize(lines(line("a"), b"{oops\n", line("b"), name="r0"), skip_invalid=True)
    assert s.total.sessions == 2 and len(s.skipped) == 1 and s.skipped[0].startswith("r0:2: not JSON")


def test_a_record_with_times_out_of_order_is_counted_and_flagged() -> None:
    raw = line("a").replace(b'"ended_at":1090.0', b'"ended_at":999.42')
    s = summarize(lines(raw, line("b")))
    assert (s.total.sessions, s.out_of_order) == (2, 1)


def test_the_table_has_a_row_per_group_tenant_totals_and_the_grand_total() -> None:
    s = summarize(lines(line("a"), line("c", reason=EndReason.HOST_DEAD), line("d", tenant="beta")))
    rows = [r.split() for r in render_table(s).splitlines()]
    assert rows[0] == ["tenant", "app", "end", "reason", "sessions", "minutes", "GPU-hours"]
    assert rows[1:6] == [
        ["acme", "game", "host_dead", "1", "1.00", "0.0125"],
        ["acme", "game", "player_left", "1", "1.00", "0.0125"],
        ["acme", "*", "*", "2", "2.00", "0.0250"],
        ["beta", "game", "player_left", "1", "1.00", "0.0125"],
        ["beta", "*", "*", "1", "1.00", "0.0125"],
    ]
    assert rows[6] == ["total", "3", "3.00", "0.0375"]
    assert rows[7][:3] == ["3", "records", "read;"]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["records", "summary", *argv], environ={})
    out, err = capsys.readouterr()
    return code, out, err


def test_the_command_prints_json_for_several_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "r0.jsonl").write_bytes(line("a") + line("b", reason=EndReason.FORCE_ENDED))
    (tmp_path / "r1.jsonl").write_bytes(line("a"))
    code, out, err = _run([str(tmp_path / "r0.jsonl"), str(tmp_path / "r1.jsonl"), "--json"], capsys)
    assert (code, err) == (0, "")
    body: dict[str, Any] = json.loads(out)
    assert body["total"] == {"sessions": 2, "minutes": 2.0, "gpu_hours": 0.025}
    assert [(g["end_reason"], g["sessions"]) for g in body["groups"]] == [("force_ended", 1), ("player_left", 1)]
    assert (body["records"], body["repeats"], body["skipped"]) == (3, 1, [])


def test_the_command_fails_on_an_invalid_line_unless_told_to_skip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(line("a") + b'{"session_id": "b", "ten')
    code, out, err = _run([str(path)], capsys)
    assert (code, out) == (2, "")
    assert err.startswith(f"pixelfleet records summary: {path}:2: not JSON")
    code, out, err = _run([str(path), "--skip-invalid"], capsys)
    assert code == 0 and f"skipped {path}:2: not JSON" in err and "1 invalid lines skipped" in out


def test_the_command_fails_on_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run([str(tmp_path / "nope.jsonl")], capsys)
    assert (code, out) == (2, "") and "nope.jsonl" in err and err.count("\n") == 1


def test_read_lines_numbers_lines_per_file(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x\ny\n")
    (tmp_path / "b").write_bytes(b"z")
    got = list(read_lines([tmp_path / "a", tmp_path / "b"]))
    assert got == [(f"{tmp_path}/a:1", b"x\n"), (f"{tmp_path}/a:2", b"y\n"), (f"{tmp_path}/b:1", b"z")]
