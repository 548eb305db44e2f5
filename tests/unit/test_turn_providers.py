"""Providers behind one interface: static, rest-secret, aws-kvs.

The aws-kvs provider is tested with botocore's ``Stubber`` against real botocore
clients (so requests and responses are checked against the service models) and the
documented response shapes of ``GetSignalingChannelEndpoint`` and
``GetIceServerConfig``: moto does not implement Kinesis Video signalling channels or
``kinesis-video-signaling`` at all (moto 5.2 answers 404), so it cannot be used.
"""

from __future__ import annotations

import asyncio
from typing import Any

import botocore.session  # type: ignore[import-untyped]  # botocore ships no annotations
import pytest
from botocore.stub import Stubber  # type: ignore[import-untyped]  # botocore ships no annotations

from turn.config import Provider, TurnSettings
from turn.credentials import verify
from turn.providers import (
    AwsKvsProvider,
    IceServerProvider,
    RestSecretProvider,
    StaticProvider,
    build_provider,
)

NOW = 1_795_809_212.0
URLS = ("stun:turn.example:3478", "turn:turn.example:3478?transport=udp", "turns:turn.example:443?transport=tcp")
ARN = "arn:aws:kinesisvideo:eu-west-1:123456789012:channel/ps-relay/1700000000000"
HTTPS = "https://r-0a1b2c3d.kinesisvideo.eu-west-1.amazonaws.com"


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_rest_secret_signs_with_the_newest_secret() -> None:
    provider = RestSecretProvider(URLS, ["new", "old"], clock=Clock())
    grant = provider.ice_servers("Player3", 600)
    assert grant.expires_at == int(NOW) + 600
    stun, turn = grant.servers
    assert stun == {"urls": ["stun:turn.example:3478"]}
    assert turn["urls"] == list(URLS[1:]) and turn["username"] == f"{int(NOW) + 600}:Player3"
    assert verify(["new"], turn["username"], turn["credential"], NOW)
    assert not verify(["old"], turn["username"], turn["credential"], NOW)


def test_rest_secret_keeps_the_separator_out_of_the_user() -> None:
    grant = RestSecretProvider(URLS, ["s"], clock=Clock()).ice_servers("odd:id", 60)
    assert grant.servers[1]["username"].endswith(":odd_id")


def test_rest_secret_repr_hides_secrets() -> None:
    assert "hunter2" not in repr(RestSecretProvider(URLS, ["hunter2"]))


def test_static_provider() -> None:
    grant = StaticProvider(URLS, "dev", "devpass").ice_servers("Player0", 600)
    assert grant.expires_at is None
    assert grant.servers[1] == {"urls": list(URLS[1:]), "username": "dev", "credential": "devpass"}
    bare = StaticProvider(["stun:a", "turn:b"], None, None).ice_servers("x", 1)
    assert bare.servers == [{"urls": ["stun:a", "turn:b"]}]


def test_build_provider_by_name() -> None:
    assert build_provider(TurnSettings()) is None
    kinds: dict[Provider, type[IceServerProvider]] = {
        "static": StaticProvider,
        "rest-secret": RestSecretProvider,
        "aws-kvs": AwsKvsProvider,
    }
    for name, cls in kinds.items():
        settings = TurnSettings(provider=name, urls=URLS, secrets=("s",), aws_region="eu-west-1", aws_channel_arn=ARN)
        provider = build_provider(settings)
        assert isinstance(provider, cls)
        assert provider is not None
        _: IceServerProvider = provider  # satisfies the Protocol


# --- aws-kvs with botocore's Stubber ---------------------------------------------------

ENDPOINT_RESPONSE = {
    "ResourceEndpointList": [
        {"Protocol": "WSS", "ResourceEndpoint": "wss://m-0a1b2c3d.kinesisvideo.eu-west-1.amazonaws.com"},
        {"Protocol": "HTTPS", "ResourceEndpoint": HTTPS},
    ]
}


def ice_response(tag: str, ttl: int = 300) -> dict[str, Any]:
    """The documented GetIceServerConfig output: IceServerList of {Uris, Username, Password, Ttl}."""
    return {
        "IceServerList": [
            {
                "Uris": [
                    f"turn:35-1-2-3.t-{tag}.kinesisvideo.eu-west-1.amazonaws.com:443?transport=udp",
                    f"turns:35-1-2-3.t-{tag}.kinesisvideo.eu-west-1.amazonaws.com:443?transport=udp",
                    f"turns:35-1-2-3.t-{tag}.kinesisvideo.eu-west-1.amazonaws.com:443?transport=tcp",
                ],
                "Username": f"1795809512:{tag}-user",
                "Password": f"{tag}-pass",
                "Ttl": ttl,
            },
            {
                "Uris": [f"turn:35-4-5-6.t-{tag}.kinesisvideo.eu-west-1.amazonaws.com:443?transport=udp"],
                "Username": f"1795809512:{tag}-user2",
                "Password": f"{tag}-pass2",
                "Ttl": ttl,
            },
        ]
    }


ICE_PARAMS = {"ChannelARN": ARN, "ClientId": "pixelfleet", "Service": "TURN"}


