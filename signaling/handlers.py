"""One function per (role, message type): what the core does with each message.

Each takes the core, the sending peer, the parsed dict (forwarded messages travel as
it, unknown fields untouched) and the validated model, and returns actions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from signaling import errors
from signaling import messages as m
from signaling.protocol import Action, Close, Json, Peer, Problem, Role, Send, SignalingCore

Handler = Callable[[SignalingCore, Peer, Json, Any], list[Action]]


def _ping(core: SignalingCore, peer: Peer, obj: Json, msg: m.Ping) -> list[Action]:
    return [Send(peer.conn, m.Pong(time=msg.time))]


def _ignore(core: SignalingCore, peer: Peer, obj: Json, msg: Any) -> list[Action]:
    return []


def _list_streamers(core: SignalingCore, peer: Peer, obj: Json, msg: Any) -> list[Action]:
    return [Send(peer.conn, m.StreamerList(ids=core.listed_streamer_ids(peer)))]


def _subscribe(core: SignalingCore, peer: Peer, obj: Json, msg: m.Subscribe) -> list[Action]:
    return core.subscribe(peer, msg.streamerId)


def _unsubscribe(core: SignalingCore, peer: Peer, obj: Json, msg: Any) -> list[Action]:
    return core.unsubscribe(peer)


def _player_forward(core: SignalingCore, peer: Peer, obj: Json, msg: Any) -> list[Action]:
    """Player -> its streamer (or SFU); ``playerId`` is always overwritten with the sender's."""
    if peer.subscribed_to is None:
        actions = core.auto_subscribe(peer)
        if actions is None:
            return [Close(peer.conn, errors.TRY_AGAIN_LATER, "no streamer to subscribe to")]
        assert peer.subscribed_to is not None
        obj["playerId"] = peer.player_id
        actions.append(Send(peer.subscribed_to, obj, peer.conn))
        return actions
    obj["playerId"] = peer.player_id
    return [Send(peer.subscribed_to, obj, peer.conn)]


def _endpoint_id(core: SignalingCore, peer: Peer, obj: Json, msg: m.EndpointId) -> list[Action]:
    return core.rename(peer, msg.id or "UnknownStreamer")


def _streamer_to_player(core: SignalingCore, peer: Peer, obj: Json, msg: Any) -> list[Action]:
    return core.to_player(peer, obj, strip=False)


def _disconnect_player(core: SignalingCore, peer: Peer, obj: Json, msg: m.DisconnectPlayer) -> list[Action]:
    return core.kick(peer, msg.playerId, errors.clip_reason(msg.reason or "disconnected by streamer"))


def _streamer_layer_preference(core: SignalingCore, peer: Peer, obj: Json, msg: Any) -> list[Action]:
    """PS1 blueprint API: a streamer's layer preference goes to the SFU watching it."""
    return [Send(sub.address, obj, peer.conn) for sub in peer.subscribers.values() if sub.sfu]


def _sfu_to_player(core: SignalingCore, peer: Peer, obj: Json, msg: Any) -> list[Action]:
    return core.to_player(peer, obj, strip=True)


def _sfu_upstream(core: SignalingCore, peer: Peer, obj: Json, msg: Any) -> list[Action]:
    """SFU -> the streamer it takes media from; ``playerId`` defaults to the SFU's own."""
    if peer.subscribed_to is None:
        return [Problem(peer.conn, "not_subscribed", f"SFU sent '{obj['type']}' before subscribing")]
    if not obj.get("playerId"):
        obj["playerId"] = peer.player_id
    if obj["type"] == "streamerDataChannels":
        obj["sfuId"] = peer.player_id
    return [Send(peer.subscribed_to, obj, peer.conn)]


def _sfu_ice(core: SignalingCore, peer: Peer, obj: Json, msg: Any) -> list[Action]:
    if (obj.get("playerId") or "") in peer.subscribers:
        return core.to_player(peer, obj, strip=True)
    return _sfu_upstream(core, peer, obj, msg)


def _start_streaming(core: SignalingCore, peer: Peer, obj: Json, msg: Any) -> list[Action]:
    return core.set_streaming(peer, True)


def _stop_streaming(core: SignalingCore, peer: Peer, obj: Json, msg: Any) -> list[Action]:
    return core.set_streaming(peer, False) + core.drop_all_subscribers(peer)


_COMMON: dict[str, Handler] = {"ping": _ping, "pong": _ignore}

HANDLERS: dict[Role, dict[str, Handler]] = {
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
