"""TURN settings: ``PIXELFLEET_TURN__*`` is public surface; pin names, types and checks."""

from __future__ import annotations

import pytest

from pixelfleet.settings import ConfigError, load_settings
from turn.config import TurnSettings

ENV = {
    "PIXELFLEET_TURN__PROVIDER": "rest-secret",
    "PIXELFLEET_TURN__URLS": "stun:t.example:3478, turn:t.example:3478?transport=udp,turns:t.example:443?transport=tcp",
    "PIXELFLEET_TURN__SECRETS": "new-secret,old-secret",
    "PIXELFLEET_TURN__TTL_S": "900",
    "PIXELFLEET_TURN__STREAMER_TTL_S": "86400",
    "PIXELFLEET_TURN__FORCE_RELAY": "true",
    "PIXELFLEET_PLAYER_PORT": "80",  # another section: ignored here
}


def load_turn_settings(environ: dict[str, str], **flags: object) -> TurnSettings:
    return load_settings(environ, flags={f"turn.{k}": v for k, v in flags.items()}).turn


def test_defaults() -> None:
    s = load_turn_settings({})
    assert s.provider == "none" and s.urls == () and s.secrets == ()
    assert s.ttl_s == 3600 and s.streamer_ttl_s == 30 * 86400 and not s.force_relay


def test_environment() -> None:
    s = load_turn_settings(ENV)
    assert s.provider == "rest-secret"
    assert s.urls == ("stun:t.example:3478", "turn:t.example:3478?transport=udp", "turns:t.example:443?transport=tcp")
    assert s.secrets == ("new-secret", "old-secret")  # newest first
    assert (s.ttl_s, s.streamer_ttl_s, s.force_relay) == (900, 86400, True)


def test_flags_win_and_none_means_unset() -> None:
    s = load_turn_settings(ENV, ttl_s=60, urls=["turn:other:3478"], provider=None)
    assert s.ttl_s == 60 and s.urls == ("turn:other:3478",) and s.provider == "rest-secret"


def test_aws_kvs() -> None:
    s = load_turn_settings(
        {
            "PIXELFLEET_TURN__PROVIDER": "aws-kvs",
            "PIXELFLEET_TURN__AWS_REGION": "eu-west-1",
            "PIXELFLEET_TURN__AWS_CHANNEL_ARN": "arn:aws:kinesisvideo:x",
        }
    )
    assert s.aws_region == "eu-west-1" and s.aws_refresh_margin_s == 60


@pytest.mark.parametrize(
    "env,needle",
    [
        ({"PIXELFLEET_TURN__TTL_S": "ten"}, "PIXELFLEET_TURN__TTL_S: Expected `int`"),
        ({"PIXELFLEET_TURN__TTL_S": "0"}, "positive"),
        (
            {"PIXELFLEET_TURN__PROVIDER": "coturn"},
            r"PIXELFLEET_TURN__PROVIDER: .*\(one of none, static, rest-secret, aws-kvs\)",
        ),
        ({"PIXELFLEET_TURN__SECRET": "x"}, "unknown setting PIXELFLEET_TURN__SECRET"),
        ({"PIXELFLEET_TURN__URLS": "http://t.example"}, "not a stun"),
        ({"PIXELFLEET_TURN__PROVIDER": "rest-secret", "PIXELFLEET_TURN__URLS": "turn:t"}, "needs secrets"),
        ({"PIXELFLEET_TURN__PROVIDER": "rest-secret", "PIXELFLEET_TURN__SECRETS": "s"}, "needs urls"),
        ({"PIXELFLEET_TURN__PROVIDER": "static"}, "needs urls"),
        ({"PIXELFLEET_TURN__PROVIDER": "aws-kvs"}, "aws_region"),
    ],
)
def test_bad_settings_fail_with_one_clear_line(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        load_turn_settings(env)
    assert "PIXELFLEET_TURN__" in str(info.value) and "\n" not in str(info.value)


def test_secrets_stay_out_of_repr() -> None:
    s = load_turn_settings(ENV)
    assert "new-secret" not in repr(s) and "old-secret" not in str(s)


def test_frozen() -> None:
    with pytest.raises(AttributeError):
        TurnSettings().ttl_s = 1  # type: ignore[misc]
