"""``pixelfleet agent`` (``python -m gpu_agent``): the GPU agent of one host.

Its flags are added to the ``pixelfleet`` command's parser; the CLI loads the settings
(``pixelfleet.settings``) and hands ``run`` the agent's section.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpu_agent.config import AgentSettings


def add_agent_flags(p: argparse.ArgumentParser) -> None:
    """Each flag's dest is the setting it sets; the rest are PIXELFLEET_AGENT__<NAME> only."""
    p.add_argument(
        "--matchmaker-url", dest="agent.matchmaker_url", help="matchmaker base URL (default http://127.0.0.1:9999)"
    )
    p.add_argument("--host-id", dest="agent.host_id", help="this host's id (default: hostname)")
    p.add_argument("--region", dest="agent.region", help="region reported to the matchmaker (default local)")
    p.add_argument("--slots", dest="agent.slots", type=int, help="slots on this host (default: slots_per_gpu per GPU)")
    p.add_argument("--slots-per-gpu", dest="agent.slots_per_gpu", type=int, help="default 1")
    p.add_argument("--streamer", dest="agent.streamer", help="synthetic | ue (default synthetic)")
    p.add_argument("--ue-binary", dest="agent.ue_binary", help="UE build launcher (streamer=ue)")
    p.add_argument("--streamer-url", dest="agent.streamer_url", help="signalling streamer URL given to the streamers")
    p.add_argument("--signaling-url", dest="agent.signaling_url", help="signalling URL players connect to")
    p.add_argument(
        "--signaling-api-url",
        dest="agent.signaling_api_url",
        help="signalling player-port base URL (REST readiness checks)",
    )
    p.add_argument("--app", dest="agent.app", help="app id the slots serve (default default)")
    p.add_argument("--tenant", dest="agent.tenant", help="tenant the slots serve (default default)")
    p.add_argument(
        "--metrics-port",
        dest="agent.metrics_port",
        type=int,
        help="Prometheus /metrics and /healthz port (default 9102, -1 = off)",
    )
    p.add_argument("--drain-mode", dest="agent.drain_mode", help="wait | end (default wait)")
    p.add_argument(
        "--spot", dest="agent.spot", action="store_const", const=True, help="poll EC2 metadata for Spot interruptions"
    )


def run(s: AgentSettings) -> int:
    import uvloop

    from gpu_agent.agent import Agent
    from gpu_agent.client import HttpMatchmakerClient
    from gpu_agent.cloudwatch import make_publisher

    async def serve() -> None:
        client = HttpMatchmakerClient(
            s.matchmaker_url, s.agent_token, admin_token=s.admin_token, timeout_s=s.request_timeout_s
        )
        cloudwatch = make_publisher(s.cloudwatch_namespace, s.cloudwatch_region) if s.cloudwatch_namespace else None
        await Agent(s, client, cloudwatch=cloudwatch).run_until_signal()

    uvloop.run(serve())
    return 0


if __name__ == "__main__":
    from pixelfleet.cli import main

    raise SystemExit(main(["agent", *sys.argv[1:]]))
