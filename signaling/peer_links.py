"""What cores on different nodes tell each other about the links between their peers.

A subscription joins a player (or SFU) on one node to a streamer that may live on
another. Each side keeps its half: the player knows the streamer's address, the
streamer knows its subscribers (so the per-streamer player limit and the routing of
streamer -> player messages are decided where the streamer is). A change to a link is a
``Link`` message to the node holding the other half; when both halves live on the same
node the core handles it at once, so one node behaves exactly as before.

Addresses are ``"<node>/<n>"``: cluster-unique, and they name the node that holds the
connection, so routing needs no lookup.
"""

from __future__ import annotations

from typing import NamedTuple, NewType

import msgspec

Address = NewType("Address", str)


def node_of(address: str) -> str:
    return address.partition("/")[0]


class Holder(NamedTuple):
    """The credential a listed streamer (or SFU) connected with: its ``jti`` and tenant.

    Every node's directory view carries it, so ``/api/streamers`` and an SFU's listing
    answer the same for a streamer on any node. None where the holder presented no
    credential (open mode), and where a node of an older release listed it: unknown,
    never trusted as any particular credential."""

    credential_id: str
    tenant: str


class DirectoryEntry(NamedTuple):
    """One streamer id in the cluster directory, as every node sees it."""

    streamer_id: str
    address: Address
    streaming: bool
    holder: Holder | None = None


class Link(msgspec.Struct, tag_field="op", kw_only=True):
    """Base: ``to`` is the address of the peer whose half of the link changes."""

    to: str


class Subscribe(Link, tag="sub"):
    """Player (or SFU) ``player`` wants the streamer at ``to``, known to it as ``streamer_id``."""

    player: str
    player_id: str
    sfu: bool
    streamer_id: str
    tenant: str | None = None  # an SFU's credential tenant: only that tenant's streamers accept it


class SubscribeRefused(Link, tag="refused"):
    """To the player: the streamer at ``streamer`` turned the subscription down."""

    streamer: str
    message: str


class Unsubscribe(Link, tag="unsub"):
    """To the streamer: ``player_id`` left it."""

    player_id: str


class StreamerGone(Link, tag="gone"):
    """To a subscriber: the streamer at ``streamer`` left, or stopped streaming."""

    streamer: str


class Kick(Link, tag="kick"):
    """To a player: its streamer sent ``disconnectPlayer`` for it."""

    streamer: str
    code: int
    reason: str


AnyLink = Subscribe | SubscribeRefused | Unsubscribe | StreamerGone | Kick

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AnyLink)


def encode_link(link: Link) -> bytes:
    return _encoder.encode(link)


def decode_link(raw: bytes) -> AnyLink:
    """Raises ``msgspec.DecodeError`` on anything that is not a link message."""
    return _decoder.decode(raw)
