"""What the metrics cost on signalling's relay path, measured in one run, in-process.

1. relay: ``SignalingCore.receive`` relaying ``iceCandidate`` messages (a player's to its
   streamer and the streamer's back, half each) with the per-message count on (the core
   as shipped) and off (the same ``receive`` with its two counting lines taken out, built
   from the shipped source at run time, so it cannot drift from it). In each of
   ``--rounds`` rounds the two take ``--repeat`` short turns each of ``--messages``
   messages, interleaved (order swapped every turn), and each keeps its best turn.
2. redis: one Redis round trip through ``pixelfleet.redis_timing.instrument`` (the timer
   signalling's broker wraps its client in) against the bare call, on a stand-in client
   whose ``execute_command`` answers at once, so the figure is the wrapper's own cost;
   a relayed frame pays it once per published batch, not per frame.

    python -m loadtest.bench_metrics_cost --rounds 5 --json out.json

Prints ns per message (per call) for each round, the medians and the on/off ratio of each
round (paired: the two ran interleaved) with their median, the figure to read.
In-process and single-threaded: a shared or busy box scatters the turns, which is why
they alternate; read the per-round ratios, not one figure.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import platform
import statistics
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

import signaling.protocol as protocol
from pixelfleet.redis_timing import instrument
from signaling.protocol import Role, Send, SignalingCore

COUNTING = "peer.counts[kind] += 1\n"
CANDIDATE = {"candidate": "candidate:1 1 UDP 2122252543 10.0.0.2 50000 typ host", "sdpMid": "0", "sdpMLineIndex": 0}


def core_without_counting() -> type[SignalingCore]:
    """``SignalingCore`` whose ``receive`` is the shipped one minus the count."""
    source = textwrap.dedent(inspect.getsource(SignalingCore.receive))
    body = textwrap.indent(COUNTING, " " * 4)
    if body not in source:
        raise SystemExit("SignalingCore.receive no longer counts as this benchmark expects: update COUNTING")
    namespace = dict(vars(protocol))
    exec(source.replace(body, ""), namespace)  # noqa: S102 - the repo's own source, minus two lines
    return type("UncountedCore", (SignalingCore,), {"receive": namespace["receive"]})


def relay_pair(core_type: type[SignalingCore]) -> tuple[SignalingCore, Callable[[int], int]]:
    """A streamer and a subscribed player on a fresh core; ``run(n)`` relays n messages
    and returns how many reached the other side (every one, or the setup is wrong)."""
    core = core_type()
    streamer, _ = core.connect(Role.STREAMER)
    core.receive(streamer, {"type": "endpointId", "id": "Cam"})
    player, _ = core.connect(Role.PLAYER)
    core.receive(player, {"type": "subscribe", "streamerId": "Cam"})
    peer = core._peers[player]  # noqa: SLF001 - the benchmark reads the id the core gave
    from_player = {"type": "iceCandidate", "candidate": CANDIDATE}
    from_streamer = {"type": "iceCandidate", "candidate": CANDIDATE, "playerId": peer.player_id}
    receive = core.receive

    def run(n: int) -> int:
        relayed = 0
        for _ in range(n // 2):
            for action in receive(player, dict(from_player)):
                relayed += type(action) is Send
            for action in receive(streamer, dict(from_streamer)):
                relayed += type(action) is Send
        return relayed

    return core, run


def best_ns(run: Callable[[int], Any], n: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter_ns()
        run(n)
        best = min(best, (time.perf_counter_ns() - started) / n)
    return best


class _Client:
    async def execute_command(self, *args: Any, **options: Any) -> Any:
        return 1


def redis_calls(timed: bool) -> Callable[[int], None]:
    client = _Client()
    if timed:
        instrument(client)
    call = client.execute_command

    async def many(n: int) -> None:
        for _ in range(n):
            await call("SPUBLISH", "{pf:sig}:in:B", b"batch")

    def run(n: int) -> None:
        asyncio.run(many(n))

    return run


def alternate(on: Callable[[int], Any], off: Callable[[int], Any], n: int, rounds: int, repeat: int) -> dict[str, Any]:
    """``rounds`` rounds; in each, on and off take ``repeat`` short turns each, interleaved
    (on, off, off, on, ...), and each keeps its best: a burst of load on the box hits
    both alike, or costs a turn that the best of the others replaces."""
    turns: list[tuple[float, float]] = []
    for i in range(rounds):
        got = {"on": float("inf"), "off": float("inf")}
        for r in range(repeat):
            order = [("on", on), ("off", off)] if (i + r) % 2 == 0 else [("off", off), ("on", on)]
            for name, fn in order:
                got[name] = min(got[name], best_ns(fn, n, 1))
        turns.append((got["on"], got["off"]))
        print(f"  round {i + 1}: on {got['on']:8.1f} ns  off {got['off']:8.1f} ns  on/off {got['on'] / got['off']:.3f}")
    on_ns, off_ns = statistics.median(t[0] for t in turns), statistics.median(t[1] for t in turns)
    return {
        "on_ns": [round(t[0], 1) for t in turns],
        "off_ns": [round(t[1], 1) for t in turns],
        "ratios": [round(t[0] / t[1], 4) for t in turns],
        "median_on_ns": round(on_ns, 1),
        "median_off_ns": round(off_ns, 1),
        "ratio_of_medians": round(on_ns / off_ns, 4),
        "median_ratio": round(statistics.median(t[0] / t[1] for t in turns), 4),  # paired: the figure to read
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=20_000, help="messages relayed per turn (half each way)")
    ap.add_argument("--rounds", type=int, default=5, help="on/off turns, order swapped each round")
    ap.add_argument("--repeat", type=int, default=15, help="interleaved turns of each per round; the best counts")
    ap.add_argument("--redis-calls", type=int, default=20_000, help="round trips per turn of the Redis timer")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    n = max(2, args.messages - args.messages % 2)
    _, counted = relay_pair(SignalingCore)
    _, uncounted = relay_pair(core_without_counting())
    if counted(2) != 2 or uncounted(2) != 2:
        raise SystemExit("the relay setup relays nothing: the benchmark would time refusals")
    print(f"relay: SignalingCore.receive, iceCandidate both ways, {n} messages a turn, best of {args.repeat} turns")
    relay = alternate(counted, uncounted, n, args.rounds, args.repeat)
    print(
        f"relay: median on {relay['median_on_ns']} ns/message, off {relay['median_off_ns']} ns/message, "
        f"on/off per round: median {relay['median_ratio']} (rounds {min(relay['ratios'])}-{max(relay['ratios'])})"
    )
    print(f"redis: one round trip on a stand-in client, timed vs bare, {args.redis_calls} calls")
    redis = alternate(redis_calls(True), redis_calls(False), args.redis_calls, args.rounds, args.repeat)
    extra = redis["median_on_ns"] - redis["median_off_ns"]
    print(f"redis: the timer adds {extra:.0f} ns per round trip (median on {redis['median_on_ns']}, off "
          f"{redis['median_off_ns']})")  # fmt: skip
    if args.json:
        report = {
            "python": sys.version.split()[0],
            "machine": platform.machine(),
            "messages": n,
            "rounds": args.rounds,
            "repeat": args.repeat,
            "relay": relay,
            "redis": redis,
            "redis_timer_ns": round(extra, 1),
        }
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
