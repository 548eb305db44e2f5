"""What building and packing one allocation call costs the caller, with no Redis.

``RedisStore._allocate_calls`` builds the call (the session's tenant lookup and the
allocation script's keys and arguments); redis-py's asyncio connection then packs each
command into RESP in Python (``Connection.pack_command``). Both run on the replica's hot
path for every allocation. Compare two versions of the code by running this module
against each (``PYTHONPATH=<export> python -m loadtest.bench_alloc_call``).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from typing import Any

from redis.asyncio.connection import Connection

from matchmaker.models import AllocationRequest
from matchmaker.store_redis import RedisStore

_SHA = "0" * 40  # scripts are registered lazily; the length of a real sha is what counts


def _flat(call: Any) -> tuple[Any, ...]:
    """One call as the command redis-py sends: a plain command, or EVALSHA of a script."""
    if isinstance(call[0], str | bytes):
        return tuple(call)
    _script, keys, args = call[0], call[1], call[2]
    return ("EVALSHA", _SHA, len(keys), *keys, *args)


def measure(n: int, repeats: int) -> dict[str, Any]:
    store = RedisStore.from_url("redis://127.0.0.1:1", prefix="pf")  # never connects
    packer = Connection()
    request = AllocationRequest(tenant="acme", app="app-17", client_key="client-0123456789")

    def build(i: int) -> list[Any]:
        calls: list[Any] = store._allocate_calls(
            request, f"s-{i:016x}", 1.7e9 + i, policy="spread", rnd=random.random()
        )
        return calls

    def build_and_pack(i: int) -> None:
        for call in build(i):
            packer.pack_command(*_flat(call))

    sample = [_flat(c) for c in build(0)]
    out: dict[str, Any] = {"arguments_per_call": [len(c) for c in sample]}
    for name, fn in (("build_us", build), ("build_and_pack_us", build_and_pack)):
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            for i in range(n):
                fn(i)
            runs.append((time.perf_counter() - started) / n * 1e6)
        out[name] = round(statistics.median(runs), 2)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=20_000, help="calls per run")
    p.add_argument("--repeat", type=int, default=5, help="runs; the median is reported")
    args = p.parse_args(argv)
    print(json.dumps(measure(args.n, args.repeat)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
