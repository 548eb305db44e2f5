"""Every reason signalling refuses with is exported by ``/metrics`` (a reason missing from
``REFUSAL_REASONS`` would be audited but never counted) and documented."""

from __future__ import annotations

import re
from pathlib import Path

from signaling.access import REFUSAL_REASONS

ROOT = Path(__file__).resolve().parents[2]
_REFUSE = re.compile(r"\brefuse\(\s*\"([a-z_]+)\"")


def test_every_refusal_reason_is_exported_and_documented() -> None:
    used = {m for path in (ROOT / "signaling").glob("*.py") for m in _REFUSE.findall(path.read_text())}
    assert used == set(REFUSAL_REASONS)
    documented = (ROOT / "docs" / "observability.md").read_text()
    assert [r for r in REFUSAL_REASONS if f"`{r}`" not in documented] == []
