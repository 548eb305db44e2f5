"""Settings: the environment and flags are the public surface; pin them."""

from __future__ import annotations

import msgspec
import pytest

from pixelfleet.settings import ConfigError, load_section
from signaling.config import Settings, load_settings


def test_defaults_follow_epic() -> None:
    s = load_settings({})
    assert (s.host, s.player_port, s.streamer_port, s.sfu_port) == ("127.0.0.1", 80, 8888, 8889)
    assert s.max_message_bytes == 64 * 1024 and s.state_url == "memory://"


def test_environment_then_overrides() -> None:
    env = {"PIXELFLEET_PLAYER_PORT": "8080", "PIXELFLEET_HOST": "::1",
           "PIXELFLEET_PEER_CONNECTION_OPTIONS": '{"iceServers":[{"urls":["stun:x"]}]}',
           "PIXELFLEET_TURN__SECRETS": "a,b", "OTHER": "ignored"}
    s = load_settings(env, host="0.0.0.0", streamer_port=None)
    assert s.player_port == 8080 and s.host == "0.0.0.0" and s.streamer_port == 8888
    assert s.peer_connection_options == {"iceServers": [{"urls": ["stun:x"]}]}


@pytest.mark.parametrize("env,needle", [
    ({"PIXELFLEET_PLAYER_PORT": "ten"}, "player_port"),
    ({"PIXELFLEET_PALYER_PORT": "80"}, "palyer_port"),
])
def test_bad_settings_fail_with_the_name(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_settings(env)


def test_sections_read_only_their_variables() -> None:
    class Turn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
        secrets: list[str] = []
        ttl_s: int = 600

    t = load_section(Turn, {"PIXELFLEET_TURN__SECRETS": "new, old", "PIXELFLEET_TURN__TTL_S": "60",
                            "PIXELFLEET_PLAYER_PORT": "1"}, "turn")
    assert t == Turn(secrets=["new", "old"], ttl_s=60)


def test_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        Settings().host = "x"  # type: ignore[misc]


def test_an_unknown_placement_policy_is_refused_at_load() -> None:
    from matchmaker.server import load_matchmaker_settings

    assert load_matchmaker_settings({"PIXELFLEET_MATCHMAKER__POLICY": "pack"}).policy == "pack"
    with pytest.raises(ConfigError, match="unknown placement policy 'nope'"):
        load_matchmaker_settings({"PIXELFLEET_MATCHMAKER__POLICY": "nope"})
