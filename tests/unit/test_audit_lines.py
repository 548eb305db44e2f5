"""Audit lines: one JSON object per line on the ``audit`` logger's stream, whether they
take the direct path (only the handler pixelfleet adds) or go through logging (an
operator's handler, a filter, logging disabled)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from pixelfleet import audit as audit_module
from pixelfleet.audit import AUDIT_LOGGER, audit


@pytest.fixture
def own_stream() -> Iterator[io.StringIO]:
    """The handler pixelfleet adds when the ``audit`` logger has none (pytest attaches its
    own capture handlers: set aside here), writing into a buffer the test reads."""
    logger = logging.getLogger(AUDIT_LOGGER)
    others, logger.handlers = logger.handlers, []
    before = audit_module._own
    audit_module._ensure_handler()
    own = audit_module._own
    assert own is not None and logger.handlers == [own]
    stream = io.StringIO()
    own.setStream(stream)
    yield stream
    logger.handlers, audit_module._own = others, before


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_with_only_our_handler_is_one_json_object(own_stream: io.StringIO) -> None:
    entry = audit("session_start", outcome="ok", tenant="acme", subject="u1", source="127.0.0.1", slot_id="h/0")
    assert _lines(own_stream) == [entry]
    assert entry["log"] == AUDIT_LOGGER and entry["event"] == "session_start"


def test_an_operators_handler_gets_every_line_through_logging(own_stream: io.StringIO) -> None:
    theirs = io.StringIO()
    handler = logging.StreamHandler(theirs)
    logger = logging.getLogger(AUDIT_LOGGER)
    logger.addHandler(handler)
    try:
        entry = audit("auth_refused", outcome="refused", reason="bad token")
    finally:
        logger.removeHandler(handler)
    assert _lines(own_stream) == [entry]  # ours still writes it, once
    assert [json.loads(line) for line in theirs.getvalue().splitlines()] == [entry]


def test_a_filter_or_disabled_logging_is_honoured(own_stream: io.StringIO) -> None:
    logger = logging.getLogger(AUDIT_LOGGER)
    only_ok = logging.Filter()
    only_ok.filter = lambda record: '"outcome":"ok"' in record.getMessage()  # type: ignore[method-assign]
    logger.addFilter(only_ok)
    try:
        kept = audit("admin_action", outcome="ok")
        audit("admin_action", outcome="refused")
    finally:
        logger.removeFilter(only_ok)
    logging.disable(logging.INFO)
    try:
        audit("admin_action", outcome="ok", note="while disabled")
    finally:
        logging.disable(logging.NOTSET)
    assert _lines(own_stream) == [kept]


def test_a_bad_outcome_is_refused() -> None:
    with pytest.raises(ValueError, match="outcome"):
        audit("x", outcome="maybe")
