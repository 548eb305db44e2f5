"""When the agent restarts a slot's streamer for a fresh credential, and when a slot may
launch at all (gpu_agent/credentials.py): pure decisions, no processes."""

from __future__ import annotations

import pytest

from gpu_agent.config import AgentSettings
from gpu_agent.credentials import Credential, Renewal, may_launch, read, renewal
from pixelfleet.shared_settings import ConfigError
from pixelfleet.tokens import TokenKeys, mint_streamer

NOW = 1_000_000.0
OLD = Credential("old", "j-old", NOW + 30)  # the running streamer's, 30 s left
NEW = Credential("new", "j-new", NOW + 900)


def decide(
    launched: Credential | None = OLD,
    newest: Credential | None = NEW,
    *,
    now: float = NOW,
    margin_s: float = 60.0,
    idle: bool = True,
    connected: bool | None = True,
) -> Renewal:
    return renewal(launched, newest, now=now, margin_s=margin_s, idle=idle, connected=connected)


def test_idle_connected_streamer_renews_within_the_margin_only() -> None:
    assert decide() is Renewal.BEFORE_EXPIRY  # 30 s left, margin 60
    assert decide(margin_s=30.0) is Renewal.BEFORE_EXPIRY  # exactly at the margin
    assert decide(margin_s=29.0) is Renewal.KEEP
    assert decide(margin_s=0.0, now=NOW + 31) is Renewal.BEFORE_EXPIRY  # expired but still connected


def test_a_streamer_in_a_session_is_never_restarted() -> None:
    assert decide(idle=False) is Renewal.KEEP
    assert decide(idle=False, connected=False, now=NOW + 60) is Renewal.KEEP


def test_expired_and_not_listed_renews_at_once_not_before() -> None:
    assert decide(connected=False, now=NOW + 31) is Renewal.EXPIRED
    assert decide(connected=False, now=NOW + 30) is Renewal.EXPIRED  # exp reached
    assert decide(connected=False) is Renewal.KEEP  # still valid: it may be starting, or reconnecting


def test_nothing_to_renew_with_or_signalling_unknown_keeps_it() -> None:
    assert decide(newest=None) is Renewal.KEEP
    assert decide(newest=OLD) is Renewal.KEEP  # the newest is the one it has
    assert decide(newest=Credential("older", "j-x", NOW + 10)) is Renewal.KEEP
    stale = Credential("stale", "j-s", NOW + 40)  # newer, but expired by now as well
    assert decide(newest=stale, connected=False, now=NOW + 50) is Renewal.KEEP
    assert decide(connected=None, now=NOW + 31) is Renewal.KEEP  # signalling did not answer
    assert decide(launched=None) is Renewal.KEEP  # launched without one (open signalling)


def test_launch_needs_an_unexpired_credential_unless_signalling_is_open() -> None:
    assert may_launch(NEW, now=NOW, open_signalling=None)
    assert may_launch(NEW, now=NOW, open_signalling=False)
    assert not may_launch(None, now=NOW, open_signalling=None)  # not known yet: wait
    assert not may_launch(None, now=NOW, open_signalling=False)  # signalling has a key: wait
    assert not may_launch(OLD, now=NOW + 31, open_signalling=False)  # expired
    assert may_launch(None, now=NOW, open_signalling=True)  # open mode takes streamers without


def test_read_takes_jti_and_exp_from_a_real_credential() -> None:
    keys = TokenKeys.hs256("k" * 40)
    token = mint_streamer(keys, tenant="t", host_id="h", streamer_id="h-0", ttl_s=120, now=NOW)
    got = read(token)
    assert got is not None and got.token == token and got.expires_at == NOW + 120 and got.jti
    assert read("not-a-jwt") is None


def test_margin_setting_has_a_default_and_cannot_be_negative() -> None:
    assert AgentSettings().credential_renew_margin_s == 60.0
    with pytest.raises(ConfigError):
        AgentSettings(credential_renew_margin_s=-1)
