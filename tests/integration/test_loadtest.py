"""``pixelfleet loadtest`` against real servers, briefly: every arrival shape against
signalling alone, the whole join path through ``pixelfleet up``, abusive clients, the
servers' own counters, and the HTML report in Chromium.

These check that the figures exist and agree with the servers' counts, never how
fast anything is (timings belong in docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pixelfleet.net import free_port
from tests.conftest import StartProcess

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parents[2]
STRICT = os.environ.get("CI", "").lower() == "true" or os.environ.get("PIXELFLEET_TEST__STRICT") == "1"

SHAPES = """
name = "every-shape"
target = "signaling"
workers = 2
[[phases]]
kind = "ramp"
duration_s = 1
from_rate = 2
to_rate = 10
[[phases]]
kind = "steady"
duration_s = 1
rate = 8
[[phases]]
kind = "spike"
duration_s = 1
rate = 4
peak_rate = 20
at_s = 0.3
width_s = 0.3
[[phases]]
kind = "diurnal"
duration_s = 1
min_rate = 2
max_rate = 10
period_s = 1
[session]
length_s = 1.5
spectators = { min = 0, max = 2 }
ice_candidates = 3
reconnect_probability = 0.2
[abuse]
fraction = 0.25
[webrtc]
sample = 1
input_probes = 2
"""

PLATFORM = """
name = "platform-brief"
target = "platform"
[[phases]]
kind = "steady"
duration_s = 3
rate = 1
[session]
length_s = 1
reconnect_probability = 0.3
[abuse]
fraction = 0.3
[webrtc]
sample = 1
input_probes = 1
"""


async def loadtest(tmp_path: Path, scenario: str, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    path = tmp_path / "scenario.toml"
    path.write_text(scenario)
    out = tmp_path / "report.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pixelfleet", "loadtest", "run", str(path), *args, "--json", str(out),
        "--html", str(tmp_path / "report.html"), "--worker-log-dir", str(tmp_path), "--progress-s", "1",
        cwd=ROOT, env={**os.environ, **(env or {})}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    text, _ = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, text.decode(errors="replace")
    assert b"[loadtest]" in text  # the live progress lines
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def check_abuse(report: dict[str, Any]) -> None:
    abuse = report["abuse"]
    assert abuse, "the scenario's abusive fraction ran no abusive client"
    for kind, a in abuse.items():
        assert a["runs"] > 0 and a["answered_as_documented"] == a["runs"], (kind, a)


def check_webrtc(report: dict[str, Any]) -> None:
    w = report["webrtc"]
    assert (w["sample"], w["connected"], w["connect_success"]) == (1, 1, 1.0), w
    assert w["ttff_ms"]["p50"] > 0 and w["fps"]["p50"] > 0
    assert w["input_rtt_ms"]["n"] >= 1  # the streamer drew the probe's box on a decoded frame


async def test_every_arrival_shape_against_signalling(start_process: StartProcess, tmp_path: Path) -> None:
    player, streamer = free_port(), free_port()
    server = await start_process(
        "signaling", "--player-port", str(player), "--streamer-port", str(streamer), "--sfu-port", "-1"
    )
    await server.wait_for_port(player)
    await server.wait_for_port(streamer)
    report = await loadtest(
        tmp_path, SHAPES, "--signaling", f"ws://127.0.0.1:{player}", "--streamer-url", f"ws://127.0.0.1:{streamer}"
    )
    s = report["sessions"]
    assert s["planned"] == s["finished"] > 10
    assert s["failed"] == 0, report["errors_by_kind"]
    assert s["relayed_messages"] > 0 and s["reconnects_ok"] == s["reconnects"]
    assert report["latency_ms"]["join"]["p50"] > 0
    sig = report["counters"]["signaling"]
    assert sig["agree"], sig  # within the tolerance the report states
    assert sig["players_after_run"] == 0
    check_abuse(report)
    check_webrtc(report)
    assert report["server"]["local"] and report["server"]["pid"] == server.pid
    assert len(report["timeline"]) >= 4 and report["generator"]["workers"] == 2
    assert server.returncode is None  # the abuse crashed nothing
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{player}/healthz") as r:
        assert r.status == 200
    await html_opens_cleanly(tmp_path / "report.html", tmp_path / "report.png")


async def test_the_whole_platform(start_process: StartProcess, tmp_path: Path) -> None:
    port, streamer = free_port(), free_port()
    records = tmp_path / "records.jsonl"
    env = {**os.environ, "PIXELFLEET_ADMIN_TOKEN": "lt-admin", "PIXELFLEET_MATCHMAKER__RECONNECT_GRACE_S": "0.3"}
    up = await start_process(
        "up", "--player-port", str(port), "--streamer-port", str(streamer), "--sfu-port", "-1", "--streamers", "2",
        "--width", "320", "--height", "180", "--records", str(records), env=env, new_session=True,
    )  # fmt: skip
    await up.wait_for_port(port, timeout_s=60)
    await up.wait_until(lambda: "pixelfleet is up" in up.output(), "ready", timeout_s=60)
    report = await loadtest(
        tmp_path, PLATFORM, "--matchmaker", f"http://127.0.0.1:{port}", "--records", str(records), env=env
    )
    s = report["sessions"]
    assert s["failed"] == 0, report["errors_by_kind"]
    mm = report["counters"]["matchmaker"]
    assert mm["sessions_tester"] > 0 and mm["agree"], mm  # every session we were given has its record
    assert report["latency_ms"]["session_request"]["n"] == s["normal"]  # every player went through the API
    check_abuse(report)
    check_webrtc(report)
    assert up.returncode is None


async def html_opens_cleanly(html: Path, screenshot: Path) -> None:
    if not Path("/usr/bin/chromium").exists():
        if STRICT:
            pytest.fail("/usr/bin/chromium is missing")
        pytest.skip("/usr/bin/chromium is missing")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        try:
            page = await browser.new_page()
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            await page.goto(html.as_uri())
            assert await page.locator("svg").count() >= 5
            assert "pixelfleet load test" in await page.title()
            await page.screenshot(path=str(screenshot), full_page=True)
        finally:
            await browser.close()
    assert problems == []
    assert screenshot.stat().st_size > 0
