"""TURN through a real coturn (Debian package) on loopback, with credentials from our
service: a relay-only stream signalled through our own server, rotation, and the
credentials coturn must refuse.

aioice reports a refused credential in two ways, and both are asserted: an ICE agent
simply gathers no relay candidate (it never raises), and a bare TURN allocation
(``create_turn_endpoint``) fails with ``TransactionFailed`` 401.

Every wait is a hang guard, never a performance limit.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import string
import time
from pathlib import Path
from typing import Any

import aiohttp
import aioice
import pytest
from aioice import stun
from aioice.turn import create_turn_endpoint
from aiortc import RTCPeerConnection

from loadtest.synthetic_player import SyntheticPlayer
from pixelfleet.net import NotListening, free_port, wait_for_port
from streamer import input_messages as im
from streamer.synthetic import SyntheticStreamer
from tests.conftest import StartProcess, StartSignaling, require_binary
from turn.config import TurnSettings
from turn.coturn import Coturn, CoturnOptions, relay_port_range
from turn.credentials import issue, password_for, verify
from turn.http import PATH
from turn.wiring import wire_turn

pytestmark = pytest.mark.integration

WAIT = 30.0


def turn_address(turn: Coturn) -> tuple[str, int]:
    return turn.options.host, turn.options.port


async def relay_candidates(
    turn: Coturn, username: str, password: str, transport: str = "udp"
) -> list[aioice.Candidate]:
    """What a relay-only ICE agent gathers with this credential."""
    conn = aioice.Connection(
        ice_controlling=True,
        turn_server=turn_address(turn),
        turn_username=username,
        turn_password=password,
        turn_transport=transport,
        use_ipv6=False,
        transport_policy=aioice.TransportPolicy.RELAY,
    )
    try:
        await asyncio.wait_for(conn.gather_candidates(), WAIT)
        return [c for c in conn.local_candidates if c.type == "relay"]
    finally:
        await conn.close()


ALLOCATION_MISMATCH = 437


async def allocate(turn: Coturn, username: str, password: str) -> tuple[str, int]:
    """One TURN allocation; returns the relayed address or raises TransactionFailed.

    coturn answers 437 before it looks at credentials when the new socket's ephemeral
    port happens to be one an earlier (closed) allocation of this test used: that says
    nothing about the credential, so a fresh socket tries again.
    """
    for attempt in range(3):
        try:
            transport, _ = await asyncio.wait_for(
                create_turn_endpoint(asyncio.DatagramProtocol, turn_address(turn), username, password),
                WAIT,
            )
            break
        except stun.TransactionFailed as exc:
            if exc.response.attributes["ERROR-CODE"][0] != ALLOCATION_MISMATCH or attempt == 2:
                raise
    try:
        host, port = transport.get_extra_info("sockname")
        return str(host), int(port)
    finally:
        transport.close()


async def assert_refused(turn: Coturn, username: str, password: str, why: str) -> None:
    assert await relay_candidates(turn, username, password) == [], f"{why}: got a relay candidate"
    with pytest.raises(stun.TransactionFailed) as info:
        await allocate(turn, username, password)
    assert info.value.response.attributes["ERROR-CODE"][0] == 401, why
    # coturn logs the refused username (never a password)
    assert password not in turn.log_text()


# --- the relay-only stream ------------------------------------------------------------


def ice_connection(pc: RTCPeerConnection) -> aioice.Connection:
    transceivers = pc.getTransceivers()
    dtls = transceivers[0].receiver.transport if transceivers else pc.sctp.transport  # type: ignore[union-attr]
    return dtls.transport._connection  # aiortc has no public accessor


def assert_relay_only(pc: RTCPeerConnection, who: str) -> None:
    conn = ice_connection(pc)
    local_types = {c.type for c in conn.local_candidates}
    assert local_types == {"relay"}, f"{who} gathered {local_types}"
    nominated = list(conn._nominated.values())
    assert nominated, f"{who} has no nominated pair"
    for pair in nominated:
        assert (pair.local_candidate.type, pair.remote_candidate.type) == ("relay", "relay"), (who, pair)


def turn_entry(options: dict[str, Any]) -> dict[str, Any]:
    return next(s for s in options["iceServers"] if "username" in s)


async def test_relay_only_stream_through_coturn(coturn: Coturn, start_signaling: StartSignaling) -> None:
    settings = TurnSettings(
        provider="rest-secret", urls=coturn.options.urls, secrets=coturn.options.secrets, ttl_s=600, force_relay=True
    )
    wiring = wire_turn(settings)
    assert wiring is not None
    server = await start_signaling(sfu_port=-1, **wiring.server_kwargs())
    streamer = SyntheticStreamer(f"ws://127.0.0.1:{server.streamer_port}", "Relay", 320, 240, 20)
    task = asyncio.create_task(streamer.run())
    try:
        await streamer.wait_identified(WAIT)
        async with SyntheticPlayer(f"ws://127.0.0.1:{server.player_port}", "Relay") as player:
            # video frames, streamer -> player
            first = await player.wait_frames(5, WAIT)
            await player.wait_frames(first + 5, WAIT)
            # data channel both ways: the streamer's protocol and initial settings, our input
            await player.wait_streamer_message("InitialSettings", WAIT)
            await player.send_mouse_move(1000, 2000)
            got = await streamer.wait_input(lambda _, m: isinstance(m, im.MouseMove), WAIT)
            assert got == (player.player_id, im.MouseMove(1000, 2000, 0, 0))

            # each side used the credentials our server minted for it ...
            now = time.time()
            for who, options in (("player", player.peer_options), ("streamer", streamer.peer_options)):
                assert options["iceTransportPolicy"] == "relay"
                entry = turn_entry(options)
                assert entry["urls"] == list(coturn.options.urls[1:])
                assert verify(coturn.options.secrets[:1], entry["username"], entry["credential"], now), who
            assert turn_entry(player.peer_options)["username"].endswith(f":{player.player_id}")
            assert turn_entry(streamer.peer_options)["username"].endswith(":UnknownStreamer")
            # ... and the media went through coturn: only relay candidates, relay<->relay pairs
            assert player.pc is not None
            assert_relay_only(player.pc, "player")
            assert player.player_id is not None
            assert_relay_only(streamer.peers[player.player_id].pc, "streamer")
    finally:
        await streamer.stop()
        await asyncio.wait_for(task, WAIT)


async def test_credentials_route_on_the_signalling_server(coturn: Coturn, start_signaling: StartSignaling) -> None:
    settings = TurnSettings(provider="rest-secret", urls=coturn.options.urls, secrets=coturn.options.secrets)
    wiring = wire_turn(settings)
    assert wiring is not None
    server = await start_signaling(sfu_port=-1, **wiring.server_kwargs())
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{server.player_port}{PATH}") as resp:
        assert resp.status == 200
        body = await resp.json()
    entry = turn_entry(body)
    assert len(await relay_candidates(coturn, entry["username"], entry["credential"])) == 1
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{server.player_port}/api/status") as resp:
        assert resp.status == 200  # the page's own routes are still there


# --- what coturn accepts and refuses ----------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_fresh_credentials_get_a_relay(coturn: Coturn, transport: str) -> None:
    cred = issue(coturn.options.secrets[0], "Player0", 600, time.time())
    relays = await relay_candidates(coturn, cred.username, cred.password, transport)
    assert [(c.host, c.transport) for c in relays] == [("127.0.0.1", "udp")]
    low, high = coturn.options.min_port, coturn.options.max_port
    assert low <= relays[0].port <= high


async def test_rotation_both_configured_secrets_work(coturn: Coturn) -> None:
    new, old = coturn.options.secrets
    for secret in (new, old):
        cred = issue(secret, "sess-rotation", 600, time.time())
        assert len(await relay_candidates(coturn, cred.username, cred.password)) == 1
        host, port = await allocate(coturn, cred.username, cred.password)
        assert host == "127.0.0.1" and port > 0


async def test_expired_credential_is_refused(coturn: Coturn) -> None:
    cred = issue(coturn.options.secrets[0], "Player0", 60, time.time() - 3600)
    await assert_refused(coturn, cred.username, cred.password, "expired")


async def test_retired_secret_is_refused(coturn: Coturn) -> None:
    retired = secrets.token_urlsafe(24)  # signed earlier with a secret coturn no longer holds
    cred = issue(retired, "Player0", 600, time.time())
    await assert_refused(coturn, cred.username, cred.password, "retired secret")


async def test_tampered_password_is_refused(coturn: Coturn) -> None:
    cred = issue(coturn.options.secrets[0], "Player0", 600, time.time())
    flipped = ("A" if cred.password[0] != "A" else "B") + cred.password[1:]
    await assert_refused(coturn, cred.username, flipped, "tampered password")


async def test_extended_expiry_is_refused(coturn: Coturn) -> None:
    """A client that moves its own expiry forward keeps the old password: refused."""
    cred = issue(coturn.options.secrets[0], "Player0", 600, time.time())
    later = f"{cred.expires_at + 86400}:Player0"
    await assert_refused(coturn, later, cred.password, "extended expiry")
    assert cred.password != password_for(coturn.options.secrets[0], later)


async def test_deploy_template_accepts_our_credentials(tmp_path: Path) -> None:
    """coturn run from deploy/coturn/turnserver.conf.template (loopback values, no TLS
    certificate, so only the TLS listener is off) takes what rest-secret mints."""
    binary = require_binary("turnserver")
    new, previous = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    low, high = relay_port_range(40)
    template = Path(__file__).parents[2] / "deploy" / "coturn" / "turnserver.conf.template"
    conf = tmp_path / "turnserver.conf"
    conf.write_text(
        string.Template(template.read_text()).substitute(
            TURN_SECRET=new,
            TURN_SECRET_PREVIOUS=previous,
            TURN_REALM="pixel.test",
            PRIVATE_IP="127.0.0.1",
            PUBLIC_IP="127.0.0.1",
            TLS_CERT=tmp_path / "absent.crt",
            TLS_KEY=tmp_path / "absent.key",
            MIN_PORT=low,
            MAX_PORT=high,
            UE_PEER_RANGE="127.0.0.1-127.0.0.1",
            USER_QUOTA=4,
            TOTAL_QUOTA=100,
            MAX_BPS=6250000,
        )
    )
    conf.chmod(0o600)
    port = free_port(udp=True)
    with open(tmp_path / "log", "wb") as log:  # noqa: ASYNC230 - once, before the process
        proc = await asyncio.create_subprocess_exec(
            binary,
            "-c",
            str(conf),
            f"--listening-port={port}",
            f"--tls-listening-port={free_port(udp=True)}",
            f"--pidfile={tmp_path / 'pid'}",
            f"--userdb={tmp_path / 'turndb'}",
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
    try:
        try:
            await wait_for_port("127.0.0.1", port, WAIT, exited=lambda: proc.returncode is not None)
        except NotListening as exc:
            pytest.fail(f"turnserver: {exc}:\n{(tmp_path / 'log').read_text()}")
        turn = Coturn(CoturnOptions(secrets=(new, previous), port=port))  # address only
        for secret in (new, previous):
            cred = issue(secret, "sess-deploy", 600, time.time())
            assert len(await relay_candidates(turn, cred.username, cred.password)) == 1
        cred = issue(secrets.token_urlsafe(24), "sess-deploy", 600, time.time())
        await assert_refused(turn, cred.username, cred.password, "unknown secret")
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), WAIT)


# --- pixelfleet up --turn ------------------------------------------------------------------


async def test_up_without_turnserver_says_how_to_install(tmp_path: Any, start_process: StartProcess) -> None:
    up = await start_process("up", "--turn", env={**os.environ, "PATH": str(tmp_path)})
    assert await up.wait(WAIT) == 2
    err = up.output(None)
    assert "turnserver is not installed" in err and "apt-get install -y coturn" in err


async def test_up_with_turn_runs_coturn_and_hands_out_its_credentials(start_process: StartProcess) -> None:
    require_binary("turnserver")
    up = await start_process(
        "up",
        "--turn",
        "--turn-port",
        "0",
        "--streamers",
        "0",
        "--player-port",
        "0",
        "--streamer-port",
        "0",
        "--sfu-port",
        "-1",
        "--log-format",
        "json",
    )
    banner = await up.wait_for_line("pixelfleet is up", WAIT)
    await up.wait_for_line("relay-only test", WAIT)
    output = up.output(None)
    page = banner.split("open ", 1)[1].strip()
    started = next(json.loads(line) for line in output.splitlines() if '"coturn_started"' in line)
    async with aiohttp.ClientSession() as http, http.get(f"{page}api/turn-credentials") as resp:
        body = await resp.json()
    entry = turn_entry(body)
    assert entry["urls"][0] == f"turn:127.0.0.1:{started['port']}?transport=udp"
    # the generated secret stays out of the log and the command line
    assert entry["credential"] not in output
    cmdline = Path(f"/proc/{started['pid']}/cmdline").read_bytes()  # noqa: ASYNC240
    assert b"static-auth-secret" not in cmdline
    probe = Coturn(CoturnOptions(secrets=("unused",), port=started["port"]))
    assert len(await relay_candidates(probe, entry["username"], entry["credential"])) == 1
    assert await up.stop(signal.SIGINT, WAIT) == 0
    async with asyncio.timeout(WAIT):  # coturn went with it
        while not _gone(started["pid"]):  # noqa: ASYNC110 - polling another process
            await asyncio.sleep(0.05)


def _gone(pid: int) -> bool:
    """Exited (or a zombie waiting for its parent to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.split(") ", 1)[1].startswith("Z")
