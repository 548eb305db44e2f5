"""Karpenter must not take away a node while one of its slots holds a live session.

Sessions run inside the agent's DaemonSet pod, so to Karpenter a GPU node with sessions
looks empty. Karpenter honours the pod annotation ``karpenter.sh/do-not-disrupt: "true"``
on any pod of a node, DaemonSet pods included: it then neither consolidates nor drifts that
node. ``DisruptionGuard`` sets that annotation on the agent's own pod while any slot holds a
session and removes it when none does, with a JSON merge patch of the pod
(``PATCH /api/v1/namespaces/{ns}/pods/{name}``), only when the wanted state differs from
the last one the API accepted. A failed patch is logged and tried again on the next change
or tick; it never stops the agent.

In the cluster it talks to ``https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT``
with the pod's service-account token and CA. ``agent.k8s_api_url`` may name a plain-HTTP
loopback address instead (tests); any other non-https URL is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import aiohttp
import structlog

from gpu_agent.config import AgentSettings
from pixelfleet.shared_settings import ConfigError

log = structlog.get_logger("gpu_agent.k8s")

ANNOTATION = "karpenter.sh/do-not-disrupt"
LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class PodRef:
    """Where the agent's own pod is and how to reach the API server."""

    api_url: str
    namespace: str
    name: str
    token_file: Path
    ca_file: Path | None  # None only for a plain-HTTP loopback api_url (tests)


def pod_ref(settings: AgentSettings, environ: Mapping[str, str] = os.environ) -> PodRef | None:
    """The pod to annotate, or None when off. ``auto`` is on when the in-cluster service
    account (API address, token, namespace) and the pod's name are all there; ``on`` raises
    ConfigError when one is missing."""
    mode = settings.k8s_do_not_disrupt
    if mode == "off":
        return None
    sa = Path(settings.k8s_service_account_dir)
    api_url = settings.k8s_api_url
    host, port = environ.get("KUBERNETES_SERVICE_HOST", ""), environ.get("KUBERNETES_SERVICE_PORT", "")
    if not api_url and host and port:
        api_url = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    namespace = settings.k8s_namespace
    if not namespace and (sa / "namespace").is_file():
        namespace = (sa / "namespace").read_text().strip()
    missing = [
        what
        for what, present in (
            ("KUBERNETES_SERVICE_HOST/PORT", bool(api_url)),
            (str(sa / "token"), (sa / "token").is_file()),
            ("namespace", bool(namespace)),
            ("PIXELFLEET_AGENT__K8S_POD_NAME", bool(settings.k8s_pod_name)),
        )
        if not present
    ]
    if missing:
        if mode == "on":
            raise ConfigError(f"agent.k8s_do_not_disrupt=on needs {', '.join(missing)}")
        if api_url:  # in a cluster, but not set up for it: say so once
            log.warning("k8s_do_not_disrupt_off", missing=missing)
        return None
    url = urlsplit(api_url)
    if url.scheme == "http" and url.hostname in LOOPBACK:
        ca_file = None
    elif url.scheme == "https":
        ca_file = sa / "ca.crt"
    else:
        raise ConfigError(f"agent.k8s_api_url must be https (plain http only on loopback), not {api_url!r}")
    return PodRef(api_url.rstrip("/"), namespace, settings.k8s_pod_name, sa / "token", ca_file)


class DisruptionGuard:
    """Keeps ``karpenter.sh/do-not-disrupt`` on the pod equal to ``live()``."""

    def __init__(self, pod: PodRef, live: Callable[[], bool], *, period_s: float, timeout_s: float) -> None:
        self.pod = pod
        self.live = live
        self.period_s = period_s
        self.timeout_s = timeout_s
        self.applied: bool | None = None  # what the API last accepted; None: not yet known
        self.patches = 0  # accepted
        self.failures = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="k8s-do-not-disrupt")

    def poke(self) -> None:
        """A slot changed: look now rather than at the next tick."""
        self._wake.set()

    async def sync(self) -> bool:
        """Patch the pod if ``live()`` differs from what the API last accepted; True if it
        now matches. Errors are logged and left for the next call."""
        want = self.live()
        if want == self.applied:
            return True
        try:
            await self._patch(want)
        except Exception as exc:  # noqa: BLE001 - logged; the next change or tick tries again
            self.failures += 1
            log.warning("k8s_do_not_disrupt_failed", protect=want, error=f"{type(exc).__name__}: {exc}")
            return False
        self.applied = want
        self.patches += 1
        log.info("k8s_do_not_disrupt", protect=want, pod=self.pod.name)
        return True

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._http is not None:
            await self._http.close()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            await self.sync()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.period_s):
                    await self._wake.wait()

    async def _patch(self, protect: bool) -> None:
        p = self.pod
        if self._http is None:
            ssl_ctx: ssl.SSLContext | bool = False
            if p.ca_file is not None:
                ssl_ctx = ssl.create_default_context(cafile=str(p.ca_file))
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_ctx))
        token = p.token_file.read_text().strip()  # re-read: the kubelet rotates it
        # merge patch: null deletes the key (a missing key is not an error)
        body = {"metadata": {"annotations": {ANNOTATION: "true" if protect else None}}}
        url = f"{p.api_url}/api/v1/namespaces/{quote(p.namespace, safe='')}/pods/{quote(p.name, safe='')}"
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/merge-patch+json"}
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with self._http.patch(url, data=json.dumps(body).encode(), headers=headers, timeout=timeout) as resp:
            if resp.status >= 300:
                text = (await resp.text())[:200]
                raise RuntimeError(f"PATCH pod {p.namespace}/{p.name}: HTTP {resp.status} {text}")
