"""The audit trail: one JSON line per security-relevant decision.

Every refused authentication or authorization, every admin action and every session
start and end is written here, by the matchmaker and by signalling alike, so an
operator can answer "who tried what, from where, and what happened" from one stream.
The lines go to the standard-library logger ``audit`` (handler: stderr unless the
operator attaches another), always as JSON whatever the console log format is, so a
log shipper can route them by ``"log": "audit"``. docs/operations.md documents the
fields.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

__all__ = ["AUDIT_LOGGER", "OUTCOMES", "audit", "set_audit_sink"]

AUDIT_LOGGER = "audit"
OUTCOMES = frozenset({"ok", "refused", "error"})

_logger = logging.getLogger(AUDIT_LOGGER)
_logger.propagate = False  # never mixed into the console renderer of the service log
_logger.setLevel(logging.INFO)
_sink: Callable[[dict[str, Any]], None] | None = None
_own: logging.StreamHandler[Any] | None = None  # the handler added here, while no other is attached


def _ensure_handler() -> None:
    global _own
    if not _logger.handlers:
        _own = logging.StreamHandler(sys.stderr)
        _own.setFormatter(logging.Formatter("%(message)s"))
        _logger.addHandler(_own)


def _write(line: str) -> None:
    """With only our own handler attached, the line goes straight to its stream, as the
    handler would write it: building a LogRecord (the caller's frame, pid, thread) was
    most of an audit line's cost, and a matchmaker writes two per session. Any other
    set-up (an operator's handler, a filter, logging disabled) goes through logging."""
    own, handlers = _own, _logger.handlers
    if own is not None and len(handlers) == 1 and handlers[0] is own and not (_logger.filters or own.filters):
        if not _logger.isEnabledFor(logging.INFO):
            return
        with own.lock:  # type: ignore[union-attr] # created with the handler
            try:
                own.stream.write(line + own.terminator)
                own.stream.flush()
                return
            except (OSError, ValueError):
                pass  # logging reports it (handleError) below
    _logger.info(line)


def set_audit_sink(sink: Callable[[dict[str, Any]], None] | None) -> None:
    """Also hand every entry (as a dict) to ``sink``; tests use it, None removes it."""
    global _sink
    _sink = sink


def audit(
    event: str,
    *,
    outcome: str,
    tenant: str | None = None,
    subject: str | None = None,
    source: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """Write one audit line; returns the entry. ``outcome`` is ok, refused or error.

    ``event`` names what was decided (``auth_refused``, ``admin_action``,
    ``session_start``, ``session_end``, ...); ``fields`` add the specifics (``reason``,
    ``ticket_id``, ``host_id``, ...). Values must be JSON-serialisable (str() otherwise).
    """
    if outcome not in OUTCOMES:
        raise ValueError(f"audit outcome must be one of {sorted(OUTCOMES)}, not {outcome!r}")
    entry: dict[str, Any] = {
        "log": AUDIT_LOGGER,
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z",
        "event": event,
        "outcome": outcome,
        "tenant": tenant,
        "subject": subject,
        "source": source,
        **fields,
    }
    _ensure_handler()
    _write(orjson.dumps(entry, default=str).decode())
    if _sink is not None:
        _sink(entry)
    return entry
