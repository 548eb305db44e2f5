"""karpenter.sh/do-not-disrupt on the agent's own pod while a slot holds a session
(gpu_agent/k8s_disruption.py), against a stand-in of the Kubernetes API's pod PATCH on
127.0.0.1: the guard alone (each sync called by the test), then a real agent with synthetic
streamers, real signalling and a real matchmaker (tests/integration/test_gpu_agent.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from gpu_agent.config import AgentSettings
from gpu_agent.k8s_disruption import ANNOTATION, DisruptionGuard, PodRef, pod_ref
from pixelfleet.shared_settings import ConfigError
from tests.integration.test_gpu_agent import Stack, eventually, player_on, stack  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration

TOKEN = "sa-token-0123"


@dataclass
class StandInApi:
    """PATCH /api/v1/namespaces/{ns}/pods/{name} as a JSON merge patch of the annotations."""

    url: str = ""
    annotations: dict[str, str] = field(default_factory=dict)
    patches: list[dict[str, Any]] = field(default_factory=list)  # every request, failed or not
    fail_next: int = 0  # answer this many with 500

    async def patch(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.patches.append(
            {
                "path": request.path,
                "content_type": request.headers.get("Content-Type"),
                "auth": request.headers.get("Authorization"),
                "body": body,
            }
        )
        if self.fail_next:
            self.fail_next -= 1
            return web.json_response({"kind": "Status", "code": 500}, status=500)
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"kind": "Status", "code": 401}, status=401)
        for key, value in body["metadata"]["annotations"].items():
            if value is None:
                self.annotations.pop(key, None)
            else:
                self.annotations[key] = value
        return web.json_response({"metadata": {"annotations": self.annotations}})


@pytest.fixture
async def api() -> AsyncIterator[StandInApi]:
    stand_in = StandInApi()
    app = web.Application()
    app.router.add_patch("/api/v1/namespaces/{ns}/pods/{name}", stand_in.patch)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    stand_in.url = f"http://127.0.0.1:{port}"
    try:
        yield stand_in
    finally:
        await runner.cleanup()


@pytest.fixture
def service_account(tmp_path: Path) -> Path:
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text(TOKEN + "\n")
    (sa / "namespace").write_text("games")
    return sa


def k8s(api: StandInApi, sa: Path, **more: Any) -> dict[str, Any]:
    return {
        "k8s_api_url": api.url,
        "k8s_service_account_dir": str(sa),
        "k8s_pod_name": "pf-agent-x7k2p",
        **more,
    }


async def test_guard_sets_once_removes_skips_unchanged_and_retries_a_500(
    api: StandInApi, service_account: Path
) -> None:
    pod = pod_ref(AgentSettings(**k8s(api, service_account)), environ={})
    assert pod is not None and pod.namespace == "games" and pod.ca_file is None
    live = [False]
    guard = DisruptionGuard(pod, lambda: live[0], period_s=60.0, timeout_s=5.0)
    try:
        assert await guard.sync()  # no session: the annotation is removed once, so a restart starts clean
        assert len(api.patches) == 1 and ANNOTATION not in api.annotations
        first = api.patches[0]
        assert first["path"] == "/api/v1/namespaces/games/pods/pf-agent-x7k2p"
        assert first["content_type"] == "application/merge-patch+json"
        assert first["auth"] == f"Bearer {TOKEN}"
        assert first["body"] == {"metadata": {"annotations": {ANNOTATION: None}}}

        assert await guard.sync()  # nothing changed: no request
        assert len(api.patches) == 1

        live[0] = True  # a session starts: set once
        assert await guard.sync() and await guard.sync()
        assert len(api.patches) == 2 and api.annotations == {ANNOTATION: "true"}

        live[0] = False  # it ends, and the API answers 500: not applied, tried on the next tick
        api.fail_next = 1
        assert not await guard.sync()
        assert len(api.patches) == 3 and api.annotations == {ANNOTATION: "true"} and guard.failures == 1
        assert await guard.sync()
        assert len(api.patches) == 4 and ANNOTATION not in api.annotations
        assert await guard.sync()
        assert len(api.patches) == 4 and guard.patches == 3
    finally:
        await guard.aclose()


def test_pod_ref_in_cluster_auto_on_and_off(tmp_path: Path, service_account: Path) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "10.100.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    base: dict[str, Any] = {"k8s_service_account_dir": str(service_account), "k8s_pod_name": "pf-agent-x7k2p"}
    pod = pod_ref(AgentSettings(**base), environ=env)
    assert pod == PodRef(
        "https://10.100.0.1:443", "games", "pf-agent-x7k2p", service_account / "token", service_account / "ca.crt"
    )
    six = pod_ref(AgentSettings(**base), environ={**env, "KUBERNETES_SERVICE_HOST": "fd00::1"})
    assert six is not None and six.api_url == "https://[fd00::1]:443"
    assert pod_ref(AgentSettings(**base), environ={}) is None  # auto, outside a cluster: off
    assert pod_ref(AgentSettings(**base, k8s_do_not_disrupt="off"), environ=env) is None
    no_name = AgentSettings(k8s_service_account_dir=str(service_account))
    assert pod_ref(no_name, environ=env) is None  # auto, in a cluster without its pod name: off (logged)
    with pytest.raises(ConfigError, match="K8S_POD_NAME"):
        pod_ref(AgentSettings(k8s_service_account_dir=str(service_account), k8s_do_not_disrupt="on"), environ=env)
    with pytest.raises(ConfigError, match="token"):
        pod_ref(
            AgentSettings(k8s_service_account_dir=str(tmp_path), k8s_pod_name="p", k8s_do_not_disrupt="on"), environ=env
        )
    with pytest.raises(ConfigError, match="https"):  # plain HTTP only on loopback
        pod_ref(AgentSettings(**base, k8s_api_url="http://10.100.0.1:80"), environ={})
    with pytest.raises(ConfigError, match="auto, on or off"):
        AgentSettings(k8s_do_not_disrupt="yes")


async def test_agent_protects_its_pod_while_a_player_is_on_a_slot(
    stack: Stack,  # noqa: F811 - the fixture imported above
    api: StandInApi,
    service_account: Path,
) -> None:
    await stack.start_matchmaker()
    agent, _ = await stack.start_agent(slots=1, **k8s(api, service_account, k8s_sync_period_s=0.2))
    assert agent.disruption is not None
    await eventually(lambda: stack.states_are(s0="ready"), "the slot READY")
    await eventually(lambda: len(api.patches) == 1, "the idle pod's annotation removed at start")
    assert ANNOTATION not in api.annotations
    status, session = await stack.call("POST", "/sessions", {"app": "game"}, token=None)
    assert status == 201, session
    async with player_on(stack, session["streamer_id"]):
        await eventually(lambda: api.annotations.get(ANNOTATION) == "true", "do-not-disrupt while the player is on")
    status, _ = await stack.call("DELETE", f"/admin/sessions/{session['session_id']}")
    assert status == 200
    await eventually(lambda: ANNOTATION not in api.annotations, "the annotation removed after the session")
    await eventually(lambda: stack.states_are(s0="ready"), "the slot READY after its reset")
    # one removal at start, one set, one removal: never a repeat of an unchanged state
    assert [p["body"]["metadata"]["annotations"][ANNOTATION] for p in api.patches] == [None, "true", None]
