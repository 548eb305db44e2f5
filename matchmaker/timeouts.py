"""Which sessions must end now, and why. Pure: the sweep applies the verdicts."""

from __future__ import annotations

from collections.abc import Iterable

from matchmaker.models import EndReason, Session, SessionState


def due_endings(
    sessions: Iterable[Session],
    now: float,
    *,
    connect_timeout_s: float,
    reconnect_grace_s: float,
    idle_timeout_s: float,
    max_session_s: float,
) -> list[tuple[str, EndReason]]:
    """Timeouts of 0 are off."""
    out: list[tuple[str, EndReason]] = []
    for s in sessions:
        if max_session_s and now - s.created_at > max_session_s:
            out.append((s.session_id, EndReason.MAX_LENGTH))
        elif s.state is SessionState.ASSIGNED and connect_timeout_s and now - s.last_activity > connect_timeout_s:
            out.append((s.session_id, EndReason.NEVER_CONNECTED))
        elif (
            s.state is SessionState.DISCONNECTED
            and s.disconnected_at is not None
            and now - s.disconnected_at > reconnect_grace_s
        ):
            out.append((s.session_id, EndReason.PLAYER_LEFT))
        elif s.state is SessionState.CONNECTED and idle_timeout_s and now - s.last_activity > idle_timeout_s:
            out.append((s.session_id, EndReason.IDLE))
    return out


def overdue_by(
    s: Session,
    now: float,
    *,
    connect_timeout_s: float,
    reconnect_grace_s: float,
    idle_timeout_s: float,
    max_session_s: float,
) -> float:
    """How long ago the earliest of its passed deadlines was (-inf if none has passed), by
    ``due_endings``' rules: the stores hand the sweep the most overdue sessions first."""
    rules: list[tuple[float, float]] = []  # (timeout, since) of the rules that are on
    if max_session_s:
        rules.append((max_session_s, s.created_at))
    if s.state is SessionState.ASSIGNED and connect_timeout_s:
        rules.append((connect_timeout_s, s.last_activity))
    elif s.state is SessionState.DISCONNECTED and s.disconnected_at is not None:
        rules.append((reconnect_grace_s, s.disconnected_at))  # on even when 0
    elif s.state is SessionState.CONNECTED and idle_timeout_s:
        rules.append((idle_timeout_s, s.last_activity))
    return max((now - since - timeout for timeout, since in rules if now - since > timeout), default=float("-inf"))
