"""Per-host agent tokens for auto-scaled GPU hosts, minted outside the hosts (issue 11).

A GPU host learns its id (the EC2 instance id) only at boot, and the agent key must not be
on the hosts: a host that held it could mint a token for any host and tenant. So the
groups' lifecycle hooks send every launch and termination to this function (through
EventBridge), which:

- on launch: mints the host's token (``pixelfleet agent-token --host <instance id>
  --tenant <pool's tenant>``, same claims and key) and stores it as a SecureString
  parameter ``<path>/<instance id>``, tagged with the instance's ARN so that only that
  instance's role session may read it; then lets the launch go on;
- on termination: deletes the parameter (unless the host only returns to the warm pool,
  where it will boot again), then lets the termination go on.

It runs on the Lambda Python runtime with the standard library and boto3 only, so the
token is written here with ``hmac`` and ``json``: the same compact HS256 JWT as
``matchmaker.auth.mint_agent_token`` (tests/unit/test_deploy_agent_tokens.py holds the
two together with the matchmaker's own verifier). The token never appears in a log line.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ISSUER = "pixelfleet"
AGENT_AUDIENCE = "pixelfleet-agent"
INSTANCE_TAG = "pixelfleet:instance-arn"
LAUNCHING = "autoscaling:EC2_INSTANCE_LAUNCHING"
TERMINATING = "autoscaling:EC2_INSTANCE_TERMINATING"
_INSTANCE_ID = re.compile(r"^i-[0-9a-f]{8,17}$")


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def mint_agent_token(key: str, *, host_id: str, tenants: list[str], ttl_s: int, now: float | None = None) -> str:
    """One host's agent token: what ``pixelfleet agent-token`` prints for that host and those tenants."""
    if not host_id or not tenants or not all(tenants):
        raise ValueError("an agent token names a host id and at least one tenant")
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": ISSUER,
        "aud": AGENT_AUDIENCE,
        "sub": f"host:{host_id}",
        "hid": host_id,
        "tenants": sorted(set(tenants)),
        "iat": issued,
        "exp": issued + ttl_s,
        "jti": secrets.token_urlsafe(12),
    }
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    signed = header + b"." + _b64(json.dumps(claims, separators=(",", ":")).encode())
    return (signed + b"." + _b64(hmac.new(key.encode(), signed, hashlib.sha256).digest())).decode()


@dataclass(frozen=True)
class Settings:
    """The function's environment, set by the CDK stack (``agent_tokens.py``)."""

    key_secret_arn: str  # AGENT_KEY_SECRET_ARN: the matchmaker's PIXELFLEET_MATCHMAKER__AGENT_KEY_SECRET
    parameter_path: str  # PARAMETER_PATH: /pixelfleet/<stage>/agent-tokens/<pool>
    tenants: tuple[str, ...]  # TENANTS: comma-separated
    ttl_s: int  # TOKEN_TTL_S
    kms_key_id: str  # KMS_KEY_ID: the SecureString parameters' key
    groups: frozenset[str]  # GROUP_NAMES: the pool's Auto Scaling groups, comma-separated
    instance_arn_prefix: str  # INSTANCE_ARN_PREFIX: arn:<partition>:ec2:<region>:<account>:instance/

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        return cls(
            key_secret_arn=env["AGENT_KEY_SECRET_ARN"],
            parameter_path=env["PARAMETER_PATH"].rstrip("/"),
            tenants=tuple(t for t in env["TENANTS"].split(",") if t),
            ttl_s=int(env["TOKEN_TTL_S"]),
            kms_key_id=env["KMS_KEY_ID"],
            groups=frozenset(g for g in env["GROUP_NAMES"].split(",") if g),
            instance_arn_prefix=env["INSTANCE_ARN_PREFIX"],
        )


@dataclass(frozen=True)
class Clients:
    """boto3 clients (injected, so the tests give moto's and a stubbed one)."""

    ssm: Any
    secretsmanager: Any
    autoscaling: Any


def handle(event: Mapping[str, Any], settings: Settings, clients: Clients, *, now: float | None = None) -> str:
    """Act on one lifecycle event; return what was done (``minted``, ``deleted``, ``kept``)."""
    detail = event["detail"]
    instance_id, group = str(detail["EC2InstanceId"]), str(detail["AutoScalingGroupName"])
    transition = detail["LifecycleTransition"]
    if group not in settings.groups:
        raise ValueError(f"group {group!r} is not one of this pool's {sorted(settings.groups)}")
    if not _INSTANCE_ID.match(instance_id):
        raise ValueError(f"not an instance id: {instance_id!r}")
    name = f"{settings.parameter_path}/{instance_id}"
    if transition == LAUNCHING:
        _store(name, instance_id, settings, clients, now)
        done = "minted"
    elif transition == TERMINATING:
        # Back to the warm pool (reuse on scale-in): the host boots again with the same id.
        if detail.get("Destination") == "WarmPool":
            done = "kept"
        else:
            try:
                clients.ssm.delete_parameter(Name=name)
            except clients.ssm.exceptions.ParameterNotFound:
                pass
            done = "deleted"
    else:
        raise ValueError(f"unexpected lifecycle transition {transition!r}")
    clients.autoscaling.complete_lifecycle_action(
        LifecycleHookName=detail["LifecycleHookName"],
        AutoScalingGroupName=group,
        LifecycleActionToken=detail["LifecycleActionToken"],
        LifecycleActionResult="CONTINUE",
        InstanceId=instance_id,
    )
    print(json.dumps({"event": "agent_token", "action": done, "host_id": instance_id, "group": group}))
    return done


def _store(name: str, instance_id: str, settings: Settings, clients: Clients, now: float | None) -> None:
    key = clients.secretsmanager.get_secret_value(SecretId=settings.key_secret_arn)["SecretString"]
    token = mint_agent_token(key, host_id=instance_id, tenants=list(settings.tenants), ttl_s=settings.ttl_s, now=now)
    tags = [{"Key": INSTANCE_TAG, "Value": settings.instance_arn_prefix + instance_id}]
    common = {
        "Name": name,
        "Value": token,
        "Type": "SecureString",
        "KeyId": settings.kms_key_id,
        "Description": f"PIXELFLEET_AGENT_TOKEN of {instance_id}",
    }
    try:
        clients.ssm.put_parameter(**common, Tags=tags)
    except clients.ssm.exceptions.ParameterAlreadyExists:
        # A warm-pool host entering service gets a fresh token; SSM takes no tags with Overwrite.
        clients.ssm.put_parameter(**common, Overwrite=True)
        clients.ssm.add_tags_to_resource(ResourceType="Parameter", ResourceId=name, Tags=tags)


_clients: Clients | None = None


def handler(event: Mapping[str, Any], context: Any) -> str:
    """The Lambda entry point (``handler.handler``)."""
    global _clients
    if _clients is None:
        import boto3

        _clients = Clients(boto3.client("ssm"), boto3.client("secretsmanager"), boto3.client("autoscaling"))
    return handle(event, Settings.from_env(os.environ), _clients)
