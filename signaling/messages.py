"""Typed models of every Pixel Streaming signalling message, and their validation.

Field names are exactly the wire names (``playerId``, ``sdpMLineIndex``) so the
upstream ``signalling_messages.proto`` greps straight into this file.

Validation is tolerant the way Epic's clients need: unknown extra fields are allowed
(and forwarded untouched, since forwarded messages travel as the parsed dict, not as
these structs); only the fields the server or the receiving peer relies on are
required. ``validate`` checks a parsed dict against its model and returns the struct.
"""

from __future__ import annotations

from typing import Any

import msgspec

PROTOCOL_VERSION = "1.3.0"


class Message(msgspec.Struct, tag_field="type", omit_defaults=True, kw_only=True):
    """Base of every message; ``type`` is the tag."""


# --- server -> peer --------------------------------------------------------------


class Config(Message, tag="config"):
    # Always an object: the frontend's ForceTURN path writes into it.
    peerConnectionOptions: dict[str, Any]
    protocolVersion: str | None = None


class Identify(Message, tag="identify"):
    pass


class EndpointIdConfirm(Message, tag="endpointIdConfirm"):
    committedId: str


class StreamerIdChanged(Message, tag="streamerIdChanged"):
    newID: str


class LegacyStreamerIdChanged(Message, tag="streamerIDChanged"):
    """The ≤5.4 frontend's spelling; sent to players beside the new one."""

    newID: str


class StreamerList(Message, tag="streamerList"):
    ids: list[str]


class SubscribeFailed(Message, tag="subscribeFailed"):
    message: str


class PlayerConnected(Message, tag="playerConnected"):
    # Required, so never omitted: UE reads both, and a missing flag is not ``true``.
    playerId: str
    dataChannel: bool
    sfu: bool


class PlayerDisconnected(Message, tag="playerDisconnected"):
    playerId: str


class StreamerDisconnected(Message, tag="streamerDisconnected"):
    pass


class PlayerCount(Message, tag="playerCount"):
    count: int


class Error(Message, tag="error"):
    """pixelfleet's own in-band error, sent to players only (browsers ignore unknown types)."""

    code: str
    message: str


# --- either direction ------------------------------------------------------------


class Ping(Message, tag="ping"):
    # Browsers send epoch ms (beyond int32), UE sends seconds: echo verbatim.
    time: int | float | None = None


class Pong(Message, tag="pong"):
    time: int | float | None = None


# --- streamer / SFU -> server ----------------------------------------------------


class EndpointId(Message, tag="endpointId"):
    id: str = ""
    protocolVersion: str | None = None


class DisconnectPlayer(Message, tag="disconnectPlayer"):
    playerId: str
    reason: str = ""


class StartStreaming(Message, tag="startStreaming"):
    pass


class StopStreaming(Message, tag="stopStreaming"):
    pass


# --- player / SFU -> server ------------------------------------------------------


class ListStreamers(Message, tag="listStreamers"):
    pass


class Subscribe(Message, tag="subscribe"):
    streamerId: str


class Unsubscribe(Message, tag="unsubscribe"):
    pass


class Stats(Message, tag="stats"):
    data: str = ""


# --- routed (forwarded as parsed dicts; these models only validate) ---------------


class IceCandidateInit(msgspec.Struct, omit_defaults=True, kw_only=True):
    candidate: str
    sdpMid: str | None = None
    sdpMLineIndex: int | None = None
    usernameFragment: str | None = None


class Offer(Message, tag="offer"):
    sdp: str
    playerId: str | None = None
    sfu: bool | None = None
    multiplex: bool | None = None
    scalabilityMode: str | None = None


class Answer(Message, tag="answer"):
    sdp: str
    playerId: str | None = None
    minBitrateBps: int | None = None
    maxBitrateBps: int | None = None
    minBitrate: int | None = None
    maxBitrate: int | None = None


class IceCandidate(Message, tag="iceCandidate"):
    candidate: IceCandidateInit
    playerId: str | None = None


class LayerPreference(Message, tag="layerPreference"):
    spatialLayer: int = 0
    temporalLayer: int = 0
    playerId: str | None = None


class DataChannelRequest(Message, tag="dataChannelRequest"):
    playerId: str | None = None


class PeerDataChannels(Message, tag="peerDataChannels"):
    sendStreamId: int
    recvStreamId: int
    playerId: str | None = None


class PeerDataChannelsReady(Message, tag="peerDataChannelsReady"):
    playerId: str | None = None


class StreamerDataChannels(Message, tag="streamerDataChannels"):
    sendStreamId: int
    recvStreamId: int
    playerId: str | None = None
    sfuId: str | None = None


MODELS: dict[str, type[Message]] = {
    cls.__struct_config__.tag: cls  # type: ignore[misc]
    for cls in (
        Config,
        Identify,
        EndpointIdConfirm,
        StreamerIdChanged,
        LegacyStreamerIdChanged,
        StreamerList,
        SubscribeFailed,
        PlayerConnected,
        PlayerDisconnected,
        StreamerDisconnected,
        PlayerCount,
        Error,
        Ping,
        Pong,
        EndpointId,
        DisconnectPlayer,
        StartStreaming,
        StopStreaming,
        ListStreamers,
        Subscribe,
        Unsubscribe,
        Stats,
        Offer,
        Answer,
        IceCandidate,
        LayerPreference,
        DataChannelRequest,
        PeerDataChannels,
        PeerDataChannelsReady,
        StreamerDataChannels,
    )
}


class InvalidFields(ValueError):
    """A known message type whose fields are missing or of the wrong type."""


def normalise_player_id(obj: dict[str, Any]) -> None:
    """UE PS1 can send ``playerId`` as a JSON number; every lookup here is by string."""
    pid = obj.get("playerId")
    if pid is not None and type(pid) is not str:
        if type(pid) is int:
            obj["playerId"] = str(pid)
        else:
            raise InvalidFields(f"playerId must be a string, got {type(pid).__name__}")


def validate(obj: dict[str, Any], model: type[Message]) -> Message:
    """Check a parsed message against its model; extra fields are tolerated."""
    try:
        return msgspec.convert(obj, model)
    except msgspec.ValidationError as exc:
        raise InvalidFields(f"{obj.get('type')}: {exc}") from None


_ENCODER = msgspec.json.Encoder()


def encode(message: Message) -> bytes:
    return _ENCODER.encode(message)
