"""Settings: the environment, the flags and docs/configuration.md are public surface; pin them."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from pixelfleet import __version__
from pixelfleet.cli import main
from pixelfleet.settings import RENAMED, SECTIONS, ConfigError, env_name, load_settings
from pixelfleet.shared_settings import SharedSettings

DOCS = Path(__file__).parents[2] / "docs" / "configuration.md"


def test_defaults_follow_epic() -> None:
    s = load_settings({}).signaling
    assert (s.host, s.player_port, s.streamer_port, s.sfu_port) == ("127.0.0.1", 80, 8888, 8889)
    assert s.max_message_bytes == 64 * 1024 and s.state_url == "memory://"


def test_environment_then_flags() -> None:
    env = {
        "PIXELFLEET_PLAYER_PORT": "8080",
        "PIXELFLEET_HOST": "::1",
        "PIXELFLEET_PEER_CONNECTION_OPTIONS": '{"iceServers":[{"urls":["stun:x"]}]}',
        "PIXELFLEET_TURN__SECRETS": "a,b",
        "OTHER": "ignored",
        "PIXELFLEET_TEST__STRICT": "1",
    }
    s = load_settings(env, flags={"signaling.host": "0.0.0.0", "signaling.streamer_port": None}).signaling
    assert s.player_port == 8080 and s.host == "0.0.0.0" and s.streamer_port == 8888
    assert s.peer_connection_options == {"iceServers": [{"urls": ["stun:x"]}]}


def test_a_commands_defaults_sit_below_the_environment() -> None:
    up = {"signaling.player_port": 8080}
    assert load_settings({}, defaults=up).signaling.player_port == 8080
    assert load_settings({"PIXELFLEET_PLAYER_PORT": "81"}, defaults=up).signaling.player_port == 81


def test_shared_settings_are_one_variable_seen_by_every_service() -> None:
    s = load_settings(
        {
            "PIXELFLEET_AGENT_TOKEN": "agent-t",
            "PIXELFLEET_SESSION_TOKEN_SECRET": "k" * 32,
            "PIXELFLEET_STATE_URL": "redis://db:6379",
            "PIXELFLEET_LOG_LEVEL": "debug",
        }
    )
    for section in (s, s.signaling, s.matchmaker, s.agent):
        assert section.agent_token == "agent-t" and section.session_token_secret == "k" * 32
        assert section.state_url == "redis://db:6379" and section.log_level == "debug"
    assert load_settings({}, flags={"log_level": "error"}).agent.log_level == "error"


def test_secrets_stay_out_of_repr() -> None:
    s = load_settings(
        {
            "PIXELFLEET_AGENT_TOKEN": "agent-t",
            "PIXELFLEET_SESSION_TOKEN_SECRET": "k" * 32,
            "PIXELFLEET_MATCHMAKER__CALLER_JWT_SECRET": "caller-s",
        }
    )
    assert not {"agent-t", "k" * 32, "caller-s"} & set(re.findall(r"[\w-]+", repr(s) + repr(s.matchmaker)))


@pytest.mark.parametrize(
    "old,new",
    [
        ("PIXELFLEET_MATCHMAKER__TOKEN_SECRET", "PIXELFLEET_SESSION_TOKEN_SECRET"),
        ("PIXELFLEET_MATCHMAKER__TOKEN_TTL_S", "PIXELFLEET_SESSION_TOKEN_TTL_S"),
        ("PIXELFLEET_MATCHMAKER__AGENT_TOKEN", "PIXELFLEET_AGENT_TOKEN"),
        ("PIXELFLEET_AGENT__AGENT_TOKEN", "PIXELFLEET_AGENT_TOKEN"),
        ("PIXELFLEET_AGENT__ADMIN_TOKEN", "PIXELFLEET_ADMIN_TOKEN"),
        ("PIXELFLEET_MATCHMAKER__STATE_URL", "PIXELFLEET_STATE_URL"),
        ("PIXELFLEET_AGENT__LOG_LEVEL", "PIXELFLEET_LOG_LEVEL"),
    ],
)
def test_an_old_name_is_refused_naming_its_replacement(old: str, new: str) -> None:
    assert RENAMED[old] == new
    with pytest.raises(ConfigError, match=f"^{old} is now {new}"):
        load_settings({old: "x"})


@pytest.mark.parametrize(
    "env,needle",
    [
        ({"PIXELFLEET_PLAYER_PORT": "ten"}, "invalid PIXELFLEET_PLAYER_PORT: Expected `int`"),
        ({"PIXELFLEET_PALYER_PORT": "80"}, "unknown setting PIXELFLEET_PALYER_PORT"),
        ({"PIXELFLEET_SIGNALING__HOST": "x"}, "unknown setting PIXELFLEET_SIGNALING__HOST"),
        (
            {"PIXELFLEET_LOG_LEVEL": "verbose"},
            r"invalid PIXELFLEET_LOG_LEVEL: .*\(one of debug, info, warning, error\)",
        ),
        ({"PIXELFLEET_SESSION_TOKEN_ALGORITHM": "RS256"}, "invalid PIXELFLEET_SESSION_TOKEN_ALGORITHM"),
        ({"PIXELFLEET_PEER_CONNECTION_OPTIONS": "{"}, "invalid PIXELFLEET_PEER_CONNECTION_OPTIONS: not JSON"),
        ({"PIXELFLEET_MATCHMAKER__PORT": "x"}, "invalid PIXELFLEET_MATCHMAKER__PORT"),
        ({"PIXELFLEET_MATCHMAKER__POLICY": "nope"}, "unknown placement policy 'nope'"),
        ({"PIXELFLEET_MATCHMAKER__RECORDS_MEMORY_MAX": "0"}, "records_memory_max must be at least 1"),
        ({"PIXELFLEET_AGENT__SLOTS": "many"}, "invalid PIXELFLEET_AGENT__SLOTS"),
        ({"PIXELFLEET_MATCHMAKER__REDIS_WAIT_REPLICAS": "1"}, "redis_wait_replicas needs a Redis state URL"),
        ({"PIXELFLEET_MATCHMAKER__REDIS_WAIT_REPLICAS": "-1"}, "redis_wait_replicas must be >= 0"),
        ({"PIXELFLEET_MATCHMAKER__REDIS_WAIT_MS": "5000"}, r"redis_wait_ms must be within 1\.\.4000"),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_variable(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        load_settings(env)
    assert "\n" not in str(info.value)


def test_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        load_settings({}).signaling.host = "x"  # type: ignore[misc]


def run_cli(capsys: pytest.CaptureFixture[str], argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    code = main(argv, env)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,env,needle",
    [
        (["matchmaker"], {"PIXELFLEET_MATCHMAKER__TOKEN_SECRET": "s" * 32}, "is now PIXELFLEET_SESSION_TOKEN_SECRET"),
        (["matchmaker", "--policy", "nope"], {}, "unknown placement policy 'nope'"),
        (["matchmaker"], {}, "set PIXELFLEET_SESSION_TOKEN_SECRET"),
        (["matchmaker"], {"PIXELFLEET_SESSION_TOKEN_SECRET": "short"}, "at least 32 bytes"),
        (
            ["matchmaker"],
            {"PIXELFLEET_SESSION_TOKEN_SECRET": "s" * 32, "PIXELFLEET_STATE_URL": "mongo://x"},
            "PIXELFLEET_STATE_URL: unsupported state URL scheme 'mongo'",
        ),
        (["signaling"], {"PIXELFLEET_SESSION_TOKEN_PUBLIC_KEY_FILE": "/nonexistent.pem"}, "session token key"),
        (["signaling", "--player-port", "0"], {"PIXELFLEET_TURN__PROVIDER": "static"}, "needs urls"),
        (["agent", "--streamer", "ue"], {}, "needs PIXELFLEET_AGENT__UE_BINARY"),
        (["up", "--autoscale", "--autoscale-config", "/nonexistent.json"], {}, "--autoscale-config /nonexistent"),
    ],
)
def test_the_cli_stops_on_a_bad_setting_with_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], env: dict[str, str], needle: str
) -> None:
    code, err = run_cli(capsys, argv, env)
    assert code == 2
    assert re.search(needle, err), err
    assert err.startswith(f"pixelfleet {argv[0]}: ") and err.count("\n") == 1 and "Traceback" not in err


def test_version_comes_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        main(["--version"], {})
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"pixelfleet {__version__}" == f"pixelfleet {version('pixelfleet')}"


def _every_variable() -> list[str]:
    names = [env_name("", f) for f in SharedSettings.__struct_fields__]
    for section, cls in SECTIONS.items():
        names += [env_name(section, f) for f in cls.__struct_fields__ if f not in SharedSettings.__struct_fields__]
    return names


def test_docs_list_every_setting() -> None:
    """docs/configuration.md is the integrator's reference: a field it misses fails here."""
    documented = set(re.findall(r"`(PIXELFLEET_[A-Z0-9_]+)`", DOCS.read_text()))
    missing = [name for name in _every_variable() if name not in documented]
    assert not missing, f"docs/configuration.md does not list {missing}"
    stale = {n for n in documented - set(_every_variable()) - set(RENAMED) if not n.startswith("PIXELFLEET_TEST__")}
    assert not stale, f"docs/configuration.md lists settings that do not exist: {sorted(stale)}"


def test_every_section_is_a_frozen_struct_refusing_unknown_fields() -> None:
    for cls in SECTIONS.values():
        config = cls.__struct_config__
        assert config.frozen and config.forbid_unknown_fields and issubclass(cls, msgspec.Struct)
