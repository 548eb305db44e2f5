"""The alert rules and the Grafana dashboard name only metrics that real processes export.

``promtool check rules`` validates the rules file (syntax, PromQL) and ``promtool test rules``
runs its unit tests (``alerts_test.yml``); every ``pixelfleet_*``
name in a rule or a panel must be in the exposition of a real signalling process, a real
matchmaker process, or the agent's (rendered from a stand-in agent: no GPU here).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
import yaml

from gpu_agent.metrics import render
from pixelfleet.net import free_port
from tests.conftest import StartProcess, require_binary
from tests.unit.test_gpu_agent_parts import fake_agent

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "pixelfleet.json"
NAME = re.compile(r"\bpixelfleet_[a-z0-9_]+")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}


def exported_names(text: str) -> set[str]:
    """Every sample name a family may have, from its TYPE line (labelled families with no
    samples yet still have one)."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            names.update(name + s for s in SUFFIXES.get(kind, ()))
    return names


def rule_expressions() -> list[str]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in doc["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in doc["panels"] for target in panel["targets"]]


def test_promtool_accepts_the_rules() -> None:
    promtool = require_binary("promtool")
    done = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 13 rules found" in done.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    """deploy/prometheus/alerts_test.yml: the refusal alerts fire on a sustained rate, by the
    reason or limit and tenant, and not on a short burst; the alerts issue 13 names (no READY
    slot, queue wait p95, signalling error and close-code spikes, hosts lost but not a
    drained host that stops) fire and stay quiet when they should."""
    promtool = require_binary("promtool")
    done = subprocess.run(
        [promtool, "test", "rules", RULES.with_name("alerts_test.yml").name],
        cwd=RULES.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


async def test_rules_and_panels_name_exported_metrics(start_process: StartProcess, redis_url: str) -> None:
    """Both services on Redis (their round-trip families exist only there)."""
    player, streamer, mm_port = free_port(), free_port(), free_port()
    turn = {  # a TURN provider adds the credentials-issued family
        "PIXELFLEET_TURN__PROVIDER": "rest-secret",
        "PIXELFLEET_TURN__URLS": "turn:127.0.0.1:3478?transport=udp",
        "PIXELFLEET_TURN__SECRETS": "t" * 32,
    }
    sig = await start_process(
        "signaling", "--player-port", str(player), "--streamer-port", str(streamer), "--sfu-port", "-1",
        "--state-url", redis_url, env={**os.environ, **turn},
    )  # fmt: skip
    env = {
        **os.environ,
        "PIXELFLEET_SESSION_TOKEN_SECRET": "session-secret-" + "d" * 32,
        "PIXELFLEET_MATCHMAKER__ALLOW_ANONYMOUS": "true",
        "PIXELFLEET_STATE_URL": redis_url,
        "PIXELFLEET_MATCHMAKER__KEY_PREFIX": f"rules{uuid.uuid4().hex[:8]}",
    }
    mm = await start_process("matchmaker", "--port", str(mm_port), "--log-level", "warning", env=env)
    await sig.wait_for_port(player)
    await mm.wait_for_port(mm_port)
    agent = fake_agent()
    # An agent with a matchmaker (a reporter) adds the registration and heartbeat families.
    agent.reporter = SimpleNamespace(registered=True, delivered=3, failed=0, last_delivered_at=None)
    exported = exported_names(render(agent))
    async with aiohttp.ClientSession() as http:
        for url in (f"http://127.0.0.1:{player}/metrics", f"http://127.0.0.1:{mm_port}/metrics"):
            async with http.get(url) as r:
                assert r.status == 200
                exported |= exported_names(await r.text())
    expressions = rule_expressions() + dashboard_expressions()
    used = {name for expr in expressions for name in NAME.findall(expr)}
    assert len(used) > 20
    assert used <= exported, sorted(used - exported)
