"""Usage from session records: sessions, minutes and GPU-hours per tenant, app and end
reason (``pixelfleet records summary``), the basis of usage billing (docs/records.md).

Records are written at least once, so a session may appear more than once, in one file or
across replicas' files: each ``session_id`` counts once (its first record). A line that is
not a valid record stops the summary with its file and line number, since a bill built on
silently missing lines is wrong; ``skip_invalid`` counts and lists such lines instead.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import msgspec

from matchmaker.models import RECORD_FORMAT_VERSION, SessionRecord

__all__ = ["BadRecord", "Summary", "Usage", "parse_record", "read_lines", "render_table", "run_summary", "summarize"]

_decoder = msgspec.json.Decoder(SessionRecord)


class BadRecord(ValueError):
    """A line that is not a valid record, named ``FILE:LINE: why``."""


@dataclass
class Usage:
    """Sessions and their summed time: ``connected_s`` (billable, ``duration_s``) and
    ``gpu_seconds``."""

    sessions: int = 0
    connected_s: float = 0.0
    gpu_seconds: float = 0.0

    def add(self, r: SessionRecord) -> None:
        self.sessions += 1
        self.connected_s += r.duration_s
        self.gpu_seconds += r.gpu_seconds

    @property
    def minutes(self) -> float:
        return self.connected_s / 60.0

    @property
    def gpu_hours(self) -> float:
        return self.gpu_seconds / 3600.0

    def as_json(self) -> dict[str, Any]:
        return {
            "sessions": self.sessions,
            "minutes": round(self.minutes, 6),
            "gpu_hours": round(self.gpu_hours, 9),  # to the millisecond of GPU time
        }


@dataclass
class Summary:
    by_group: dict[tuple[str, str, str], Usage] = field(default_factory=dict)  # (tenant, app, end reason)
    by_tenant: dict[str, Usage] = field(default_factory=dict)
    total: Usage = field(default_factory=Usage)
    records: int = 0  # valid records read, repeats included
    repeats: int = 0  # records of a session already counted
    out_of_order: int = 0  # sessions whose times are not created <= connected <= ended
    skipped: list[str] = field(default_factory=list)  # "FILE:LINE: why", with skip_invalid

    def as_json(self) -> dict[str, Any]:
        return {
            "groups": [
                {"tenant": t, "app": a, "end_reason": reason, **u.as_json()}
                for (t, a, reason), u in sorted(self.by_group.items())
            ],
            "tenants": [{"tenant": t, **u.as_json()} for t, u in sorted(self.by_tenant.items())],
            "total": self.total.as_json(),
            "records": self.records,
            "repeats": self.repeats,
            "out_of_order": self.out_of_order,
            "skipped": self.skipped,
        }


def parse_record(raw: bytes, where: str) -> SessionRecord:
    """One line's record; ``BadRecord`` naming ``where`` if it is not a valid one."""
    try:
        record = _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise BadRecord(f"{where}: not a session record: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadRecord(f"{where}: not JSON (a line cut short?): {exc}") from None
    if record.format_version != RECORD_FORMAT_VERSION:
        raise BadRecord(
            f"{where}: record format {record.format_version}, this pixelfleet reads format {RECORD_FORMAT_VERSION}"
        )
    return record


def summarize(lines: Iterable[tuple[str, bytes]], *, skip_invalid: bool = False) -> Summary:
    """The usage in ``(where, line)`` pairs (``where``: ``FILE:LINE``); blank lines are
    ignored. Raises ``BadRecord`` at the first invalid line unless ``skip_invalid``."""
    out = Summary()
    seen: set[str] = set()
    for where, raw in lines:
        if not raw.strip():
            continue
        try:
            r = parse_record(raw, where)
        except BadRecord as exc:
            if not skip_invalid:
                raise
            out.skipped.append(str(exc))
            continue
        out.records += 1
        if r.session_id in seen:
            out.repeats += 1
            continue
        seen.add(r.session_id)
        if not (r.created_at <= (r.ended_at if r.connected_at is None else r.connected_at) <= r.ended_at):
            out.out_of_order += 1
        out.by_group.setdefault((r.tenant, r.app, str(r.end_reason)), Usage()).add(r)
        out.by_tenant.setdefault(r.tenant, Usage()).add(r)
        out.total.add(r)
    return out


def read_lines(paths: Iterable[str | Path]) -> Iterator[tuple[str, bytes]]:
    """Each line of each file, with its ``FILE:LINE``; ``OSError`` for a file not readable."""
    for path in paths:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                yield f"{path}:{number}", raw


def render_table(s: Summary) -> str:
    """The summary as an aligned text table: one row per tenant, app and end reason, each
    tenant's total (app and reason ``*``), the grand total, then what was read."""
    rows: list[tuple[str, ...]] = [("tenant", "app", "end reason", "sessions", "minutes", "GPU-hours")]

    def row(tenant: str, app: str, reason: str, u: Usage) -> tuple[str, ...]:
        return tenant, app, reason, str(u.sessions), f"{u.minutes:.2f}", f"{u.gpu_hours:.4f}"

    for tenant, tenant_usage in sorted(s.by_tenant.items()):
        rows += [row(t, a, reason, u) for (t, a, reason), u in sorted(s.by_group.items()) if t == tenant]
        rows.append(row(tenant, "*", "*", tenant_usage))
    rows.append(row("total", "", "", s.total))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    lines.append(
        f"{s.records} records read; {s.repeats} repeats of a session counted once; "
        f"{len(s.skipped)} invalid lines skipped; {s.out_of_order} sessions with times out of order"
    )
    return "\n".join(line.rstrip() for line in lines)


def run_summary(
    paths: list[str], *, as_json: bool = False, skip_invalid: bool = False, out: TextIO | None = None
) -> int:
    """``pixelfleet records summary``: prints the summary; 2 with one line on stderr for a
    file that cannot be read or, without ``skip_invalid``, an invalid line."""
    out = out or sys.stdout
    try:
        summary = summarize(read_lines(paths), skip_invalid=skip_invalid)
    except (OSError, BadRecord) as exc:
        print(f"pixelfleet records summary: {exc}", file=sys.stderr)
        return 2
    for why in summary.skipped:
        print(f"pixelfleet records summary: skipped {why}", file=sys.stderr)
    print(json.dumps(summary.as_json(), indent=2) if as_json else render_table(summary), file=out)
    return 0
