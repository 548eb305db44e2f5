"""The allocation-call micro-benchmark reports what docs/benchmarks.md quotes."""

from __future__ import annotations

from loadtest.bench_alloc_call import measure


def test_it_reports_the_call_shape_and_both_timings() -> None:
    out = measure(n=20, repeats=1)
    set_call, script_call = out["arguments_per_call"]
    assert set_call >= 3  # SET key tenant, with its expiry options
    assert script_call > 16  # EVALSHA sha numkeys, the keys, the arguments
    assert 0 < out["build_us"] < out["build_and_pack_us"]
