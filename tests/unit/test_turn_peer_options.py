"""Per-peer ``config.peerConnectionOptions``: players short-lived, streamers long-lived."""

from __future__ import annotations

from signaling import messages as m
from signaling.protocol import Role, Send, SignalingCore
from turn.config import TurnSettings
from turn.credentials import verify
from turn.peer_options import TurnPeerOptions
from turn.providers import RestSecretProvider
from turn.wiring import wire_turn

NOW = 1_795_809_212.0
URLS = ("stun:t:3478", "turn:t:3478?transport=udp")
SETTINGS = TurnSettings(provider="rest-secret", urls=URLS, secrets=("new", "old"), ttl_s=600, streamer_ttl_s=7 * 86400)


def options(**kwargs: object) -> TurnPeerOptions:
    return TurnPeerOptions(RestSecretProvider(URLS, ["new"], clock=lambda: NOW), SETTINGS, **kwargs)  # type: ignore[arg-type]


def turn_entry(opts: dict[str, object]) -> dict[str, str]:
    servers = opts["iceServers"]
    assert isinstance(servers, list)
    return next(s for s in servers if "username" in s)


def test_players_get_ttl_streamers_and_sfus_long_lived() -> None:
    make = options()
    player = turn_entry(make(Role.PLAYER, "Player7"))
    assert player["username"] == f"{int(NOW) + 600}:Player7"
    assert verify(["new"], player["username"], player["credential"], NOW)
    for role in (Role.STREAMER, Role.SFU):
        entry = turn_entry(make(role, "UnknownStreamer"))
        assert entry["username"] == f"{int(NOW) + 7 * 86400}:UnknownStreamer"


def test_every_call_mints_afresh_and_shares_nothing_mutable() -> None:
    make = options()
    a, b = make(Role.PLAYER, "Player1"), make(Role.PLAYER, "Player2")
    assert turn_entry(a)["credential"] != turn_entry(b)["credential"]
    a["iceServers"].append({"urls": ["stun:x"]})
    assert len(make(Role.PLAYER, "Player3")["iceServers"]) == 2


def test_user_id_hook_for_session_ids() -> None:
    sessions = {"Player4": "sess-6f1c"}
    make = options(user_id=lambda role, peer_id: sessions.get(peer_id, peer_id))
    assert turn_entry(make(Role.PLAYER, "Player4"))["username"].endswith(":sess-6f1c")


def test_base_options_are_kept_and_force_relay() -> None:
    base = {"iceServers": [{"urls": ["stun:public:19302"]}], "bundlePolicy": "max-bundle"}
    relay = TurnSettings(provider="rest-secret", urls=URLS, secrets=("s",), force_relay=True)
    make = TurnPeerOptions(RestSecretProvider(URLS, ["s"]), relay, base=base)
    opts = make(Role.PLAYER, "Player0")
    assert opts["bundlePolicy"] == "max-bundle" and opts["iceTransportPolicy"] == "relay"
    assert [s["urls"] for s in opts["iceServers"]] == [
        ["stun:t:3478"],
        ["turn:t:3478?transport=udp"],
        ["stun:public:19302"],
    ]
    assert base["iceServers"] == [{"urls": ["stun:public:19302"]}]  # caller's dict untouched


def test_wired_into_the_signalling_core() -> None:
    wiring = wire_turn(SETTINGS)
    assert wiring is not None and wire_turn(TurnSettings()) is None
    core = SignalingCore(peer_options=wiring.peer_options)
    _, actions = core.connect(Role.PLAYER)
    config = next(a.message for a in actions if isinstance(a, Send) and isinstance(a.message, m.Config))
    entry = turn_entry(config.peerConnectionOptions)
    assert entry["username"].endswith(":Player0")
    assert verify(SETTINGS.secrets, entry["username"], entry["credential"], NOW)
    _, actions = core.connect(Role.STREAMER)
    config = next(a.message for a in actions if isinstance(a, Send) and isinstance(a.message, m.Config))
    assert turn_entry(config.peerConnectionOptions)["username"].endswith(":UnknownStreamer")
