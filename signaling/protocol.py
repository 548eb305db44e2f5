"""The signalling protocol as a sans-I/O state machine.

Theory of operation: one ``SignalingCore`` holds every connection of a node (streamers,
players, SFUs) and the bindings between them. The adapter feeds it events —
``connect``, ``receive`` (a parsed JSON value), ``reject`` (a frame that could not be
parsed), ``disconnect`` — and gets back a list of actions to carry out: ``Send`` a
message to a connection, ``Close`` a connection, or log a ``Problem``. The core never
awaits, reads a clock or touches a socket, so each event is atomic and the whole
protocol is tested with plain calls.

Routed messages (offer, answer, ICE, data-channel set-up) travel as the parsed dict,
so fields this server does not know are forwarded untouched; only ``playerId`` (and
``sfuId``) is edited, as Epic's Wilbur does. Everything the server acts on is checked
against its typed model in ``messages``.

Compatibility choices (docs/protocol.md explains each):
- streamers and SFUs are never sent a type they might not know (UE 4.27 closes on
  one), so their bad messages are dropped and logged; players get an ``error``
  message, which browsers ignore if they do not know it;
- a connection that keeps sending broken messages is closed with 1008 once it
  exceeds ``max_protocol_errors``; unknown types do not count (newer clients may
  send types this server has not learnt yet);
- ``playerId`` is kept on streamer->player messages (UE5.7+ behaviour, safe for all
  frontends) and stripped on SFU->player messages;
- a streamer that re-sends the id it already holds keeps it (Wilbur renames it).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, NewType

from signaling import errors
from signaling import messages as m

ConnId = NewType("ConnId", int)
Json = dict[str, Any]


class Role(enum.Enum):
    STREAMER = "streamer"
    PLAYER = "player"
    SFU = "sfu"


class Send(NamedTuple):
    to: ConnId
    message: m.Message | Json


class Close(NamedTuple):
    conn: ConnId
    code: int
    reason: str


class Problem(NamedTuple):
    """Something the adapter should log (once per connection and kind)."""

    conn: ConnId
    kind: str
    detail: str


Action = Send | Close | Problem
PeerOptions = Callable[[Role, str], Json]


@dataclass(slots=True, eq=False)
class Peer:
    conn: ConnId
    role: Role
    player_id: str | None = None  # players, and SFUs in their downstream role
    streamer_id: str | None = None  # streamers and SFUs
    streaming: bool = False  # listed in streamerList
    subscribed_to: ConnId | None = None
    subscribers: dict[ConnId, None] = field(default_factory=dict)  # ordered set
    allowed_streamer: str | None = None  # session-token scope; None = any
    errors: int = 0


def _no_options(role: Role, peer_id: str) -> Json:
    return {}


_Handler = Callable[["SignalingCore", Peer, Json, Any], list[Action]]


class SignalingCore:
    """All signalling state of one node. Not thread-safe; every method is atomic."""

    def __init__(
        self,
        *,
        peer_options: PeerOptions = _no_options,
        max_players_per_streamer: int = 0,
        max_protocol_errors: int = 20,
        player_id_prefix: str = "Player",
    ) -> None:
        self._peer_options = peer_options
        self.max_players = max_players_per_streamer
        self.max_errors = max_protocol_errors
        self._player_prefix = player_id_prefix
        self._peers: dict[ConnId, Peer] = {}
        self._streamers: dict[str, ConnId] = {}  # registration order = listing order
        self._players: dict[str, ConnId] = {}
        self._next_conn = 0
        self._next_player = 0

    # --- events -------------------------------------------------------------------

    def connect(
        self, role: Role, *, allowed_streamer: str | None = None, options_key: str | None = None
    ) -> tuple[ConnId, list[Action]]:
        """A socket opened. Returns its id and the greeting to send.

        ``allowed_streamer`` scopes a player to the one streamer its session token names;
        ``options_key`` (the session id) replaces the peer id as the key for its
        ``peerConnectionOptions`` (e.g. the TURN username's user part).
        """
        conn = ConnId(self._next_conn)
        self._next_conn += 1
        peer = Peer(conn, role, allowed_streamer=allowed_streamer)
        self._peers[conn] = peer
        actions: list[Action] = []
        if role is not Role.STREAMER:
            peer.player_id = f"{self._player_prefix}{self._next_player}"
            self._next_player += 1
            self._players[peer.player_id] = conn
        if role is Role.PLAYER:
            assert peer.player_id is not None
            actions.append(Send(conn, self._config(role, options_key or peer.player_id)))
        else:
            peer.streamer_id = self._unique_streamer_id("UnknownStreamer", peer)
            self._streamers[peer.streamer_id] = conn
            actions.append(Send(conn, m.Identify()))
            actions.append(Send(conn, self._config(role, peer.streamer_id)))
        return conn, actions

    def receive(self, conn: ConnId, obj: Any) -> list[Action]:
        """A parsed JSON value arrived on ``conn``."""
        peer = self._peers[conn]
        if type(obj) is not dict:
            return self._invalid(peer, "invalid_message", "a message must be a JSON object")
        kind = obj.get("type")
        handler = _HANDLERS[peer.role].get(kind) if type(kind) is str else None
        if handler is None:
            return self._unhandled(peer, kind)
        assert isinstance(kind, str)
        try:
            m.normalise_player_id(obj)
            msg = m.validate(obj, m.MODELS[kind])
        except m.InvalidFields as exc:
            return self._invalid(peer, "invalid_message", str(exc))
        return handler(self, peer, obj, msg)

    def reject(self, conn: ConnId, detail: str) -> list[Action]:
        """A frame arrived that is not JSON at all."""
        return self._invalid(self._peers[conn], "invalid_json", detail)

    def disconnect(self, conn: ConnId) -> list[Action]:
        """The socket closed, for whatever reason. Unknown ids are ignored."""
        peer = self._peers.pop(conn, None)
        if peer is None:
            return []
        actions: list[Action] = []
        if peer.player_id is not None:
            self._players.pop(peer.player_id, None)
            actions += self._unsubscribe(peer)
        if peer.streamer_id is not None:
            if self._streamers.get(peer.streamer_id) == conn:
                del self._streamers[peer.streamer_id]
            for sub_conn in list(peer.subscribers):
                actions += self._drop_subscriber(peer, self._peers[sub_conn])
        return actions

    # --- queries (REST API, metrics) ------------------------------------------------

    def peers(self) -> Iterator[Peer]:
        return iter(self._peers.values())

    def peer(self, conn: ConnId) -> Peer:
        return self._peers[conn]

    def streamer_by_id(self, streamer_id: str) -> Peer | None:
        conn = self._streamers.get(streamer_id)
        return None if conn is None else self._peers[conn]

    def player_by_id(self, player_id: str) -> Peer | None:
        conn = self._players.get(player_id)
        return None if conn is None else self._peers[conn]

    # --- helpers --------------------------------------------------------------------

    def _config(self, role: Role, peer_id: str) -> m.Config:
        return m.Config(
            peerConnectionOptions=self._peer_options(role, peer_id),
            protocolVersion=m.PROTOCOL_VERSION,
        )

    def _unique_streamer_id(self, wanted: str, peer: Peer) -> str:
        """Epic's rule: ``Cam`` taken -> ``Cam1``; ``Cam`` and ``Cam1`` taken -> ``Cam2``."""
        pattern = re.compile(re.escape(wanted) + r"(\d*)")
        suffixes = [
            int(match.group(1) or 0)
            for sid, conn in self._streamers.items()
            if conn != peer.conn and (match := pattern.fullmatch(sid))
        ]
        return wanted if not suffixes else f"{wanted}{max(suffixes) + 1}"

    def _invalid(self, peer: Peer, kind: str, detail: str) -> list[Action]:
        actions: list[Action] = [Problem(peer.conn, kind, detail)]
        if peer.role is Role.PLAYER:
            actions.append(Send(peer.conn, m.Error(code=kind, message=detail)))
        peer.errors += 1
        if peer.errors > self.max_errors:
            actions.append(Close(peer.conn, errors.POLICY_VIOLATION, "too many protocol errors"))
        return actions

    def _unhandled(self, peer: Peer, kind: object) -> list[Action]:
        if not isinstance(kind, str):
            return self._invalid(peer, "invalid_message", "a message needs a string 'type'")
        if kind in m.MODELS:
            return self._invalid(peer, "not_allowed", f"'{kind}' may not be sent by a {peer.role.value}")
        detail = f"unknown message type '{kind[:64]}'"
        actions: list[Action] = [Problem(peer.conn, "unknown_type", detail)]
        if peer.role is Role.PLAYER:
            actions.append(Send(peer.conn, m.Error(code="unknown_type", message=detail)))
        return actions

    def _listed_streamer_ids(self, for_peer: Peer) -> list[str]:
        if for_peer.role is Role.SFU:  # an SFU sees every registered streamer, itself included
            return list(self._streamers)
        return [sid for sid, conn in self._streamers.items() if self._peers[conn].streaming]

    def _subscribe(self, peer: Peer, streamer_id: str) -> list[Action]:
        target_conn = self._streamers.get(streamer_id)
        failure: str | None = None
        if peer.allowed_streamer is not None and streamer_id != peer.allowed_streamer:
            failure = f"Streamer {streamer_id} is not available to this session."
        elif target_conn is None or target_conn == peer.conn:
            failure = f"Streamer {streamer_id} does not exist."
        elif self.max_players and len(self._peers[target_conn].subscribers) >= self.max_players:
            if peer.subscribed_to != target_conn:
                failure = f"Streamer {streamer_id} is full. Max players = {self.max_players}."
        if failure is not None:
            if peer.role is Role.SFU:  # Epic never sends subscribeFailed to an SFU
                return [Problem(peer.conn, "subscribe_failed", failure)]
            return [
                Problem(peer.conn, "subscribe_failed", failure),
                Send(peer.conn, m.SubscribeFailed(message=failure)),
            ]
        assert target_conn is not None and peer.player_id is not None
        actions = self._unsubscribe(peer)
        self._bind(peer, self._peers[target_conn])
        actions.append(
            Send(target_conn, m.PlayerConnected(playerId=peer.player_id, dataChannel=True, sfu=peer.role is Role.SFU))
        )
        return actions

    def _bind(self, peer: Peer, streamer: Peer) -> None:
        peer.subscribed_to = streamer.conn
        streamer.subscribers[peer.conn] = None

    def _unsubscribe(self, peer: Peer) -> list[Action]:
        if peer.subscribed_to is None:
            return []
        streamer = self._peers[peer.subscribed_to]
        streamer.subscribers.pop(peer.conn, None)
        peer.subscribed_to = None
        assert peer.player_id is not None
        return [Send(streamer.conn, m.PlayerDisconnected(playerId=peer.player_id))]

    def _drop_subscriber(self, streamer: Peer, sub: Peer) -> list[Action]:
        """The streamer (or SFU) ``sub`` watched is gone."""
        streamer.subscribers.pop(sub.conn, None)
        sub.subscribed_to = None
        if sub.role is Role.SFU:
            return [Send(sub.conn, m.StreamerDisconnected())]
        return [Close(sub.conn, errors.STREAMER_GONE, "streamer disconnected")]

    def _auto_subscribe(self, peer: Peer) -> list[Action] | None:
        """Legacy path: a player sent a routed message before subscribing.

        Epic subscribes it to the first registered streamer (identified or not).
        Returns None when that is impossible and the player has been closed.
        """
        wanted = peer.allowed_streamer or next(iter(self._streamers), None)
        if wanted is None:
            return None
        actions = self._subscribe(peer, wanted)
        return actions if peer.subscribed_to is not None else None

    def _to_player(self, source: Peer, obj: Json, *, strip: bool) -> list[Action]:
        """Route a message a streamer or SFU addressed to one of its players."""
        pid = obj.get("playerId")
        if not pid:
            return self._invalid(source, "invalid_message", f"'{obj['type']}' needs a playerId")
        target = self._players.get(pid)
        if target is None or self._peers[target].subscribed_to != source.conn:
            # Not counted as an error: the player may have left a moment ago.
            return [Problem(source.conn, "unknown_player", f"no player {pid[:64]} subscribed to this streamer")]
        if strip:
            del obj["playerId"]
        return [Send(target, obj)]


# --- handlers: one function per (role, message type) --------------------------------


def _ping(core: SignalingCore, peer: Peer, obj: Json, msg: m.Ping) -> list[Action]:
    return [Send(peer.conn, m.Pong(time=msg.time))]


def _ignore(core: SignalingCore, peer: Peer, obj: Json, msg: Any) -> list[Action]:
    return []


def _list_streamers(core: SignalingCore, peer: Peer, obj: Json, msg: Any) -> list[Action]:
    return [Send(peer.conn, m.StreamerList(ids=core._listed_streamer_ids(peer)))]


def _subscribe(core: SignalingCore, peer: Peer, obj: Json, msg: m.Subscribe) -> list[Action]:
    return core._subscribe(peer, msg.streamerId)


def _unsubscribe(core: SignalingCore, peer: Peer, obj: Json, msg: Any) -> list[Action]:
    return core._unsubscribe(peer)


def _player_forward(core: SignalingCore, peer: Peer, obj: Json, msg: Any) -> list[Action]:
    """Player -> its streamer (or SFU); ``playerId`` is always overwritten with the sender's."""
    target = peer.subscribed_to
    if target is None:
        actions = core._auto_subscribe(peer)
        if actions is None:
            return [Close(peer.conn, errors.TRY_AGAIN_LATER, "no streamer to subscribe to")]
        obj["playerId"] = peer.player_id
        actions.append(Send(peer.subscribed_to, obj))  # type: ignore[arg-type]
        return actions
    obj["playerId"] = peer.player_id
    return [Send(target, obj)]


def _endpoint_id(core: SignalingCore, peer: Peer, obj: Json, msg: m.EndpointId) -> list[Action]:
    old = peer.streamer_id
    assert old is not None
    new = core._unique_streamer_id(msg.id or "UnknownStreamer", peer) if msg.id != old else old
    if new != old:
        del core._streamers[old]
        core._streamers[new] = peer.conn
        peer.streamer_id = new
    peer.streaming = True
    actions: list[Action] = [Send(peer.conn, m.EndpointIdConfirm(committedId=new))]
    for sub_conn in peer.subscribers:
        actions.append(Send(sub_conn, m.StreamerIdChanged(newID=new)))
        if core._peers[sub_conn].role is Role.PLAYER:
            actions.append(Send(sub_conn, m.LegacyStreamerIdChanged(newID=new)))
    return actions


def _streamer_to_player(core: SignalingCore, peer: Peer, obj: Json, msg: Any) -> list[Action]:
    return core._to_player(peer, obj, strip=False)


def _disconnect_player(core: SignalingCore, peer: Peer, obj: Json, msg: m.DisconnectPlayer) -> list[Action]:
    target = core.player_by_id(msg.playerId)
    if target is None or target.subscribed_to != peer.conn:
        return [Problem(peer.conn, "unknown_player", f"no player {msg.playerId[:64]} subscribed to this streamer")]
    actions = core._unsubscribe(target)
    reason = errors.clip_reason(msg.reason or "disconnected by streamer")
    actions.append(Close(target.conn, errors.INTERNAL_ERROR, reason))
    return actions


def _streamer_layer_preference(core: SignalingCore, peer: Peer, obj: Json, msg: Any) -> list[Action]:
    """PS1 blueprint API: a streamer's layer preference goes to the SFU watching it."""
    return [Send(c, obj) for c in peer.subscribers if core._peers[c].role is Role.SFU]


def _sfu_to_player(core: SignalingCore, peer: Peer, obj: Json, msg: Any) -> list[Action]:
    return core._to_player(peer, obj, strip=True)


def _sfu_upstream(core: SignalingCore, peer: Peer, obj: Json, msg: Any) -> list[Action]:
    """SFU -> the streamer it takes media from; ``playerId`` defaults to the SFU's own."""
    if peer.subscribed_to is None:
        return [Problem(peer.conn, "not_subscribed", f"SFU sent '{obj['type']}' before subscribing")]
    if not obj.get("playerId"):
        obj["playerId"] = peer.player_id
    if obj["type"] == "streamerDataChannels":
        obj["sfuId"] = peer.player_id
    return [Send(peer.subscribed_to, obj)]


def _sfu_ice(core: SignalingCore, peer: Peer, obj: Json, msg: Any) -> list[Action]:
    target = core._players.get(obj.get("playerId") or "")
    if target is not None and core._peers[target].subscribed_to == peer.conn:
        return core._to_player(peer, obj, strip=True)
    return _sfu_upstream(core, peer, obj, msg)


def _start_streaming(core: SignalingCore, peer: Peer, obj: Json, msg: Any) -> list[Action]:
    peer.streaming = True
    return []


def _stop_streaming(core: SignalingCore, peer: Peer, obj: Json, msg: Any) -> list[Action]:
    peer.streaming = False
    actions: list[Action] = []
    for sub_conn in list(peer.subscribers):
        actions += core._drop_subscriber(peer, core._peers[sub_conn])
    return actions


_COMMON: dict[str, _Handler] = {"ping": _ping, "pong": _ignore}

_HANDLERS: dict[Role, dict[str, _Handler]] = {
    Role.PLAYER: {
        **_COMMON,
        "listStreamers": _list_streamers,
        "subscribe": _subscribe,
        "unsubscribe": _unsubscribe,
        "offer": _player_forward,
        "answer": _player_forward,
        "iceCandidate": _player_forward,
        "layerPreference": _player_forward,
        "dataChannelRequest": _player_forward,
        "peerDataChannelsReady": _player_forward,
        "stats": _ignore,  # deprecated; Wilbur ignores it too
    },
    Role.STREAMER: {
        **_COMMON,
        "endpointId": _endpoint_id,
        "offer": _streamer_to_player,
        "answer": _streamer_to_player,
        "iceCandidate": _streamer_to_player,
        "disconnectPlayer": _disconnect_player,
        "layerPreference": _streamer_layer_preference,
    },
    Role.SFU: {
        **_COMMON,
        "endpointId": _endpoint_id,
        "listStreamers": _list_streamers,
        "subscribe": _subscribe,
        "unsubscribe": _unsubscribe,
        "offer": _sfu_to_player,
        "peerDataChannels": _sfu_to_player,
        "answer": _sfu_upstream,
        "streamerDataChannels": _sfu_upstream,
        "iceCandidate": _sfu_ice,
        "startStreaming": _start_streaming,
        "stopStreaming": _stop_streaming,
    },
}
