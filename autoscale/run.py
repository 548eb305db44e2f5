"""``pixelfleet autoscale``: the autoscaler of one pool as its own process, for a fleet in the
cloud: it reads a matchmaker over its admin API and acts through the ``aws-asg`` provider.

    PIXELFLEET_ADMIN_TOKEN=... pixelfleet autoscale --matchmaker http://mm:9999 --config pool.json

The config file (JSON) is described in docs/autoscaling.md. ``--once`` runs one control
step (it acts, like any step), prints its decision as JSON and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import msgspec

from autoscale.controller import ApiObserver, Controller
from autoscale.events import EventSpec, decode_events
from autoscale.forecast import DemandForecaster, ForecastSettings
from autoscale.policy import ForecastSizer, PoolPolicy, Scaler
from autoscale.providers.aws_asg import AwsAsgProvider, AwsAsgSettings


class AwsAutoscaleConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    aws: AwsAsgSettings
    tenant: str = "default"
    app: str = "default"
    region: str | None = None  # the pool's region (its provider's hosts are there); None: every region
    policy: PoolPolicy = PoolPolicy()
    forecast: ForecastSettings = ForecastSettings()
    period_s: float = 60.0
    events: list[EventSpec] = []
    events_file: str | None = None
    history_file: str | None = None
    decision_log: str | None = None

    def __post_init__(self) -> None:
        if self.period_s <= 0:
            raise ValueError("period_s must be > 0")


def load_config(path: str) -> AwsAutoscaleConfig:
    try:
        config = msgspec.json.decode(Path(path).read_bytes(), type=AwsAutoscaleConfig)
        if config.events_file and Path(config.events_file).exists():
            decode_events(Path(config.events_file).read_bytes())
    except (OSError, msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise ValueError(f"--config {path}: {exc}") from None
    return config


def build(config: AwsAutoscaleConfig, matchmaker_url: str, admin_token: str) -> Controller:
    from matchmaker.client import MatchmakerApi

    forecaster = DemandForecaster(config.forecast, tuple(e.event() for e in config.events))
    return Controller(
        ApiObserver(MatchmakerApi(matchmaker_url, admin_token=admin_token)),
        AwsAsgProvider(config.aws),
        Scaler(config.policy, ForecastSizer(forecaster)),
        tenant=config.tenant,
        app=config.app,
        region=config.region,
        period_s=config.period_s,
        decision_log=config.decision_log,
        events_file=config.events_file,
        history_file=config.history_file,
    )


async def run(controller: Controller, *, once: bool) -> int:
    api = controller.observer.api if isinstance(controller.observer, ApiObserver) else None
    try:
        provider = controller.provider
        if isinstance(provider, AwsAsgProvider):
            await provider.ensure_warm_pool()
        if once:
            d = await controller.step()
            print(msgspec.json.encode(d).decode(), flush=True)
            return 0
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        controller.start()
        await stop.wait()
        return 0
    finally:
        await controller.aclose()
        if api is not None:
            await api.aclose()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="pixelfleet autoscale",
        description="Size one pool of a cloud fleet from a matchmaker's demand (docs/autoscaling.md). "
        "The admin token comes from PIXELFLEET_ADMIN_TOKEN.",
    )
    p.add_argument("--matchmaker", required=True, metavar="URL", help="the matchmaker's root, e.g. http://mm:9999")
    p.add_argument("--config", required=True, metavar="FILE", help="the pool's settings, JSON")
    p.add_argument("--provider", default="aws-asg", choices=["aws-asg"], help="fleet provider (default aws-asg)")
    p.add_argument("--once", action="store_true", help="one control step, its decision printed as JSON, then exit")
    args = p.parse_args(argv)
    try:
        config = load_config(args.config)
        token = os.environ.get("PIXELFLEET_ADMIN_TOKEN", "")
        if not token:
            raise ValueError("PIXELFLEET_ADMIN_TOKEN is not set (the matchmaker's admin token)")
        controller = build(config, args.matchmaker, token)
    except ValueError as exc:
        print(f"pixelfleet autoscale: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(run(controller, once=args.once))
