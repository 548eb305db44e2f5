"""loadtest/bench_turn.py's minting part runs and reports (no timing is asserted)."""

from __future__ import annotations

from loadtest.bench_turn import bench_mint


def test_bench_mint_reports() -> None:
    result = bench_mint(0.02)
    assert result["issue_per_s"] > 0 and result["config_with_turn_us"] > 0
    assert result["target_per_s"] == 50_000 and isinstance(result["meets_target"], bool)
