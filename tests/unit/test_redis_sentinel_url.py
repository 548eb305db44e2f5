"""``?sentinel=<name>`` state URLs: what is read from them, and the clear errors."""

from __future__ import annotations

import pytest

from pixelfleet.redis_sentinel import SentinelTarget, parse_sentinel_url


def test_plain_urls_name_no_sentinel() -> None:
    assert parse_sentinel_url("redis://127.0.0.1:6379/0") is None
    assert parse_sentinel_url("redis://h:1/0?cluster=1") is None


def test_sentinels_service_db_and_credentials() -> None:
    target = parse_sentinel_url("rediss://u:p%40ss@s1:26380,s2,[::1]:26381/3?sentinel=pf")
    assert target == SentinelTarget(
        sentinels=(("s1", 26380), ("s2", 26379), ("::1", 26381)),
        service="pf",
        db=3,
        username="u",
        password="p@ss",
        ssl=True,
    )
    assert parse_sentinel_url("redis://s1?sentinel=pf") == SentinelTarget((("s1", 26379),), "pf")


@pytest.mark.parametrize(
    "url",
    [
        "unix:///tmp/r.sock?sentinel=pf",
        "redis://s1/0?sentinel=",
        "redis://s1/0?sentinel=a&sentinel=b",
        "redis://s1/0?sentinel=pf&socket_timeout=1",
        "redis:///0?sentinel=pf",
        "redis://s1:port/0?sentinel=pf",
        "redis://s1/x?sentinel=pf",
    ],
)
def test_bad_sentinel_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse_sentinel_url(url)
