"""The local coturn's command line and config file (pure parts; the process itself is
exercised in tests/integration/test_turn_coturn.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from pixelfleet.net import free_port
from turn.coturn import (
    CoturnOptions,
    command_line,
    config_file_text,
    port_is_free,
    relay_port_range,
)


def test_command_line_is_the_verified_loopback_one_without_secrets() -> None:
    options = CoturnOptions(secrets=("very-secret",), port=3479, min_port=50000, max_port=50039, realm="pixel.test")
    argv = command_line("/usr/bin/turnserver", options, Path("/tmp/w"))
    assert argv[:3] == ["/usr/bin/turnserver", "-c", "/tmp/w/secrets.conf"]
    for flag in (
        "--listening-ip=127.0.0.1",
        "--relay-ip=127.0.0.1",
        "--listening-port=3479",
        "--min-port=50000",
        "--max-port=50039",
        "--realm=pixel.test",
        "--use-auth-secret",
        "--fingerprint",
        "--no-tls",
        "--no-dtls",
        "--no-cli",
        "--log-file=stdout",
        "--simple-log",
        "--no-software-attribute",
        "--allow-loopback-peers",
        "--userdb=/tmp/w/turndb",
        "--pidfile=/tmp/w/turnserver.pid",
    ):
        assert flag in argv
    assert not any("very-secret" in a or "static-auth-secret" in a for a in argv)  # not in `ps`
    assert "--allow-loopback-peers" not in command_line(
        "t", CoturnOptions(secrets=("s",), allow_loopback_peers=False), Path("/w")
    )


def test_config_file_holds_every_secret() -> None:
    assert config_file_text(["new", "old"]) == "static-auth-secret=new\nstatic-auth-secret=old\n"
    for bad in ("", "a\nlisten=0.0.0.0", "a#b"):
        with pytest.raises(ValueError):
            config_file_text([bad])


def test_urls_and_repr() -> None:
    options = CoturnOptions(secrets=("hidden-one",), port=3479)
    assert options.urls == (
        "stun:127.0.0.1:3479",
        "turn:127.0.0.1:3479?transport=udp",
        "turn:127.0.0.1:3479?transport=tcp",
    )
    assert "hidden-one" not in repr(options)


def test_ports() -> None:
    port = free_port(udp=True)
    assert port_is_free("127.0.0.1", port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", port))
        assert not port_is_free("127.0.0.1", port)
    low, high = relay_port_range(40)
    assert 49152 <= low < high <= 65535 and high - low == 39
