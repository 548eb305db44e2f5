"""Relay-only in a real Chromium: the browser may use nothing but TURN through a local
coturn (Debian package), with credentials minted by our ``rest-secret`` provider, and
still decodes the synthetic streamer's video.

Reuses the e2e fixtures (``start_stack``, ``start_streamer``, ``open_page``); the
minted ``iceServers`` go in as the server's ``peer_connection_options``. Relay-only is
the client's own switch: ``?ForceTURN=1`` on our page, Epic's ``ForceTURN`` flag on
its frontend. An init script records every ``RTCPeerConnection`` so the test can read
the selected candidate pair from ``getStats()``: the browser's side must be ``relay``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from turn.coturn import Coturn
from turn.credentials import verify
from turn.providers import RestSecretProvider

pytestmark = pytest.mark.e2e

WAIT_S = 60.0  # a hang guard, not a performance limit

RECORD_PCS = """(() => {
  const Native = window.RTCPeerConnection;
  window.__pcs = [];
  function Recorded(config, ...rest) {
    const pc = new Native(config, ...rest);
    window.__pcs.push({pc, policy: config && config.iceTransportPolicy});
    return pc;
  }
  Recorded.prototype = Native.prototype;
  Object.setPrototypeOf(Recorded, Native);
  window.RTCPeerConnection = Recorded;
})();"""

ROUTE_JS = """async () => {
  const last = window.__pcs[window.__pcs.length - 1];
  if (!last) return null;
  const stats = [...(await last.pc.getStats()).values()];
  const byId = Object.fromEntries(stats.map(s => [s.id, s]));
  const transport = stats.find(s => s.type === 'transport' && s.selectedCandidatePairId);
  const pair = transport ? byId[transport.selectedCandidatePairId]
                         : stats.find(s => s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded');
  const video = stats.find(s => s.type === 'inbound-rtp' && s.kind === 'video');
  return {
    policy: last.policy || null,
    localTypes: [...new Set(stats.filter(s => s.type === 'local-candidate').map(s => s.candidateType))],
    selectedLocal: pair ? (byId[pair.localCandidateId] || {}).candidateType : null,
    framesDecoded: video ? video.framesDecoded : 0,
  };
}"""


async def route(page: Any) -> dict[str, Any]:
    return await page.evaluate(ROUTE_JS)  # type: ignore[no-any-return]


@pytest.mark.parametrize("client", ["player-page", "epic-5.7"])
async def test_relay_only_chromium_decodes_frames(
    client: str, coturn: Coturn, start_stack: Any, start_streamer: Any, open_page: Any, request: pytest.FixtureRequest
) -> None:
    grant = RestSecretProvider(coturn.options.urls, coturn.options.secrets).ice_servers("e2e-relay", 600)
    stack = await start_stack(peer_connection_options={"iceServers": grant.servers})
    streamer = await start_streamer(stack=stack)
    if client == "player-page":
        url = f"{stack.player_origin}/?StreamerId={streamer.streamer_id}&ForceTURN=1"
    else:
        request.getfixturevalue("epic_bundles")  # builds Epic's frontend once per session
        url = stack.epic_page("5.7", StreamerId=streamer.streamer_id, ForceTURN="true")
    page, log = await open_page(url, init_script=RECORD_PCS)

    async def why() -> str:
        return f"route={await route(page)}\ncoturn log:\n{coturn.log_text(1500)}\nconsole:\n{log.text()}"

    async def frames_above(count: int) -> int:
        deadline = time.monotonic() + WAIT_S
        while (frames := ((await route(page)) or {}).get("framesDecoded") or 0) <= count:
            if time.monotonic() > deadline:
                raise AssertionError(f"framesDecoded stayed at {frames} over relay-only ICE\n{await why()}")
            await asyncio.sleep(0.25)
        return int(frames)

    # frames decoded, and still rising: the stream is live through the relay
    await frames_above(await frames_above(0))

    info = await route(page)
    assert info["policy"] == "relay", await why()  # the client forced relay ...
    assert info["localTypes"] == ["relay"], await why()  # ... gathered only relay candidates
    assert info["selectedLocal"] == "relay", await why()  # ... and streams over one
    entry = grant.servers[1]
    assert entry["urls"] == list(coturn.options.urls[1:])
    assert verify(coturn.options.secrets[:1], entry["username"], entry["credential"], time.time())
