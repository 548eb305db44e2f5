"""The signalling core, driven by plain calls: every message and role rule."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from signaling import errors
from signaling import messages as m
from signaling.protocol import Address, Close, Problem, Role, Send, SignalingCore


def wire(action: Send) -> dict[str, Any]:
    """What the peer would see on the wire."""
    msg = action.message
    return dict(msg) if isinstance(msg, dict) else msgspec.json.decode(m.encode(msg))


def sends(actions: list[Any], to: Address | None = None) -> list[dict[str, Any]]:
    return [wire(a) for a in actions if isinstance(a, Send) and (to is None or a.to == to)]


def closes(actions: list[Any]) -> list[Close]:
    return [a for a in actions if isinstance(a, Close)]


class Harness:
    def __init__(self, **kwargs: Any) -> None:
        self.core = SignalingCore(**kwargs)

    def streamer(self, name: str | None = "Cam") -> Address:
        conn, greeting = self.core.connect(Role.STREAMER)
        assert [w["type"] for w in sends(greeting)] == ["identify", "config"]
        if name is not None:
            out = self.core.receive(conn, {"type": "endpointId", "id": name})
            assert sends(out)[0]["type"] == "endpointIdConfirm"
        return conn

    def player(self, subscribe_to: str | None = None) -> Address:
        conn, greeting = self.core.connect(Role.PLAYER)
        assert [w["type"] for w in sends(greeting)] == ["config"]
        if subscribe_to is not None:
            self.core.receive(conn, {"type": "subscribe", "streamerId": subscribe_to})
        return conn

    def send(self, conn: Address, **msg: Any) -> list[Any]:
        return self.core.receive(conn, msg)


@pytest.fixture
def h() -> Harness:
    return Harness()


def test_greetings_carry_config_with_protocol_version(h: Harness) -> None:
    _, greeting = h.core.connect(Role.PLAYER)
    assert sends(greeting) == [{"type": "config", "peerConnectionOptions": {}, "protocolVersion": "1.3.0"}]
    _, greeting = h.core.connect(Role.SFU)
    assert [w["type"] for w in sends(greeting)] == ["identify", "config"]


def test_peer_options_are_built_per_connection() -> None:
    seen: list[tuple[Role, str]] = []

    def options(role: Role, peer_id: str) -> dict[str, Any]:
        seen.append((role, peer_id))
        return {"iceServers": [{"urls": ["turn:x"], "username": peer_id}]}

    h = Harness(peer_options=options)
    _, greeting = h.core.connect(Role.PLAYER)
    assert sends(greeting)[0]["peerConnectionOptions"]["iceServers"][0]["username"] == "Player0"
    h.core.connect(Role.STREAMER)
    assert seen == [(Role.PLAYER, "Player0"), (Role.STREAMER, "UnknownStreamer")]


def test_endpoint_id_suffix_rule(h: Harness) -> None:
    a = h.streamer("Cam")
    b, _ = h.core.connect(Role.STREAMER)
    assert sends(h.send(b, type="endpointId", id="Cam")) == [{"type": "endpointIdConfirm", "committedId": "Cam1"}]
    c, _ = h.core.connect(Role.STREAMER)
    assert sends(h.send(c, type="endpointId", id="Cam"))[0]["committedId"] == "Cam2"
    # Re-sending the id a streamer holds keeps it (Wilbur would rename it).
    assert sends(h.send(a, type="endpointId", id="Cam"))[0]["committedId"] == "Cam"
    # Empty request: a temporary-style id.
    d, _ = h.core.connect(Role.STREAMER)
    assert sends(h.send(d, type="endpointId", id=""))[0]["committedId"].startswith("UnknownStreamer")


def test_temporary_ids_are_unique_and_unlisted(h: Harness) -> None:
    a, _ = h.core.connect(Role.STREAMER)
    b, _ = h.core.connect(Role.STREAMER)
    assert h.core.peer(a).streamer_id == "UnknownStreamer"
    assert h.core.peer(b).streamer_id == "UnknownStreamer1"
    p = h.player()
    assert sends(h.send(p, type="listStreamers")) == [{"type": "streamerList", "ids": []}]


def test_list_streamers_only_identified_in_registration_order(h: Harness) -> None:
    h.streamer("B")
    h.core.connect(Role.STREAMER)  # never identifies
    h.streamer("A")
    p = h.player()
    assert sends(h.send(p, type="listStreamers"))[0]["ids"] == ["B", "A"]


def test_subscribe_sends_player_connected(h: Harness) -> None:
    s = h.streamer()
    p = h.player()
    out = h.send(p, type="subscribe", streamerId="Cam")
    assert sends(out, s) == [{"type": "playerConnected", "playerId": "Player0", "dataChannel": True, "sfu": False}]


def test_subscribe_to_missing_streamer_fails_and_keeps_socket(h: Harness) -> None:
    p = h.player()
    out = h.send(p, type="subscribe", streamerId="Nope")
    assert sends(out, p) == [{"type": "subscribeFailed", "message": "Streamer Nope does not exist."}]
    assert not closes(out)


def test_subscribe_full_streamer_fails() -> None:
    h = Harness(max_players_per_streamer=1)
    h.streamer()
    h.player("Cam")
    p2 = h.player()
    out = h.send(p2, type="subscribe", streamerId="Cam")
    assert sends(out, p2) == [{"type": "subscribeFailed", "message": "Streamer Cam is full. Max players = 1."}]


def test_resubscribe_unsubscribes_first(h: Harness) -> None:
    a = h.streamer("A")
    b = h.streamer("B")
    p = h.player("A")
    out = h.send(p, type="subscribe", streamerId="B")
    assert sends(out, a) == [{"type": "playerDisconnected", "playerId": "Player0"}]
    assert sends(out, b)[0]["type"] == "playerConnected"


def test_unsubscribe_keeps_socket(h: Harness) -> None:
    s = h.streamer()
    p = h.player("Cam")
    out = h.send(p, type="unsubscribe")
    assert sends(out, s) == [{"type": "playerDisconnected", "playerId": "Player0"}]
    assert not closes(out)
    assert h.send(p, type="unsubscribe") == []


@pytest.mark.parametrize(
    "kind,body",
    [
        ("offer", {"sdp": "v=0"}),
        ("answer", {"sdp": "v=0", "minBitrateBps": 0, "maxBitrateBps": 0}),
        (
            "iceCandidate",
            {"candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0", "sdpMLineIndex": 0}},
        ),
        ("layerPreference", {"spatialLayer": 0, "temporalLayer": 0, "playerId": ""}),
        ("dataChannelRequest", {}),
        ("peerDataChannelsReady", {}),
    ],
)
def test_player_messages_reach_streamer_with_player_id_overwritten(h: Harness, kind: str, body: dict[str, Any]) -> None:
    s = h.streamer()
    p = h.player("Cam")
    out = h.send(p, type=kind, **{**body, "playerId": "Player99", "extraField": [1]})
    assert sends(out, s) == [{"type": kind, **body, "playerId": "Player0", "extraField": [1]}]


@pytest.mark.parametrize(
    "kind,body",
    [
        ("offer", {"sdp": "v=0"}),
        ("answer", {"sdp": "v=0"}),
        ("iceCandidate", {"candidate": {"candidate": "c", "sdpMid": "0", "sdpMLineIndex": 0}}),
    ],
)
def test_streamer_messages_reach_their_player_with_player_id_kept(h: Harness, kind: str, body: dict[str, Any]) -> None:
    s = h.streamer()
    p = h.player("Cam")
    out = h.send(s, type=kind, playerId="Player0", **body)
    assert sends(out, p) == [{"type": kind, "playerId": "Player0", **body}]


def test_numeric_player_id_from_ue_is_normalised(h: Harness) -> None:
    s = h.streamer()
    p = h.player("Cam")
    out = h.core.receive(s, {"type": "offer", "playerId": 0, "sdp": "v=0"})
    assert sends(out, p) == [] and len(out) == 1  # 0 is not Player0 ...
    assert isinstance(out[0], Problem) and out[0].kind == "unknown_player"
    h2 = Harness(player_id_prefix="")  # ... unless ids are bare numbers, as UE PS1 expects
    s2 = h2.streamer()
    p2 = h2.player("Cam")
    assert sends(h2.core.receive(s2, {"type": "offer", "playerId": 0, "sdp": "v=0"}), p2)[0]["playerId"] == "0"


def test_streamer_cannot_reach_another_streamers_player(h: Harness) -> None:
    h.streamer("A")
    b = h.streamer("B")
    h.player("A")
    out = h.send(b, type="offer", playerId="Player0", sdp="v=0")
    assert [type(a) for a in out] == [Problem]
    assert out[0].kind == "unknown_player"


def test_streamer_message_for_unknown_player_is_dropped(h: Harness) -> None:
    s = h.streamer()
    out = h.send(s, type="iceCandidate", playerId="Ghost", candidate={"candidate": "c"})
    assert [type(a) for a in out] == [Problem]


def test_streamer_message_without_player_id_is_invalid_but_streamer_gets_no_error(h: Harness) -> None:
    s = h.streamer()
    out = h.send(s, type="offer", sdp="v=0")
    assert sends(out) == []
    assert [a.kind for a in out if isinstance(a, Problem)] == ["invalid_message"]


def test_ping_is_answered_verbatim(h: Harness) -> None:
    p = h.player()
    assert sends(h.send(p, type="ping", time=1795805863949)) == [{"type": "pong", "time": 1795805863949}]
    s = h.streamer()
    assert sends(h.send(s, type="ping", time=1795805863)) == [{"type": "pong", "time": 1795805863}]
    assert sends(h.send(p, type="ping", time=0)) == [{"type": "pong", "time": 0}]
    assert h.send(p, type="pong", time=5) == []


def test_disconnect_player(h: Harness) -> None:
    s = h.streamer()
    p = h.player("Cam")
    out = h.send(s, type="disconnectPlayer", playerId="Player0", reason="x" * 300)
    assert sends(out, s) == [{"type": "playerDisconnected", "playerId": "Player0"}]
    [close] = closes(out)
    assert close.conn == p and close.code == 1011 and len(close.reason.encode()) <= 123
    # The socket closing afterwards does not tell the streamer twice.
    assert h.core.disconnect(p) == []


def test_disconnect_player_of_another_streamer_is_refused(h: Harness) -> None:
    h.streamer("A")
    b = h.streamer("B")
    h.player("A")
    out = h.send(b, type="disconnectPlayer", playerId="Player0")
    assert not closes(out) and sends(out) == []


def test_player_close_tells_streamer(h: Harness) -> None:
    s = h.streamer()
    p = h.player("Cam")
    assert sends(h.core.disconnect(p), s) == [{"type": "playerDisconnected", "playerId": "Player0"}]
    assert h.core.player_by_id("Player0") is None


def test_streamer_close_closes_its_players_and_tells_sfu(h: Harness) -> None:
    s = h.streamer()
    p1 = h.player("Cam")
    p2 = h.player("Cam")
    other = h.player()
    sfu, _ = h.core.connect(Role.SFU)
    h.send(sfu, type="subscribe", streamerId="Cam")
    out = h.core.disconnect(s)
    assert {c.conn for c in closes(out)} == {p1, p2}
    assert all(c.code == errors.STREAMER_GONE for c in closes(out))
    assert sends(out, sfu) == [{"type": "streamerDisconnected"}]
    assert sends(out, other) == []
    assert h.core.streamer_by_id("Cam") is None


def test_streamer_id_change_reaches_subscribers_in_both_spellings(h: Harness) -> None:
    s = h.streamer("Cam")
    p = h.player("Cam")
    out = h.send(s, type="endpointId", id="Cam2")
    assert sends(out, p) == [
        {"type": "streamerIdChanged", "newID": "Cam2"},
        {"type": "streamerIDChanged", "newID": "Cam2"},
    ]


def test_legacy_auto_subscribe_to_first_registered_streamer(h: Harness) -> None:
    s, _ = h.core.connect(Role.STREAMER)  # never identifies
    h.streamer("Later")
    p = h.player()
    out = h.send(p, type="offer", sdp="v=0")
    assert [w["type"] for w in sends(out, s)] == ["playerConnected", "offer"]
    assert sends(out, s)[1]["playerId"] == "Player0"


def test_legacy_auto_subscribe_without_streamer_closes_player(h: Harness) -> None:
    p = h.player()
    [close] = closes(h.send(p, type="answer", sdp="v=0"))
    assert close.conn == p and close.code == errors.TRY_AGAIN_LATER


def test_legacy_auto_subscribe_to_full_streamer_closes_only_that_player() -> None:
    h = Harness(max_players_per_streamer=1)
    s = h.streamer()
    h.player("Cam")
    p2 = h.player()
    out = h.send(p2, type="offer", sdp="v=0")
    assert [c.conn for c in closes(out)] == [p2]
    assert sends(out, s) == []


def test_session_scope_limits_subscription(h: Harness) -> None:
    h.streamer("A")
    h.streamer("B")
    p, _ = h.core.connect(Role.PLAYER, allowed_streamer="B")
    out = h.send(p, type="subscribe", streamerId="A")
    assert sends(out, p)[0]["type"] == "subscribeFailed"
    out = h.send(p, type="offer", sdp="v=0")  # auto-subscribe goes to the allowed one
    b = h.core.streamer_by_id("B")
    assert b is not None and h.core.peer(p).subscribed_to == b.conn


# --- SFU ----------------------------------------------------------------------------


def test_sfu_flow_matches_epic(h: Harness) -> None:
    s = h.streamer("DefaultStreamer")
    sfu, _ = h.core.connect(Role.SFU)
    h.send(sfu, type="endpointId", id="SFU")
    assert sends(h.send(sfu, type="listStreamers"))[0]["ids"] == ["DefaultStreamer", "SFU"]
    out = h.send(sfu, type="subscribe", streamerId="DefaultStreamer")
    assert sends(out, s) == [{"type": "playerConnected", "playerId": "Player0", "dataChannel": True, "sfu": True}]
    out = h.send(s, type="offer", playerId="Player0", sdp="v=0", multiplex=True)
    assert sends(out, sfu)[0]["type"] == "offer"
    assert sends(h.send(sfu, type="answer", sdp="a"), s) == [{"type": "answer", "sdp": "a", "playerId": "Player0"}]
    h.send(sfu, type="startStreaming")
    p = h.player()
    assert "SFU" in sends(h.send(p, type="listStreamers"))[0]["ids"]
    out = h.send(p, type="subscribe", streamerId="SFU")
    assert sends(out, sfu) == [{"type": "playerConnected", "playerId": "Player1", "dataChannel": True, "sfu": False}]
    out = h.send(sfu, type="offer", playerId="Player1", sdp="v=0", sfu=True)
    assert sends(out, p) == [{"type": "offer", "sdp": "v=0", "sfu": True}]  # playerId stripped
    assert sends(h.send(p, type="dataChannelRequest"), sfu) == [{"type": "dataChannelRequest", "playerId": "Player1"}]
    out = h.send(sfu, type="peerDataChannels", playerId="Player1", sendStreamId=1, recvStreamId=2)
    assert sends(out, p) == [{"type": "peerDataChannels", "sendStreamId": 1, "recvStreamId": 2}]
    out = h.send(sfu, type="streamerDataChannels", playerId="Player1", sendStreamId=1, recvStreamId=2)
    assert sends(out, s) == [
        {
            "type": "streamerDataChannels",
            "playerId": "Player1",
            "sendStreamId": 1,
            "recvStreamId": 2,
            "sfuId": "Player0",
        }
    ]
    out = h.send(s, type="layerPreference", spatialLayer=1, temporalLayer=1)
    assert sends(out, sfu)[0]["type"] == "layerPreference"


def test_sfu_stop_streaming_drops_its_players(h: Harness) -> None:
    h.streamer("DefaultStreamer")
    sfu, _ = h.core.connect(Role.SFU)
    h.send(sfu, type="endpointId", id="SFU")
    p = h.player("SFU")
    out = h.send(sfu, type="stopStreaming")
    assert [c.conn for c in closes(out)] == [p]


def test_sfu_close_closes_players_and_frees_upstream(h: Harness) -> None:
    s = h.streamer("DefaultStreamer")
    sfu, _ = h.core.connect(Role.SFU)
    h.send(sfu, type="endpointId", id="SFU")
    h.send(sfu, type="subscribe", streamerId="DefaultStreamer")
    p = h.player("SFU")
    out = h.core.disconnect(sfu)
    assert sends(out, s) == [{"type": "playerDisconnected", "playerId": "Player0"}]
    assert [c.conn for c in closes(out)] == [p]


def test_sfu_never_gets_subscribe_failed(h: Harness) -> None:
    sfu, _ = h.core.connect(Role.SFU)
    out = h.send(sfu, type="subscribe", streamerId="Nope")
    assert sends(out) == [] and [a.kind for a in out] == ["subscribe_failed"]


# --- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "obj,kind",
    [
        ([1, 2], "invalid_message"),
        ("text", "invalid_message"),
        ({"no": "type"}, "invalid_message"),
        ({"type": 5}, "invalid_message"),
        ({"type": "subscribe"}, "invalid_message"),  # missing field
        ({"type": "subscribe", "streamerId": 7}, "invalid_message"),  # wrong type
        ({"type": "iceCandidate", "candidate": "x"}, "invalid_message"),
        ({"type": "playerConnected", "playerId": "P"}, "not_allowed"),  # out of role
        ({"type": "endpointId", "id": "x"}, "not_allowed"),
        ({"type": "offer", "sdp": "v", "playerId": 1.5}, "invalid_message"),
    ],
)
def test_bad_player_messages_get_an_error_and_nothing_else(h: Harness, obj: Any, kind: str) -> None:
    s = h.streamer()
    p = h.player("Cam")
    out = h.core.receive(p, obj)
    assert sends(out, s) == []
    [err] = sends(out, p)
    assert err["type"] == "error" and err["code"] == kind and err["message"]
    assert not closes(out)


def test_unknown_type_gets_error_but_never_counts_towards_close() -> None:
    h = Harness(max_protocol_errors=2)
    p = h.player()
    for _ in range(10):
        out = h.send(p, type="fromTheFuture")
        assert sends(out)[0]["code"] == "unknown_type" and not closes(out)


def test_streamer_is_never_sent_an_error_type(h: Harness) -> None:
    s = h.streamer()
    for bad in ({"type": "subscribe", "streamerId": "x"}, {"type": "whatever"}, [1]):
        out = h.core.receive(s, bad)
        assert sends(out) == [] and isinstance(out[0], Problem)
    assert sends(h.core.reject(s, "bad json")) == []


def test_too_many_protocol_errors_close_with_1008() -> None:
    h = Harness(max_protocol_errors=3)
    other_s = h.streamer()
    other_p = h.player("Cam")
    p = h.player()
    outs = [h.core.reject(p, "bad") for _ in range(4)]
    assert [closes(o) for o in outs[:3]] == [[], [], []]
    [close] = closes(outs[3])
    assert close.conn == p and close.code == errors.POLICY_VIOLATION
    # Everyone else is untouched.
    assert sends(h.send(other_p, type="ping", time=1), other_p) == [{"type": "pong", "time": 1}]
    assert h.core.peer(other_s).subscribers


def test_disconnect_of_unknown_connection_is_harmless(h: Harness) -> None:
    assert h.core.disconnect(Address("local/12345")) == []


def test_streamer_leaving_tells_its_sfu_which_stays_and_closes_the_sfus_own_players(h: Harness) -> None:
    s = h.streamer("Cam")
    sfu, _ = h.core.connect(Role.SFU)
    h.send(sfu, type="endpointId", id="SFU")
    h.send(sfu, type="subscribe", streamerId="Cam")
    viewer = h.player("SFU")  # watches Cam through the SFU
    direct = h.player("Cam")
    viewer_id = h.core.peer(viewer).player_id
    out = h.core.disconnect(s)
    # The SFU is told its streamer left, then (as Epic's server does: each of its players
    # unsubscribes before it is closed) that each of its players left; it is not closed.
    assert sends(out, sfu) == [
        {"type": "streamerDisconnected"},
        {"type": "playerDisconnected", "playerId": viewer_id},
    ]
    # Its player is closed exactly as a direct player of the streamer is.
    by_conn = {c.conn: (c.code, c.reason) for c in closes(out)}
    assert set(by_conn) == {viewer, direct}
    assert by_conn[viewer] == by_conn[direct] and by_conn[viewer][0] == errors.STREAMER_GONE
    # The SFU stays served, and its player's socket closing tells it nothing twice.
    assert sends(h.send(sfu, type="ping", time=3), sfu) == [{"type": "pong", "time": 3}]
    assert sends(h.core.disconnect(viewer)) == []
    assert sends(h.core.disconnect(direct)) == []
    h.streamer("Cam")  # a streamer under that id again: the SFU can subscribe anew
    assert [w["type"] for w in sends(h.send(sfu, type="subscribe", streamerId="Cam"))] == ["playerConnected"]


def test_sfu_stop_streaming_tells_it_of_each_player_it_drops(h: Harness) -> None:
    sfu, _ = h.core.connect(Role.SFU)
    h.send(sfu, type="endpointId", id="SFU")
    p = h.player("SFU")
    out = h.send(sfu, type="stopStreaming")
    assert sends(out, sfu) == [{"type": "playerDisconnected", "playerId": h.core.peer(p).player_id}]
    assert [c.conn for c in closes(out)] == [p]
