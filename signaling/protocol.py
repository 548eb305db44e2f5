"""The signalling protocol as a sans-I/O state machine.

Theory of operation: one ``SignalingCore`` holds the connections of a node (streamers,
players, SFUs), its half of every link between peers, and a view of the cluster's
streamer directory. The adapter feeds it events — ``connect``, ``receive`` (a parsed
JSON value), ``reject`` (a frame that could not be parsed), ``disconnect``, and from
the broker ``link`` (another node changed a link), ``claimed`` (the directory answered
a streamer-id claim), ``listed``/``unlisted`` (the directory changed) and ``node_lost``
— and gets back actions to carry out: ``Send`` a message to an address (on any node),
``Close`` a connection, ``Relay`` a link message to another node, ``Claim`` an id,
``Announce``/``Withdraw`` a directory entry, or log a ``Problem``. The core never
awaits, reads a clock or touches a socket, so each event is atomic and the whole
protocol is tested with plain calls. Handlers, one per (role, message type), are in
``handlers``; links between peers are explained in ``peer_links``.

On one node (``cluster=False``) ids are claimed at once and nothing is announced:
the core behaves as a single server. In a cluster a streamer's id is committed only
when the directory (Redis) confirms it, so ids are unique across the cluster.

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

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from signaling import errors
from signaling import messages as m
from signaling import peer_links as links
from signaling.core_types import (
    Action,
    Announce,
    Claim,
    Close,
    Credential,
    Json,
    Listing,
    Peer,
    PeerOptions,
    Phase,
    Problem,
    Relay,
    Role,
    Send,
    Subscriber,
    Withdraw,
    streamer_id_problem,
)
from signaling.peer_links import Address, DirectoryEntry, Holder, node_of

__all__ = [  # the core's vocabulary lives in core_types; importers keep using this module
    "Action",
    "Address",
    "Announce",
    "Claim",
    "Close",
    "Credential",
    "Json",
    "Listing",
    "Peer",
    "PeerOptions",
    "Phase",
    "Problem",
    "Relay",
    "Role",
    "Send",
    "SignalingCore",
    "Subscriber",
    "Withdraw",
    "streamer_id_problem",
]

UNKNOWN_STREAMER = "UnknownStreamer"


def _no_options(role: Role, peer_id: str, *, not_after: int | None = None) -> Json:
    return {}


class SignalingCore:
    """All signalling state of one node. Not thread-safe; every method is atomic."""

    def __init__(
        self,
        *,
        node: str = "local",
        cluster: bool = False,
        peer_options: PeerOptions = _no_options,
        max_players_per_streamer: int = 0,
        max_protocol_errors: int = 20,
        player_id_prefix: str = "Player",
    ) -> None:
        if "/" in node:
            raise ValueError("a node id cannot contain '/'")
        self.node = node
        self.cluster = cluster
        self._peer_options = peer_options
        self.max_players = max_players_per_streamer
        self.max_errors = max_protocol_errors
        self._player_prefix = player_id_prefix
        self._peers: dict[Address, Peer] = {}
        self._listings: dict[str, Listing] = {}  # streamer id -> where; registration order = listing order
        self._players: dict[str, Address] = {}  # this node's players by id
        self._wanted: dict[Address, str] = {}  # ids asked for in a claim still in flight
        from signaling.handlers import HANDLERS  # here, not at the top: handlers imports this module

        self._next_conn = 0
        self._next_player = 0
        # Plain-int counters for /metrics (signaling.metrics reads them at scrape time):
        # accepted messages by role and type (every handled type from 0, so counting one is a
        # plain ``+= 1``), refused ones by role and problem kind.
        self.accepted: dict[Role, dict[str, int]] = {role: dict.fromkeys(HANDLERS[role], 0) for role in Role}
        self.refused: dict[tuple[Role, str], int] = {}
        # What each peer reaches by its role on every frame (``Peer.handlers``, ``Peer.counts``).
        self._by_role = {role: (HANDLERS[role], self.accepted[role]) for role in Role}

    # --- events from this node's sockets ----------------------------------------------

    def connect(
        self,
        role: Role,
        *,
        allowed_streamer: str | None = None,
        options_key: str | None = None,
        credential: Credential | None = None,
    ) -> tuple[Address, list[Action]]:
        """A socket opened. Returns its address and the greeting to send.

        ``allowed_streamer`` scopes a player to the one streamer its session token names;
        ``options_key`` (the session id) replaces the peer id as the key for its
        ``peerConnectionOptions`` (e.g. the TURN username's user part); ``credential``
        scopes a streamer or SFU to the one id (and tenant) its credential names.
        """
        conn = Address(f"{self.node}/{self._next_conn}")
        self._next_conn += 1
        peer = Peer(conn, role, allowed_streamer=allowed_streamer, credential=credential)
        peer.handlers, peer.counts = self._by_role[role]
        self._peers[conn] = peer
        actions: list[Action] = []
        if role is not Role.STREAMER:
            peer.player_id = f"{self._player_prefix}{self._next_player}"
            self._next_player += 1
            self._players[peer.player_id] = conn
        if role is Role.PLAYER:
            assert peer.player_id is not None
            actions.append(Send(conn, self._config(role, options_key or peer.player_id)))
            return conn, actions
        actions.append(Send(conn, m.Identify()))
        if self.cluster:
            peer.phase = Phase.CLAIMING
            actions.append(Send(conn, self._config(role, UNKNOWN_STREAMER, credential)))
            actions.append(Claim(conn, UNKNOWN_STREAMER, holder=peer.holder))
        else:
            self._commit_id(peer, self.unique_streamer_id(UNKNOWN_STREAMER, conn), [])
            assert peer.streamer_id is not None
            actions.append(Send(conn, self._config(role, peer.streamer_id, credential)))
        return conn, actions

    def receive(self, conn: Address, obj: Any) -> list[Action]:
        """A parsed JSON value arrived on ``conn``."""
        peer = self._peers[conn]
        if type(obj) is not dict:
            return self.invalid(peer, "invalid_message", "a message must be a JSON object")
        kind = obj.get("type")
        handler = peer.handlers.get(kind) if type(kind) is str else None
        if handler is None:
            return self._unhandled(peer, kind)
        assert isinstance(kind, str)
        try:
            m.normalise_player_id(obj)
            msg = m.validate(obj, m.MODELS[kind])
        except m.InvalidFields as exc:
            return self.invalid(peer, "invalid_message", str(exc))
        peer.counts[kind] += 1
        return handler(self, peer, obj, msg)

    def reject(self, conn: Address, detail: str) -> list[Action]:
        """A frame arrived that is not JSON at all."""
        return self.invalid(self._peers[conn], "invalid_json", detail)

    def disconnect(self, conn: Address) -> list[Action]:
        """The socket closed, for whatever reason. Unknown addresses are ignored."""
        peer = self._peers.pop(conn, None)
        if peer is None:
            return []
        actions: list[Action] = []
        if peer.player_id is not None:
            self._players.pop(peer.player_id, None)
            actions += self.unsubscribe(peer)
        if peer.streamer_id is not None:
            self._unlist(peer, actions)
            for pid, sub in list(peer.subscribers.items()):
                actions += self._drop_subscriber(peer, pid, sub)
        return actions

    # --- events from the broker (other nodes, the directory) ---------------------------

    def claimed(self, conn: Address, committed: str | None) -> list[Action]:
        """The directory's answer to ``Claim``; ``None`` when it could not be asked
        (Redis down): the id is then chosen by this node's view and announced later."""
        peer = self._peers.get(conn)
        wanted = self._wanted.pop(conn, UNKNOWN_STREAMER)
        if peer is None:  # left while the claim was in flight: give the id back
            return [] if committed is None else [Withdraw(committed, conn)]
        if committed is None:
            committed = self._local_claim(peer, wanted)
        if committed == "":  # an exact claim (a credential's id) found the id held by another
            return self._id_taken(peer, wanted)
        first = peer.phase is Phase.CLAIMING
        peer.phase = Phase.READY
        actions: list[Action] = []
        if committed != peer.streamer_id:
            self._commit_id(peer, committed, actions)
        if not first:
            self._confirm_id(peer, actions)
        return actions

    def link(self, link: links.AnyLink) -> list[Action]:
        """A link message for a peer of this node (from another node, or from this one)."""
        peer = self._peers.get(Address(link.to))
        if isinstance(link, links.Subscribe):
            return self._on_subscribe(peer, link)
        if peer is None:
            return []  # gone meanwhile: its own disconnect told the other side
        if isinstance(link, links.Unsubscribe):
            sub = peer.subscribers.pop(link.player_id, None)
            return [] if sub is None else [Send(peer.conn, m.PlayerDisconnected(playerId=link.player_id))]
        if peer.subscribed_to != link.streamer:
            return []  # an old link: the peer has moved on
        if type(link) is links.SubscribeRefused:
            peer.subscribed_to = peer.subscribed_name = None
            refused: list[Action] = [Problem(peer.conn, "subscribe_failed", link.message)]
            if peer.role is not Role.SFU:  # Epic never sends subscribeFailed to an SFU
                refused.append(Send(peer.conn, m.SubscribeFailed(message=link.message)))
            return refused
        if type(link) is links.Kick:
            peer.subscribed_to = peer.subscribed_name = None
            return [Close(peer.conn, link.code, link.reason)]
        return self._streamer_gone(peer)

    def listed(self, streamer_id: str, conn: Address, streaming: bool, holder: Holder | None = None) -> None:
        """The directory says ``streamer_id`` lives at ``conn`` (another node's streamer),
        held with ``holder``'s credential (None: none, or unknown)."""
        if node_of(conn) != self.node:
            self._listings[streamer_id] = Listing.of(conn, streaming, holder)

    def unlisted(self, streamer_id: str, conn: Address) -> None:
        listing = self._listings.get(streamer_id)
        if listing is not None and listing.address == conn and node_of(conn) != self.node:
            del self._listings[streamer_id]

    def replace_directory(self, listings: Iterable[DirectoryEntry]) -> None:
        """A full snapshot of the directory: other nodes' entries are replaced by it."""
        for sid, listing in list(self._listings.items()):
            if node_of(listing.address) != self.node:
                del self._listings[sid]
        for sid, conn, streaming, holder in listings:
            if node_of(conn) != self.node and sid not in self._listings:
                self._listings[sid] = Listing.of(conn, streaming, holder)

    def node_lost(self, node: str) -> list[Action]:
        """``node`` died (or this node lost touch with the cluster, for every other node):
        its streamers leave the directory, and every link to its peers is cut."""
        return self._cut(lambda other: other == node)

    def cut_off(self) -> list[Action]:
        """This node was declared dead by the others: every cross-node link is gone."""
        return self._cut(lambda other: other != self.node)

    def local_listings(self) -> Iterator[DirectoryEntry]:
        """This node's streamers, to announce again after the directory was lost."""
        for sid, listing in self._listings.items():
            if node_of(listing.address) == self.node:
                yield DirectoryEntry(sid, listing.address, listing.streaming, listing.holder)

    # --- queries (REST API, metrics) ----------------------------------------------------

    def peers(self) -> Iterator[Peer]:
        return iter(self._peers.values())

    def peer(self, conn: Address) -> Peer:
        return self._peers[conn]

    def streamer_by_id(self, streamer_id: str) -> Peer | None:
        listing = self._listings.get(streamer_id)
        return None if listing is None else self._peers.get(listing.address)

    def player_by_id(self, player_id: str) -> Peer | None:
        conn = self._players.get(player_id)
        return None if conn is None else self._peers[conn]

    def accepts(self, to: Address, origin: Address) -> bool:
        """Whether a routed message from another node may reach ``to``: only across a
        link (a player that was refused, or has left, reaches nobody)."""
        peer = self._peers.get(to)
        if peer is None:
            return False
        return peer.subscribed_to == origin or any(sub.address == origin for sub in peer.subscribers.values())

    def listings(self) -> Iterable[tuple[str, Listing]]:
        return self._listings.items()

    def listing(self, streamer_id: str) -> Listing | None:
        return self._listings.get(streamer_id)

    def listed_streamer_ids(self, for_peer: Peer) -> list[str]:
        """What ``listStreamers`` answers: a session-token player sees its one streamer; an
        SFU with a credential sees its tenant's streamers, on every node (the directory
        carries each holder's tenant; one listed by an older node has none, so is not shown)."""
        if for_peer.role is Role.SFU:  # an SFU sees every registered streamer, itself included
            scope = for_peer.credential
            if scope is None:
                return list(self._listings)
            return [sid for sid, listing in self._listings.items() if listing.tenant == scope.tenant]
        allowed = for_peer.allowed_streamer
        return [
            sid for sid, listing in self._listings.items() if listing.streaming and (allowed is None or sid == allowed)
        ]

    # --- helpers for the handlers -----------------------------------------------------

    def unique_streamer_id(self, wanted: str, conn: Address) -> str:
        """Epic's rule: ``Cam`` taken -> ``Cam1``; ``Cam`` and ``Cam1`` taken -> ``Cam2``."""
        pattern = re.compile(re.escape(wanted) + r"(\d*)")
        suffixes = [
            int(match.group(1) or 0)
            for sid, listing in self._listings.items()
            if listing.address != conn and (match := pattern.fullmatch(sid))
        ]
        return wanted if not suffixes else f"{wanted}{max(suffixes) + 1}"

    def rename(self, peer: Peer, wanted: str) -> list[Action]:
        """``endpointId``: keep the id it holds, or claim the wanted one. An absurd id is
        refused in any mode; with a credential, only the credential's id, and only while
        no other connection holds it (never Epic's rename: the id is reserved for its slot)."""
        problem = streamer_id_problem(wanted)
        if problem is not None:
            return [Problem(peer.conn, "invalid_streamer_id", problem), Close(peer.conn, errors.INVALID_ID, problem)]
        scope = peer.credential
        if scope is not None and wanted != scope.streamer_id:
            reason = "endpointId does not match the streamer credential"
            return [
                Problem(peer.conn, "streamer_id_not_allowed", reason),
                Close(peer.conn, errors.ID_NOT_ALLOWED, reason),
            ]
        if wanted == peer.streamer_id:
            actions: list[Action] = []
            self._confirm_id(peer, actions)
            return actions
        if self.cluster:
            self._wanted[peer.conn] = wanted
            return [Claim(peer.conn, wanted, exact=scope is not None, holder=peer.holder)]
        self._wanted[peer.conn] = wanted
        return self.claimed(peer.conn, self._local_claim(peer, wanted))

    def set_streaming(self, peer: Peer, streaming: bool) -> list[Action]:
        peer.streaming = streaming
        listing = self._listings.get(peer.streamer_id or "")
        actions: list[Action] = []
        if listing is not None and listing.address == peer.conn and listing.streaming != streaming:
            listing.streaming = streaming
            if self.cluster:
                actions.append(Announce(peer.streamer_id or "", peer.conn, streaming, peer.holder))
        return actions

    def send_link(self, link: links.AnyLink) -> list[Action]:
        """Deliver a link message: at once on this node, through the broker otherwise."""
        if node_of(link.to) == self.node:
            return self.link(link)
        return [Relay(link)]

    def invalid(self, peer: Peer, kind: str, detail: str) -> list[Action]:
        actions: list[Action] = [Problem(peer.conn, kind, detail)]
        if peer.role is Role.PLAYER:
            actions.append(Send(peer.conn, m.Error(code=kind, message=detail)))
        self._count_refused(peer.role, kind)
        peer.errors += 1
        if peer.errors > self.max_errors:
            actions.append(Close(peer.conn, errors.POLICY_VIOLATION, "too many protocol errors"))
        return actions

    def subscribe(self, peer: Peer, streamer_id: str) -> list[Action]:
        listing = self._listings.get(streamer_id)
        failure: str | None = None
        if peer.allowed_streamer is not None and streamer_id != peer.allowed_streamer:
            failure = f"Streamer {streamer_id} is not available to this session."
        elif (
            listing is None
            or listing.address == peer.conn
            or (
                peer.credential is not None
                and node_of(listing.address) == self.node
                and listing.tenant != peer.credential.tenant
            )
        ):
            failure = f"Streamer {streamer_id} does not exist."
        else:
            target = self._peers.get(listing.address)  # None: on another node, which decides
            if target is not None and self._full(target, peer):
                failure = f"Streamer {streamer_id} is full. Max players = {self.max_players}."
        if failure is not None:
            if peer.role is Role.SFU:  # Epic never sends subscribeFailed to an SFU
                return [Problem(peer.conn, "subscribe_failed", failure)]
            return [
                Problem(peer.conn, "subscribe_failed", failure),
                Send(peer.conn, m.SubscribeFailed(message=failure)),
            ]
        assert listing is not None and peer.player_id is not None
        actions = self.unsubscribe(peer)
        peer.subscribed_to, peer.subscribed_name = listing.address, streamer_id
        sub = links.Subscribe(
            to=listing.address,
            player=peer.conn,
            player_id=peer.player_id,
            sfu=peer.role is Role.SFU,
            streamer_id=streamer_id,
            tenant=None if peer.credential is None else peer.credential.tenant,
        )
        return actions + self.send_link(sub)

    def unsubscribe(self, peer: Peer) -> list[Action]:
        if peer.subscribed_to is None:
            return []
        target = peer.subscribed_to
        peer.subscribed_to = peer.subscribed_name = None
        assert peer.player_id is not None
        return self.send_link(links.Unsubscribe(to=target, player_id=peer.player_id))

    def auto_subscribe(self, peer: Peer) -> list[Action] | None:
        """Legacy path: a player sent a routed message before subscribing.

        Epic subscribes it to the first registered streamer (identified or not).
        Returns None when that is impossible and the player has been closed.
        """
        wanted = peer.allowed_streamer or next(iter(self._listings), None)
        if wanted is None:
            return None
        actions = self.subscribe(peer, wanted)
        return actions if peer.subscribed_to is not None else None

    def to_player(self, source: Peer, obj: Json, *, strip: bool) -> list[Action]:
        """Route a message a streamer or SFU addressed to one of its players."""
        pid = obj.get("playerId")
        if not pid:
            return self.invalid(source, "invalid_message", f"'{obj['type']}' needs a playerId")
        sub = source.subscribers.get(pid)
        if sub is None:
            # Not counted as an error: the player may have left a moment ago.
            return [Problem(source.conn, "unknown_player", f"no player {pid[:64]} subscribed to this streamer")]
        if strip:
            del obj["playerId"]
        return [Send(sub.address, obj, source.conn)]

    def kick(self, streamer: Peer, player_id: str, reason: str) -> list[Action]:
        sub = streamer.subscribers.pop(player_id, None)
        if sub is None:
            return [Problem(streamer.conn, "unknown_player", f"no player {player_id[:64]} subscribed to this streamer")]
        actions: list[Action] = [Send(streamer.conn, m.PlayerDisconnected(playerId=player_id))]
        kick = links.Kick(to=sub.address, streamer=streamer.conn, code=errors.INTERNAL_ERROR, reason=reason)
        return actions + self.send_link(kick)

    def drop_all_subscribers(self, streamer: Peer) -> list[Action]:
        """A streamer or SFU that stays connected loses its players: each is closed, and it
        gets ``playerDisconnected`` for each, as from Epic's server (the player unsubscribes)."""
        actions: list[Action] = []
        for pid, sub in list(streamer.subscribers.items()):
            actions.append(Send(streamer.conn, m.PlayerDisconnected(playerId=pid)))
            actions += self._drop_subscriber(streamer, pid, sub)
        return actions

    # --- internals ----------------------------------------------------------------------

    def _config(self, role: Role, peer_id: str, credential: Credential | None = None) -> m.Config:
        """A streamer with a credential gets TURN credentials that end with it (``not_after``)."""
        if credential is None:
            options = self._peer_options(role, peer_id)
        else:
            options = self._peer_options(role, peer_id, not_after=credential.expires_at)
        return m.Config(peerConnectionOptions=options, protocolVersion=m.PROTOCOL_VERSION)

    def _local_claim(self, peer: Peer, wanted: str) -> str:
        """This node's answer to a claim: Epic's rename, or for a credential the exact id
        or "" (held by another connection)."""
        if peer.credential is None:
            return self.unique_streamer_id(wanted, peer.conn)
        listing = self._listings.get(wanted)
        return wanted if listing is None or listing.address == peer.conn else ""

    def _id_taken(self, peer: Peer, wanted: str) -> list[Action]:
        reason = f"streamer id {wanted} is held by another connection"
        return [Problem(peer.conn, "streamer_id_taken", reason), Close(peer.conn, errors.ID_TAKEN, reason)]

    def _full(self, streamer: Peer, peer: Peer) -> bool:
        return (
            bool(self.max_players)
            and len(streamer.subscribers) >= self.max_players
            and (peer.player_id not in streamer.subscribers)
        )

    def _commit_id(self, peer: Peer, new: str, actions: list[Action]) -> None:
        old = peer.streamer_id
        if old is not None:
            self._unlist(peer, actions, announce=False)
        peer.streamer_id = new
        scope = peer.credential
        tenant, jti = (None, None) if scope is None else (scope.tenant, scope.credential_id)
        self._listings[new] = Listing(peer.conn, peer.streaming, tenant, jti)  # the claim announced it

    def _unlist(self, peer: Peer, actions: list[Action], *, announce: bool = True) -> None:
        sid = peer.streamer_id
        listing = self._listings.get(sid or "")
        if sid is not None and listing is not None and listing.address == peer.conn:
            del self._listings[sid]
            if self.cluster and announce:
                actions.append(Withdraw(sid, peer.conn))

    def _confirm_id(self, peer: Peer, actions: list[Action]) -> None:
        new = peer.streamer_id
        assert new is not None
        actions += self.set_streaming(peer, True)
        actions.append(Send(peer.conn, m.EndpointIdConfirm(committedId=new)))
        for sub in peer.subscribers.values():
            actions.append(Send(sub.address, m.StreamerIdChanged(newID=new)))
            if not sub.sfu:
                actions.append(Send(sub.address, m.LegacyStreamerIdChanged(newID=new)))

    def _on_subscribe(self, streamer: Peer | None, link: links.Subscribe) -> list[Action]:
        """The streamer's side of a subscription: its node holds the limit."""
        failure: str | None = None
        if (
            streamer is None
            or streamer.streamer_id is None
            or (link.tenant is not None and (streamer.credential is None or streamer.credential.tenant != link.tenant))
        ):  # an SFU with a credential reaches its own tenant's streamers only, and learns nothing of others
            failure = f"Streamer {link.streamer_id} does not exist."
        elif (
            self.max_players
            and link.player_id not in streamer.subscribers
            and (len(streamer.subscribers) >= self.max_players)
        ):
            failure = f"Streamer {link.streamer_id} is full. Max players = {self.max_players}."
        if failure is not None:
            return self.send_link(links.SubscribeRefused(to=link.player, streamer=link.to, message=failure))
        assert streamer is not None
        streamer.subscribers[link.player_id] = Subscriber(Address(link.player), link.sfu)
        return [Send(streamer.conn, m.PlayerConnected(playerId=link.player_id, dataChannel=True, sfu=link.sfu))]

    def _drop_subscriber(self, streamer: Peer, player_id: str, sub: Subscriber) -> list[Action]:
        """The streamer (or SFU) that ``player_id`` watched is gone or stopped streaming."""
        streamer.subscribers.pop(player_id, None)
        return self.send_link(links.StreamerGone(to=sub.address, streamer=streamer.conn))

    def _streamer_gone(self, peer: Peer) -> list[Action]:
        """A player is closed; an SFU is told, stays connected, and closes its own players
        (they watched the streamer through it), as Epic's server does."""
        peer.subscribed_to = peer.subscribed_name = None
        if peer.role is not Role.SFU:
            return [Close(peer.conn, errors.STREAMER_GONE, "streamer disconnected")]
        return [Send(peer.conn, m.StreamerDisconnected()), *self.drop_all_subscribers(peer)]

    def _cut(self, lost: Callable[[str], bool]) -> list[Action]:
        for sid, listing in list(self._listings.items()):
            if lost(node_of(listing.address)):
                del self._listings[sid]
        actions: list[Action] = []
        for peer in list(self._peers.values()):
            for pid, sub in list(peer.subscribers.items()):
                if lost(node_of(sub.address)):
                    del peer.subscribers[pid]
                    actions.append(Send(peer.conn, m.PlayerDisconnected(playerId=pid)))
            if peer.subscribed_to is not None and lost(node_of(peer.subscribed_to)):
                actions += self._streamer_gone(peer)
        return actions

    def _unhandled(self, peer: Peer, kind: object) -> list[Action]:
        if not isinstance(kind, str):
            return self.invalid(peer, "invalid_message", "a message needs a string 'type'")
        if kind in m.MODELS:
            return self.invalid(peer, "not_allowed", f"'{kind}' may not be sent by a {peer.role.value}")
        detail = f"unknown message type '{kind[:64]}'"
        self._count_refused(peer.role, "unknown_type")
        actions: list[Action] = [Problem(peer.conn, "unknown_type", detail)]
        if peer.role is Role.PLAYER:
            actions.append(Send(peer.conn, m.Error(code="unknown_type", message=detail)))
        return actions

    def _count_refused(self, role: Role, kind: str) -> None:
        key = (role, kind)  # kind: one of the few problem kinds in this module, never peer input
        self.refused[key] = self.refused.get(key, 0) + 1