class StubbedAws:
    """A boto3.client-like factory returning real botocore clients with Stubbers."""

    def __init__(self) -> None:
        self.plans: dict[str, list[tuple[str, Any, dict[str, Any] | None]]] = {
            "kinesisvideo": [],
            "kinesis-video-signaling": [],
        }
        self.created: list[tuple[str, dict[str, Any]]] = []
        self.stubbers: list[Stubber] = []

    def expect(self, service: str, operation: str, response: Any, params: dict[str, Any] | None = None) -> None:
        self.plans[service].append((operation, response, params))

    def __call__(self, service: str, **kwargs: Any) -> Any:
        self.created.append((service, kwargs))
        client = botocore.session.get_session().create_client(
            service, aws_access_key_id="testing", aws_secret_access_key="testing", **kwargs
        )
        stubber = Stubber(client)
        for operation, response, params in self.plans[service]:
            if isinstance(response, Exception):
                stubber.add_client_error(
                    operation, service_error_code=str(response), http_status_code=403, expected_params=params
                )
            else:
                stubber.add_response(operation, response, params)
        stubber.activate()
        self.stubbers.append(stubber)
        return client

    def assert_done(self) -> None:
        for stubber in self.stubbers:
            stubber.assert_no_pending_responses()


@pytest.fixture
def aws() -> StubbedAws:
    stub = StubbedAws()
    stub.expect(
        "kinesisvideo",
        "get_signaling_channel_endpoint",
        ENDPOINT_RESPONSE,
        {"ChannelARN": ARN, "SingleMasterChannelEndpointConfiguration": {"Protocols": ["HTTPS"], "Role": "VIEWER"}},
    )
    return stub


def kvs(aws: StubbedAws, clock: Clock) -> AwsKvsProvider:
    return AwsKvsProvider("eu-west-1", ARN, refresh_margin_s=60, client_factory=aws, clock=clock)


STUN = {"urls": ["stun:stun.kinesisvideo.eu-west-1.amazonaws.com:443"]}


async def test_kvs_fetches_the_channel_endpoint_then_ice_servers(aws: StubbedAws) -> None:
    aws.expect("kinesis-video-signaling", "get_ice_server_config", ice_response("a"), ICE_PARAMS)
    clock = Clock()
    provider = kvs(aws, clock)
    assert provider.ice_servers("Player0", 600).servers == [STUN]  # nothing fetched yet: STUN only
    await provider.refresh()
    grant = provider.ice_servers("Player0", 600)
    assert grant.servers[0] == STUN
    assert grant.servers[1] == {
        "urls": ice_response("a")["IceServerList"][0]["Uris"],
        "username": "1795809512:a-user",
        "credential": "a-pass",
    }
    assert len(grant.servers) == 3 and grant.expires_at == int(NOW) + 300
    # the signalling client talks to the channel's own HTTPS endpoint
    assert aws.created == [
        ("kinesisvideo", {"region_name": "eu-west-1"}),
        ("kinesis-video-signaling", {"region_name": "eu-west-1", "endpoint_url": HTTPS}),
    ]
    aws.assert_done()


async def test_kvs_caches_until_shortly_before_expiry_then_refetches(aws: StubbedAws) -> None:
    aws.expect("kinesis-video-signaling", "get_ice_server_config", ice_response("a"), ICE_PARAMS)
    aws.expect("kinesis-video-signaling", "get_ice_server_config", ice_response("b"), ICE_PARAMS)
    clock = Clock()
    provider = kvs(aws, clock)
    await provider.refresh()
    clock.now = NOW + 239  # 300 s credentials, 60 s margin: still handed out
    assert provider.ice_servers("p", 1).servers[1]["username"] == "1795809512:a-user"
    clock.now = NOW + 240  # within the margin: never hand out nearly-dead credentials
    assert provider.ice_servers("p", 1).servers == [STUN]
    assert provider._refreshing is not None  # the connect path kicked one background refetch
    assert provider.ice_servers("p", 1).servers == [STUN]  # ... and only one
    assert await provider._refreshing
    assert provider.ice_servers("p", 1).servers[1]["username"] == "1795809512:b-user"
    assert sum(service == "kinesisvideo" for service, _ in aws.created) == 1  # endpoint fetched once
    aws.assert_done()


async def test_kvs_failure_leaves_stun_only_and_is_retried(aws: StubbedAws) -> None:
    aws.expect("kinesis-video-signaling", "get_ice_server_config", Exception("AccessDeniedException"), ICE_PARAMS)
    aws.expect("kinesis-video-signaling", "get_ice_server_config", ice_response("c"), ICE_PARAMS)
    clock = Clock()
    provider = kvs(aws, clock)
    await provider.start()  # first fetch fails: logged, start-up goes on
    try:
        assert provider.ice_servers("p", 1).servers == [STUN]
        assert provider._refreshing is None  # a kick within 5 s of the last attempt is skipped
        clock.now += 6
        provider.ice_servers("p", 1)
        assert provider._refreshing is not None and await provider._refreshing
        assert provider.ice_servers("p", 1).servers[1]["username"] == "1795809512:c-user"
    finally:
        await provider.aclose()
    aws.assert_done()


async def test_kvs_empty_answer_is_a_failure(aws: StubbedAws) -> None:
    aws.expect("kinesis-video-signaling", "get_ice_server_config", {"IceServerList": []}, ICE_PARAMS)
    provider = kvs(aws, Clock())
    with pytest.raises(ValueError, match="no ICE servers"):
        await provider.refresh()


async def test_kvs_start_and_aclose_run_the_background_refresh(aws: StubbedAws) -> None:
    aws.expect("kinesis-video-signaling", "get_ice_server_config", ice_response("a"), ICE_PARAMS)
    provider = kvs(aws, Clock())
    await provider.start()
    assert provider._loop_task is not None and not provider._loop_task.done()
    await provider.aclose()
    assert provider._loop_task is None
    await asyncio.sleep(0)
