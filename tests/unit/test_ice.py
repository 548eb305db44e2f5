"""Trickle-ICE glue: SDP candidate stripping, candidate parsing, iceServers conversion."""

from __future__ import annotations

import pytest

from streamer.ice import candidate_from_message, configuration_from_options, split_candidates

OFFER = "\r\n".join([
    "v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0", "a=group:BUNDLE 0 1",
    "m=video 40000 UDP/TLS/RTP/SAVPF 97", "c=IN IP4 192.0.2.2", "a=mid:0",
    "a=candidate:abc 1 udp 2130706431 192.0.2.2 40000 typ host",
    "a=candidate:def 1 udp 1694498815 203.0.113.9 40001 typ srflx raddr 192.0.2.2 rport 40000",
    "a=end-of-candidates", "a=ice-ufrag:u", "a=ice-pwd:p",
    "m=application 40002 UDP/DTLS/SCTP webrtc-datachannel", "a=mid:1",
    "a=candidate:ghi 1 udp 2130706431 192.0.2.2 40002 typ host",
    "a=end-of-candidates", "",
])  # fmt: skip


def test_split_candidates_strips_and_returns_the_bundle_transport() -> None:
    sdp, candidates = split_candidates(OFFER)
    assert "a=candidate" not in sdp and "end-of-candidates" not in sdp
    assert "a=ice-ufrag:u" in sdp and sdp.endswith("\r\n") and "\r\n\r\n" not in sdp
    assert candidates == [
        {"candidate": "candidate:abc 1 udp 2130706431 192.0.2.2 40000 typ host", "sdpMid": "0", "sdpMLineIndex": 0},
        {
            "candidate": "candidate:def 1 udp 1694498815 203.0.113.9 40001 typ srflx raddr 192.0.2.2 rport 40000",
            "sdpMid": "0",
            "sdpMLineIndex": 0,
        },
    ]


def test_candidate_from_browser_message() -> None:
    candidate = candidate_from_message(
        {
            "candidate": "candidate:2285834943 1 udp 2122260223 127.0.0.1 34557 typ host "
            "generation 0 ufrag Z9hb network-id 1 network-cost 50",
            "sdpMid": "0",
            "sdpMLineIndex": 0,
            "usernameFragment": "Z9hb",
        }
    )
    assert candidate is not None
    assert (candidate.ip, candidate.port, candidate.type) == ("127.0.0.1", 34557, "host")
    assert (candidate.sdpMid, candidate.sdpMLineIndex) == ("0", 0)


def test_candidate_related_address_and_defaults() -> None:
    candidate = candidate_from_message(
        {"candidate": "candidate:def 1 udp 1 203.0.113.9 5 typ srflx raddr 192.0.2.2 rport 40000"}
    )
    assert candidate is not None
    assert (candidate.relatedAddress, candidate.relatedPort) == ("192.0.2.2", 40000)
    assert candidate.sdpMLineIndex == 0  # neither mid nor index given: bundle's first line


@pytest.mark.parametrize("raw", [{"candidate": ""}, {"candidate": "  "}, {"candidate": None}])
def test_end_of_candidates_is_none(raw: dict[str, object]) -> None:
    assert candidate_from_message(raw) is None


@pytest.mark.parametrize("raw", [{"candidate": "candidate:x 1 udp"}, None, "candidate:x"])
def test_malformed_candidate_is_a_value_error(raw: object) -> None:
    with pytest.raises(ValueError):
        candidate_from_message(raw)  # type: ignore[arg-type]


def test_ice_servers_from_peer_connection_options() -> None:
    config = configuration_from_options(
        {
            "iceServers": [
                {"urls": "stun:stun.example.org:3478"},
                {
                    "urls": ["turn:203.0.113.10:3478?transport=udp", "https://not-ice.example"],
                    "username": "1795809272:Player0",
                    "credential": "c2VjcmV0",
                },
                {"urls": []},
                "garbage",
            ],
            "iceTransportPolicy": "relay",
        }
    )
    assert config.iceServers is not None
    assert [(s.urls, s.username, s.credential) for s in config.iceServers] == [
        (["stun:stun.example.org:3478"], None, None),
        (["turn:203.0.113.10:3478?transport=udp"], "1795809272:Player0", "c2VjcmV0"),
    ]


@pytest.mark.parametrize("options", [None, {}, {"iceServers": None}])
def test_no_ice_servers_means_none_not_aiortc_default(options: dict[str, object] | None) -> None:
    assert configuration_from_options(options).iceServers == []
