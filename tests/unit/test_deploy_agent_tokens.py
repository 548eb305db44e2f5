"""The agent-token Lambda (deploy/cdk/pixelfleet_deploy/agent_tokens_fn/handler.py) against
moto's SSM and Secrets Manager, and the matchmaker's own agent-token checks.

moto has no ``complete_lifecycle_action`` (it answers NotImplemented), so the Auto Scaling
client is a real botocore client under botocore's Stubber, which checks the call's
parameters against the service model and records it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import jwt
import pytest
from aiohttp.test_utils import make_mocked_request
from botocore.stub import Stubber  # type: ignore[import-untyped]  # botocore ships no annotations
from moto import mock_aws
from pixelfleet_deploy.agent_tokens_fn.handler import (
    INSTANCE_TAG,
    LAUNCHING,
    TERMINATING,
    Clients,
    Settings,
    handle,
    mint_agent_token,
)

from matchmaker import guard
from matchmaker.auth import Refused, verify_agent_token
from matchmaker.auth import mint_agent_token as pixelfleet_mint
from matchmaker.config import MatchmakerSettings

REGION = "us-east-1"
KEY = "k" * 48  # what the stack's secret generates: 48 letters and digits
HOST = "i-0123456789abcdef0"
OTHER_HOST = "i-0fedcba9876543210"
GROUPS = ("pixelfleet-test-default-on-demand", "pixelfleet-test-default-spot")
PATH = "/pixelfleet/test/agent-tokens/default"


@pytest.fixture
def aws() -> Iterator[tuple[Settings, Clients, Stubber]]:
    with mock_aws():
        secretsmanager = boto3.client("secretsmanager", region_name=REGION)
        secret_arn = secretsmanager.create_secret(Name="agent-key", SecretString=KEY)["ARN"]
        kms_key = boto3.client("kms", region_name=REGION).create_key()["KeyMetadata"]["Arn"]
        autoscaling = boto3.client("autoscaling", region_name=REGION)
        settings = Settings(
            key_secret_arn=secret_arn,
            parameter_path=PATH,
            tenants=("acme",),
            ttl_s=3600,
            kms_key_id=kms_key,
            groups=frozenset(GROUPS),
            instance_arn_prefix=f"arn:aws:ec2:{REGION}:123456789012:instance/",
        )
        with Stubber(autoscaling) as stubber:
            yield settings, Clients(boto3.client("ssm", region_name=REGION), secretsmanager, autoscaling), stubber


def _event(transition: str, group: str = GROUPS[0], host: str = HOST, **extra: str) -> dict[str, Any]:
    hook = "pixelfleet-agent-token-launch" if transition == LAUNCHING else "pixelfleet-agent-token-terminate"
    detail = {
        "LifecycleActionToken": "87654321-4321-4321-4321-210987654321",
        "AutoScalingGroupName": group,
        "LifecycleHookName": hook,
        "EC2InstanceId": host,
        "LifecycleTransition": transition,
        "Origin": "EC2",
        "Destination": "AutoScalingGroup",
        **extra,
    }
    kind = "launch" if transition == LAUNCHING else "terminate"
    return {"source": "aws.autoscaling", "detail-type": f"EC2 Instance-{kind} Lifecycle Action", "detail": detail}


def _expect_completion(stubber: Stubber, event: dict[str, Any]) -> None:
    detail = event["detail"]
    stubber.add_response(
        "complete_lifecycle_action",
        {},
        {
            "LifecycleHookName": detail["LifecycleHookName"],
            "AutoScalingGroupName": detail["AutoScalingGroupName"],
            "LifecycleActionToken": detail["LifecycleActionToken"],
            "LifecycleActionResult": "CONTINUE",
            "InstanceId": detail["EC2InstanceId"],
        },
    )


def _agent_request(token: str) -> Any:
    return make_mocked_request("POST", "/api/v1/hosts", headers={"Authorization": f"Bearer {token}"})


def test_launch_mints_a_token_the_matchmaker_accepts_for_that_host_and_tenant_only(
    aws: tuple[Settings, Clients, Stubber],
) -> None:
    settings, clients, stubber = aws
    event = _event(LAUNCHING)
    _expect_completion(stubber, event)
    assert handle(event, settings, clients) == "minted"
    stubber.assert_no_pending_responses()

    parameter = clients.ssm.get_parameter(Name=f"{PATH}/{HOST}", WithDecryption=True)["Parameter"]
    assert parameter["Type"] == "SecureString"
    tags = clients.ssm.list_tags_for_resource(ResourceType="Parameter", ResourceId=f"{PATH}/{HOST}")["TagList"]
    assert {"Key": INSTANCE_TAG, "Value": f"arn:aws:ec2:{REGION}:123456789012:instance/{HOST}"} in tags
    token = parameter["Value"]

    grant = verify_agent_token(KEY, token)  # the matchmaker's own verifier
    assert (grant.host_id, grant.tenants) == (HOST, frozenset({"acme"}))
    mm = MatchmakerSettings(agent_key_secret=KEY)
    assert guard.agent(_agent_request(token), mm, HOST).host_id == HOST
    with pytest.raises(Refused) as other:  # the route's check: another host's id is refused (audited)
        guard.agent(_agent_request(token), mm, OTHER_HOST)
    assert (other.value.status, other.value.code) == (403, "forbidden")
    with pytest.raises(Refused):
        verify_agent_token("x" * 48, token)  # and only under this key


def test_the_lambda_token_is_what_pixelfleet_agent_token_mints() -> None:
    """Same header, claims and signature scheme as ``matchmaker.auth.mint_agent_token``."""
    ours = mint_agent_token(KEY, host_id=HOST, tenants=["b", "a", "a"], ttl_s=60, now=1000)
    theirs = pixelfleet_mint(KEY, host_id=HOST, tenants=["b", "a", "a"], ttl_s=60, now=1000)
    assert jwt.get_unverified_header(ours) == jwt.get_unverified_header(theirs)
    decode: dict[str, Any] = {"algorithms": ["HS256"], "audience": "pixelfleet-agent", "options": {"verify_exp": False}}
    mine, pf = jwt.decode(ours, KEY, **decode), jwt.decode(theirs, KEY, **decode)
    assert mine.pop("jti") != pf.pop("jti")
    assert mine == pf
    with pytest.raises(Refused) as old:
        verify_agent_token(KEY, ours)  # expired long ago: the verifier checks its exp
    assert old.value.code == "token_expired"
    with pytest.raises(ValueError, match="host id"):
        mint_agent_token(KEY, host_id=HOST, tenants=[], ttl_s=60)


def test_a_warm_pool_host_entering_service_gets_a_fresh_token_under_its_tag(
    aws: tuple[Settings, Clients, Stubber],
) -> None:
    settings, clients, stubber = aws
    warming = _event(LAUNCHING, Destination="WarmPool")
    entering = _event(LAUNCHING, Origin="WarmPool")
    for event in (warming, entering):
        _expect_completion(stubber, event)
    handle(warming, settings, clients, now=1000)
    first = clients.ssm.get_parameter(Name=f"{PATH}/{HOST}", WithDecryption=True)["Parameter"]["Value"]
    handle(entering, settings, clients)
    second = clients.ssm.get_parameter(Name=f"{PATH}/{HOST}", WithDecryption=True)["Parameter"]
    assert second["Value"] != first and second["Version"] == 2
    assert verify_agent_token(KEY, second["Value"]).host_id == HOST
    tags = clients.ssm.list_tags_for_resource(ResourceType="Parameter", ResourceId=f"{PATH}/{HOST}")["TagList"]
    assert [t["Value"] for t in tags if t["Key"] == INSTANCE_TAG] == [settings.instance_arn_prefix + HOST]


def test_terminate_deletes_the_token_but_a_return_to_the_warm_pool_keeps_it(
    aws: tuple[Settings, Clients, Stubber],
) -> None:
    settings, clients, stubber = aws
    launch = _event(LAUNCHING, group=GROUPS[1])  # the Spot group
    to_warm_pool = _event(TERMINATING, group=GROUPS[1], Origin="AutoScalingGroup", Destination="WarmPool")
    gone = _event(TERMINATING, group=GROUPS[1], Origin="AutoScalingGroup", Destination="EC2")
    for event in (launch, to_warm_pool, gone, gone):
        _expect_completion(stubber, event)
    handle(launch, settings, clients)
    assert handle(to_warm_pool, settings, clients) == "kept"
    clients.ssm.get_parameter(Name=f"{PATH}/{HOST}")
    assert handle(gone, settings, clients) == "deleted"
    with pytest.raises(clients.ssm.exceptions.ParameterNotFound):
        clients.ssm.get_parameter(Name=f"{PATH}/{HOST}")
    assert handle(gone, settings, clients) == "deleted"  # a retried event: already gone is fine
    stubber.assert_no_pending_responses()


@pytest.mark.parametrize(
    ("group", "host"),
    [("someone-elses-group", HOST), (GROUPS[0], "i-../../other-pool/i-0123456789abcdef0")],
)
def test_events_of_other_groups_and_odd_instance_ids_are_refused_before_anything_is_written(
    aws: tuple[Settings, Clients, Stubber], group: str, host: str
) -> None:
    settings, clients, _ = aws
    with pytest.raises(ValueError):
        handle(_event(LAUNCHING, group=group, host=host), settings, clients)
    assert clients.ssm.describe_parameters()["Parameters"] == []


def test_settings_come_from_the_environment_the_stack_sets() -> None:
    env = {
        "AGENT_KEY_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:k",
        "PARAMETER_PATH": PATH + "/",
        "TENANTS": "acme,beta",
        "TOKEN_TTL_S": "3600",
        "KMS_KEY_ID": "arn:aws:kms:us-east-1:123456789012:key/k",
        "GROUP_NAMES": ",".join(GROUPS),
        "INSTANCE_ARN_PREFIX": "arn:aws:ec2:us-east-1:123456789012:instance/",
    }
    settings = Settings.from_env(env)
    assert settings.parameter_path == PATH and settings.tenants == ("acme", "beta")
    assert settings.groups == frozenset(GROUPS) and settings.ttl_s == 3600
