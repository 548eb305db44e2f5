"""pixelfleet.up_cluster, the pure parts: what each node is started with."""

from __future__ import annotations

import pytest

from pixelfleet.cli import _flags, _parser
from pixelfleet.settings import load_settings
from pixelfleet.up_cluster import ClusterError, NodePorts, node_argv, node_environment, redis_argv
from signaling.config import Settings


def _signaling(environ: dict[str, str], *argv: str) -> object:
    args = _parser().parse_args(["signaling", *argv])
    return load_settings(environ, defaults=args.defaults, flags=_flags(args)).signaling


def test_a_node_gets_the_up_process_settings_and_its_own_addresses() -> None:
    up_args = _parser().parse_args(
        ["up", "--nodes", "3", "--max-players", "4", "--peer-options", '{"iceServers": [{"urls": "stun:x:3478"}]}']
    )
    assert up_args.nodes == 3
    up = load_settings(
        {"PIXELFLEET_KEEPALIVE_S": "7", "PIXELFLEET_LOG_LEVEL": "warning"},
        defaults=up_args.defaults,
        flags=_flags(up_args),
    )
    env = node_environment(up.signaling, {"PATH": "/bin"})
    assert env["PATH"] == "/bin"
    assert "PIXELFLEET_PLAYER_PORT" not in env  # up's 8080 is the balancer's, not a node's
    argv = node_argv(NodePorts(9001, 9002, -1), "redis://127.0.0.1:6390/0", up.signaling)
    assert argv[1:4] == ["-m", "pixelfleet", "signaling"]
    node = _signaling(env, *argv[4:])
    expected = up.signaling.__class__(
        **{
            **{f: getattr(up.signaling, f) for f in up.signaling.__struct_fields__},
            "player_port": 9001,
            "streamer_port": 9002,
            "sfu_port": -1,
            "state_url": "redis://127.0.0.1:6390/0",
        }
    )
    assert node == expected
    assert up.signaling.max_players_per_streamer == 4 and up.signaling.keepalive_s == 7


def test_redis_runs_on_loopback_and_keeps_nothing_on_disk() -> None:
    argv = redis_argv("/usr/bin/redis-server", 6390)
    assert argv[0] == "/usr/bin/redis-server"
    assert argv[argv.index("--bind") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == "6390"
    assert argv[argv.index("--save") + 1] == "" and argv[argv.index("--appendonly") + 1] == "no"


def test_turn_settings_reach_the_nodes_through_the_environment_only() -> None:
    up_args = _parser().parse_args(["up", "--nodes", "2", "--turn-url", "turn:127.0.0.1:3478?transport=udp"])
    up = load_settings(
        {"PIXELFLEET_TURN__PROVIDER": "rest-secret", "PIXELFLEET_TURN__SECRETS": "a" * 32 + "," + "b" * 32},
        defaults=up_args.defaults,
        flags=_flags(up_args),
    )
    env = node_environment(up.signaling, {}, up.turn)
    argv = node_argv(NodePorts(9001, 9002, 9003), "redis://127.0.0.1:6390/0", up.signaling)
    args = _parser().parse_args(["signaling", *argv[4:]])
    node = load_settings(env, defaults=args.defaults, flags=_flags(args))
    assert node.turn == up.turn and node.turn.secrets == ("a" * 32, "b" * 32)
    assert not any("a" * 32 in arg for arg in argv)


def test_a_list_item_with_a_comma_is_refused() -> None:
    from turn.config import TurnSettings

    with pytest.raises(ClusterError, match="PIXELFLEET_TURN__URLS"):
        node_environment(Settings(), {}, TurnSettings(urls=("turn:a,b",)))
