"""Unit tests run the CLI in-process (settings, token commands)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _keep_logging_out_of_capture(monkeypatch: pytest.MonkeyPatch) -> None:
    """Configuring structlog in-process would bind it (and the loggers it caches on first
    use) to this test's captured stderr, closed once the test ends, and every later test
    that logs would fail writing to it: the CLI's logging set-up is a no-op here."""
    monkeypatch.setattr("pixelfleet.logs.configure_logging", lambda *args, **kwargs: None)
