"""``pixelfleet agent`` (``python -m gpu_agent``): the GPU agent of one host."""

from __future__ import annotations

import argparse
import sys

from gpu_agent.config import load_agent_settings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pixelfleet agent", description=__doc__.split("\n")[0],
                                epilog="Every setting is also PIXELFLEET_AGENT__<NAME> (gpu_agent/config.py); "
                                       "tokens only from the environment.")
    p.add_argument("--matchmaker-url", help="matchmaker base URL (default http://127.0.0.1:9999)")
    p.add_argument("--host-id", help="this host's id (default: hostname)")
    p.add_argument("--slots", type=int, help="slots on this host (default: slots_per_gpu per GPU)")
    p.add_argument("--slots-per-gpu", type=int)
    p.add_argument("--streamer", help="synthetic | ue")
    p.add_argument("--ue-binary", help="UE build launcher (streamer=ue)")
    p.add_argument("--streamer-url", help="signalling streamer URL given to the streamers")
    p.add_argument("--signaling-url", help="signalling URL players connect to")
    p.add_argument("--signaling-api-url", help="signalling player-port base URL (REST readiness checks)")
    p.add_argument("--app", help="app id the slots serve")
    p.add_argument("--tenant", help="tenant the slots serve")
    p.add_argument("--metrics-port", type=int, help="Prometheus /metrics and /healthz port (-1 = off)")
    p.add_argument("--spot", action="store_const", const=True, help="poll EC2 metadata for Spot interruptions")
    p.add_argument("--log-level")
    p.add_argument("--log-format")
    return p


def main(argv: list[str] | None = None) -> int:
    import uvloop

    from gpu_agent.agent import Agent
    from gpu_agent.client import HttpMatchmakerClient
    from gpu_agent.cloudwatch import make_publisher
    from pixelfleet.logs import configure_logging
    from pixelfleet.settings import ConfigError

    args = _parser().parse_args(argv)
    try:
        s = load_agent_settings(**{k: v for k, v in vars(args).items()})
    except ConfigError as exc:
        print(f"pixelfleet agent: {exc}", file=sys.stderr)
        return 2
    configure_logging(s.log_level, s.log_format)

    async def run() -> None:
        client = HttpMatchmakerClient(s.matchmaker_url, s.agent_token, admin_token=s.admin_token,
                                      timeout_s=s.request_timeout_s)
        cloudwatch = make_publisher(s.cloudwatch_namespace, s.cloudwatch_region) if s.cloudwatch_namespace else None
        await Agent(s, client, cloudwatch=cloudwatch).run_until_signal()

    uvloop.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
