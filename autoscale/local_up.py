"""``pixelfleet up --autoscale``: the local fleet sized by the forecast autoscaler.

Instead of one host with ``--streamers`` slots, the controller launches hosts of
``policy.slots_per_host`` synthetic streamers each (``auto-1``, ``auto-2``, ...) through the
``local`` provider, between ``policy.min_hosts`` and ``policy.max_hosts``, reading the
embedded matchmaker in process. Settings: a JSON file (``--autoscale-config``), format
in docs/autoscaling.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from autoscale.controller import Controller, InProcessObserver
from autoscale.events import EventSpec, decode_events
from autoscale.forecast import DemandForecaster, ForecastSettings
from autoscale.policy import ForecastSizer, PoolPolicy, Scaler
from autoscale.providers.local import LocalProvider

if TYPE_CHECKING:
    from gpu_agent.agent import Agent
    from matchmaker.service import Matchmaker
    from pixelfleet.settings import PixelfleetSettings
    from signaling.app import SignalingServer


class LocalAutoscaleConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # One box: small hosts that start in seconds, so short lead time, period and cool-down.
    policy: PoolPolicy = PoolPolicy(min_hosts=1, max_hosts=4, lead_time_s=20.0, scale_in_cooldown_s=30.0)
    forecast: ForecastSettings = ForecastSettings(bucket_s=60.0, recent_window_s=60.0)
    period_s: float = 2.0
    events: list[EventSpec] = []  # start and end in Unix seconds or ISO 8601
    events_file: str | None = None  # more events, re-read whenever the file changes
    decision_log: str | None = None  # append each decision as a JSON line
    history_file: str | None = None  # the forecast's seasonal memory, kept across restarts

    def __post_init__(self) -> None:
        if self.period_s <= 0:
            raise ValueError("period_s must be > 0")


def load_local_config(path: str | None) -> LocalAutoscaleConfig:
    if path is None:
        return LocalAutoscaleConfig()
    try:
        config = msgspec.json.decode(Path(path).read_bytes(), type=LocalAutoscaleConfig)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise ValueError(f"--autoscale-config {path}: {exc}") from None
    events_file = Path(config.events_file) if config.events_file else None
    if events_file is not None and events_file.exists():  # a bad one stops the start; later, it is logged
        try:
            decode_events(events_file.read_bytes())
        except (OSError, msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            raise ValueError(f"--autoscale-config {path}: events_file {events_file}: {exc}") from None
    return config


def _agent_factory(
    args: argparse.Namespace, platform: PixelfleetSettings, server: SignalingServer, matchmaker: Matchmaker, slots: int
) -> Callable[[str], Agent]:
    from gpu_agent.agent import Agent
    from gpu_agent.client import LocalMatchmakerClient
    from pixelfleet.up import local_agent_settings

    def make(host_id: str) -> Agent:
        settings = local_agent_settings(args, platform, server, host_id=host_id, slots=slots, streamer_id="{host}-{n}")
        return Agent(settings, LocalMatchmakerClient(matchmaker))

    return make


async def start_autoscaler(
    args: argparse.Namespace, platform: PixelfleetSettings, server: SignalingServer, matchmaker: Matchmaker
) -> Controller:
    config = load_local_config(args.autoscale_config)
    if args.autoscale_log:
        config = msgspec.structs.replace(config, decision_log=args.autoscale_log)
    provider = LocalProvider(_agent_factory(args, platform, server, matchmaker, config.policy.slots_per_host))
    events = tuple(e.event() for e in config.events)
    scaler = Scaler(config.policy, ForecastSizer(DemandForecaster(config.forecast, events)))
    controller = Controller(
        InProcessObserver(matchmaker),
        provider,
        scaler,
        tenant=platform.agent.tenant,
        app=args.app,
        period_s=config.period_s,
        decision_log=config.decision_log,
        events_file=config.events_file,
        history_file=config.history_file,
    )
    controller.start()
    return controller


if TYPE_CHECKING:
    from collections.abc import Callable
