"""Trickle-ICE glue between aiortc and Pixel Streaming's signalling messages.

aiortc gathers every local candidate inside ``setLocalDescription`` and writes them
into the SDP; UE and browsers instead send an SDP without candidates and trickle each
one as an ``iceCandidate`` message. These helpers convert between the two, and turn
the signalling ``config.peerConnectionOptions`` into an aiortc configuration.
"""

from __future__ import annotations

from typing import Any

import structlog
from aiortc import RTCConfiguration, RTCIceCandidate, RTCIceServer
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from aiortc.sdp import candidate_from_sdp

log = structlog.get_logger(__name__)

_SCHEMES = ("stun:", "turn:", "turns:")


def configuration_from_options(options: dict[str, Any] | None) -> RTCConfiguration:
    """``config.peerConnectionOptions`` → ``RTCConfiguration``, keeping what aiortc can use.

    Like UE, only ``iceServers`` (``urls`` as a string or a list, ``username``,
    ``credential``) is read. An empty list is passed explicitly: given ``None``,
    aiortc falls back to Google's public STUN server, which a closed network cannot
    reach and which slows every gathering down.

    One addition for TURN tests: ``iceTransportPolicy: "relay"`` is honoured, as
    browsers do (UE ignores it), so a relay-only run proves the path through TURN.
    """
    servers: list[RTCIceServer] = []
    for entry in (options or {}).get("iceServers") or []:
        if not isinstance(entry, dict):
            continue
        urls = entry.get("urls", entry.get("url"))
        url_list = [urls] if isinstance(urls, str) else [u for u in urls or [] if isinstance(u, str)]
        usable = [u for u in url_list if u.lower().startswith(_SCHEMES)]
        if len(usable) < len(url_list):
            log.warning("ice_urls_ignored", urls=[u for u in url_list if u not in usable])
        if not usable:
            continue
        servers.append(
            RTCIceServer(
                urls=usable,
                username=entry.get("username"),
                credential=entry.get("credential"),
            )
        )
    relay = (options or {}).get("iceTransportPolicy") == "relay"
    return RTCConfiguration(
        iceServers=servers, iceTransportPolicy=RTCIceTransportPolicy.RELAY if relay else RTCIceTransportPolicy.ALL
    )


def split_candidates(sdp: str) -> tuple[str, list[dict[str, Any]]]:
    """Strip candidates from an SDP; return it and the ``iceCandidate.candidate`` objects.

    Only the first m-section's candidates are returned: the offer bundles every
    section on that transport (UE uses max-bundle; the frontend even forces
    ``sdpMLineIndex`` 0 on whatever it receives), so the others would never be used.
    """
    lines = sdp.split("\r\n") if "\r\n" in sdp else sdp.split("\n")
    kept: list[str] = []
    first_section: list[str] = []
    mline = -1
    for line in lines:
        if line.startswith("m="):
            mline += 1
        if line.startswith("a=candidate:"):
            if mline == 0:
                first_section.append(line[2:])
            continue
        if not line.startswith("a=end-of-candidates"):
            kept.append(line)
    sdp_mid = _first_mid(lines)
    found = [{"candidate": c, "sdpMid": sdp_mid, "sdpMLineIndex": 0} for c in first_section]
    return "\r\n".join(kept), found


def _first_mid(lines: list[str]) -> str:
    in_first = False
    for line in lines:
        if line.startswith("m="):
            if in_first:
                break
            in_first = True
        elif in_first and line.startswith("a=mid:"):
            return line[len("a=mid:") :].strip()
    return "0"


def candidate_from_message(candidate: dict[str, Any] | None) -> RTCIceCandidate | None:
    """An ``iceCandidate.candidate`` object → aiortc candidate; ``None`` for the
    empty end-of-candidates string (which we never forward: UE does not either).

    Raises ``ValueError`` for a malformed candidate line.
    """
    if not isinstance(candidate, dict):
        raise ValueError("iceCandidate without a candidate object")
    line = candidate.get("candidate") or ""
    if not isinstance(line, str) or not line.strip():
        return None
    line = line.strip()
    if line.startswith("a="):
        line = line[2:]
    if line.startswith("candidate:"):
        line = line[len("candidate:") :]
    try:
        parsed = candidate_from_sdp(line)
    except (AssertionError, ValueError, IndexError) as exc:
        raise ValueError(f"malformed candidate: {line!r}") from exc
    mid = candidate.get("sdpMid")
    index = candidate.get("sdpMLineIndex")
    parsed.sdpMid = str(mid) if mid is not None else None
    parsed.sdpMLineIndex = int(index) if isinstance(index, int) else None
    if parsed.sdpMid is None and parsed.sdpMLineIndex is None:
        parsed.sdpMLineIndex = 0
    return parsed
