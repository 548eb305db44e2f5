"""``pixelfleet autoscale`` (the aws-asg autoscaler as its own process) against a real
matchmaker (``pixelfleet up``, read and drained over its admin API) and EC2 Auto Scaling and
SQS played by moto in this process: the minimum pool is launched on the On-Demand group
with its warm pool; a Spot interruption notice on the queue drains the host in the
matchmaker, and a later step terminates it."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from autoscale.run import main
from matchmaker.client import MatchmakerApi
from matchmaker.models import HostRegistration, SlotSpec
from pixelfleet.net import free_port
from tests.conftest import StartProcess
from tests.support.aws_asg import make_pool_groups

pytestmark = pytest.mark.integration

REGION = "us-east-1"


async def once(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """One control step of the command; its printed decision."""
    assert await asyncio.to_thread(main, [*argv, "--once"]) == 0
    decision: dict[str, Any] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return decision


async def test_autoscale_command_launches_and_drains_on_a_spot_notice(
    start_process: StartProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port, streamer = free_port(), free_port()
    env = {**os.environ, "PIXELFLEET_ADMIN_TOKEN": "aws-admin", "PIXELFLEET_AGENT_TOKEN": "aws-agent-token"}
    up = await start_process(
        "up", "--player-port", str(port), "--streamer-port", str(streamer), "--sfu-port", "-1",
        "--width", "160", "--height", "96", "--fps", "5",
        env=env, new_session=True,
    )  # fmt: skip
    await up.wait_for_port(port, timeout_s=60)
    for k, v in {
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_DEFAULT_REGION": REGION,
        "PIXELFLEET_ADMIN_TOKEN": "aws-admin",
    }.items():
        monkeypatch.setenv(k, v)
    url = f"http://127.0.0.1:{port}"
    admin = MatchmakerApi(url, admin_token="aws-admin")
    agent = MatchmakerApi(url, agent_token="aws-agent-token")
    with mock_aws():
        asg = make_pool_groups(REGION)
        sqs = boto3.client("sqs", region_name=REGION)
        queue = sqs.create_queue(QueueName="spot-notices")["QueueUrl"]
        config = tmp_path / "pool.json"
        config.write_text(
            json.dumps(
                {
                    "app": "game",
                    "aws": {
                        "on_demand_group": "pool-od",
                        "spot_group": "pool-spot",
                        "region": REGION,
                        "warm_pool_min": 1,
                        "notice_queue_url": queue,
                    },
                    "policy": {"min_hosts": 2, "max_hosts": 6},
                    "decision_log": str(tmp_path / "decisions.jsonl"),
                }
            )
        )
        argv = ["--matchmaker", url, "--config", str(config)]

        def group(name: str) -> dict[str, Any]:
            g: dict[str, Any] = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]
            return g

        try:
            d = await once(argv, capsys)
            assert d["launch"] == 2 and d["reason"] == "scale_out"  # the minimum pool
            assert group("pool-od")["DesiredCapacity"] == 2
            assert asg.describe_warm_pool(AutoScalingGroupName="pool-od")["WarmPoolConfiguration"]["MinSize"] == 1

            ids = sorted(i["InstanceId"] for i in group("pool-od")["Instances"])
            for iid in ids:  # each instance's agent registers under its instance id
                spec = SlotSpec(index=0, tenant="default", app="game", streamer_id=f"{iid}-0")
                await agent.register_host(
                    HostRegistration(host_id=iid, boot_id="b1", signaling_url="ws://127.0.0.1:1", slots=[spec])
                )
            warning = {
                "detail-type": "EC2 Spot Instance Interruption Warning",
                "source": "aws.ec2",
                "detail": {"instance-id": ids[0], "instance-action": "terminate"},
            }
            sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(warning))

            d = await once(argv, capsys)
            assert d["drain"] == [ids[0]] and d["terminate"] == [] and d["launch"] == 1
            listed = {h.host_id: h for h in await admin.hosts()}
            assert listed[ids[0]].draining and not listed[ids[1]].draining  # drained in the matchmaker
            assert ids[0] in {i["InstanceId"] for i in group("pool-od")["Instances"]}  # still running

            d = await once(argv, capsys)  # a fresh process: the matchmaker's record says draining
            assert d["terminate"] == [ids[0]]
            assert group("pool-od")["DesiredCapacity"] == 1  # decremented, not replaced
        finally:
            await admin.aclose()
            await agent.aclose()
    await up.stop()
    logged = [json.loads(line) for line in (tmp_path / "decisions.jsonl").read_text().splitlines()]
    assert [d["pool"] for d in logged] == ["default/game"] * 3


async def test_autoscale_command_refuses_a_bad_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "pool.json"
    config.write_text(json.dumps({"aws": {"on_demand_group": "od"}}))  # no spot_group
    monkeypatch.setenv("PIXELFLEET_ADMIN_TOKEN", "t")
    assert main(["--matchmaker", "http://127.0.0.1:9", "--config", str(config)]) == 2
    config.write_text(json.dumps({"aws": {"on_demand_group": "od", "spot_group": "sp"}}))
    monkeypatch.delenv("PIXELFLEET_ADMIN_TOKEN")
    assert main(["--matchmaker", "http://127.0.0.1:9", "--config", str(config)]) == 2
