"""TURN/STUN for peers: ephemeral credentials (coturn ``use-auth-secret``), providers
(static, rest-secret, aws-kvs), per-peer ``peerConnectionOptions``, a credentials
route, and a local coturn for one-box runs and tests."""

from __future__ import annotations

from turn.config import TurnSettings
from turn.credentials import Credential, issue, verify
from turn.peer_options import TurnPeerOptions
from turn.providers import IceServerProvider, IceServers, build_provider

__all__ = [
    "Credential",
    "IceServerProvider",
    "IceServers",
    "TurnPeerOptions",
    "TurnSettings",
    "build_provider",
    "issue",
    "verify",
]
