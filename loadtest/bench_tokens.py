"""Session-token checks per second: ``verify`` as it runs (pixelfleet's own HS256 tokens
checked without pyjwt) against pyjwt alone, same process, same tokens, alternating.

Every session report and every player connection checks one token, so this is a per-
request cost of both the matchmaker and signalling.

    python -m loadtest.bench_tokens --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from pixelfleet import tokens
from pixelfleet.tokens import TokenKeys, mint, verify


def _per_check_us(check: Callable[[], object], n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        check()
    return (time.perf_counter() - started) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--checks", type=int, default=20_000, help="checks per round and path")
    opts = ap.parse_args()
    keys = TokenKeys.hs256("k" * 32)
    token = mint(keys, tenant="acme", session_id="s-1", streamer_id="h1-0", ttl_s=600)
    own = tokens._own_hs256  # noqa: SLF001 - the path measured

    def with_pyjwt() -> object:
        tokens._own_hs256 = lambda keys, token: None  # noqa: SLF001
        try:
            return verify(keys, token, allow_expired=True)
        finally:
            tokens._own_hs256 = own  # noqa: SLF001

    def as_it_runs() -> object:
        return verify(keys, token, allow_expired=True)

    fast, slow = [], []
    for _ in range(max(1, opts.rounds)):
        fast.append(_per_check_us(as_it_runs, opts.checks))
        slow.append(_per_check_us(with_pyjwt, opts.checks))
    f, s = statistics.median(fast), statistics.median(slow)
    print(f"session token check, HS256, median of {len(fast)} rounds of {opts.checks}:")
    print(f"  verify (own HS256 path): {f:7.1f} us")
    print(f"  pyjwt alone:             {s:7.1f} us")
    print(f"  ratio pyjwt / own:       {s / f:7.2f}")


if __name__ == "__main__":
    main()
