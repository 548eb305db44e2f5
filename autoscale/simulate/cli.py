"""``pixelfleet simulate``: replay traces through the three pools and print the table."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import msgspec

from autoscale.events import decode_event_specs
from autoscale.simulate.compare import SIZERS, simulate
from autoscale.simulate.config import load_config
from autoscale.simulate.engine import Result
from autoscale.simulate.report import as_json, html_page, table
from autoscale.simulate.traces import GENERATORS, Trace, load_csv, with_events


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trace",
        action="append",
        choices=sorted(GENERATORS),
        help="generated trace (repeat; default: all three unless --csv)",
    )
    p.add_argument("--csv", action="append", default=[], metavar="FILE", help="real arrivals (repeat)")
    p.add_argument(
        "--events", metavar="FILE", help="announced events for the --csv traces (the events file format; ours is told)"
    )
    p.add_argument("--days", type=int, default=7, help="length of generated traces, days (default 7)")
    p.add_argument("--peak", type=float, default=200.0, help="generated traces: daily peak players (default 200)")
    p.add_argument("--config", metavar="FILE", help="JSON simulator settings (docs/autoscaling.md)")
    p.add_argument("--pools", default=",".join(SIZERS), help=f"comma-separated, from {', '.join(SIZERS)} (default all)")
    p.add_argument("--html", metavar="FILE", help="write the plots to this HTML page")
    p.add_argument("--json", metavar="FILE", help="write the results (no time series) as JSON")


def run(args: argparse.Namespace, argv: list[str]) -> int:
    try:
        config = load_config(args.config)
        pools = tuple(p.strip() for p in args.pools.split(",") if p.strip())
        bad = [p for p in pools if p not in SIZERS]
        if bad or not pools:
            raise ValueError(f"--pools: unknown {', '.join(bad) or '(none)'}; choose from {', '.join(SIZERS)}")
        if args.days < 1 or args.peak <= 0:
            raise ValueError("--days must be >= 1 and --peak > 0")
        traces: list[Trace] = [load_csv(path) for path in args.csv]
        if args.events:
            if not args.csv:
                raise ValueError("--events applies to --csv traces (the generated event trace has its own)")
            try:
                specs = decode_event_specs(Path(args.events).read_bytes())
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise ValueError(f"--events {args.events}: {exc}") from None
            traces = [with_events(t, specs) for t in traces]
        for name in args.trace or ([] if args.csv else sorted(GENERATORS)):
            traces.append(GENERATORS[name](days=args.days, peak=args.peak))  # type: ignore[call-arg]
    except (OSError, ValueError) as exc:
        print(f"pixelfleet simulate: {exc}", file=sys.stderr)
        return 2
    results: list[Result] = []
    for trace in traces:
        rs = simulate(config, trace, pools)
        results += rs
        print(f"\n## {trace.name}: {len(trace.arrivals):,} sessions over {trace.duration_s / 86400:.1f} days\n")
        print(table(rs), flush=True)
    command = "pixelfleet simulate " + shlex.join(argv)
    if args.html:
        Path(args.html).write_text(html_page(results, command))
    if args.json:
        Path(args.json).write_bytes(as_json(results))
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="pixelfleet simulate",
        description="Replay arrival traces through a static peak pool, reactive target tracking and "
        "the forecast autoscaler (docs/autoscaling.md).",
    )
    add_arguments(p)
    return run(p.parse_args(argv), argv)
