"""deploy/coturn/turnserver.conf.template: the secret scheme, the safety lines, and a
README that documents every variable (coturn itself runs it in
tests/integration/test_turn_coturn.py)."""

from __future__ import annotations

import string
from pathlib import Path

DEPLOY = Path(__file__).parents[2] / "deploy" / "coturn"


def template() -> string.Template:
    return string.Template((DEPLOY / "turnserver.conf.template").read_text())


def placeholders() -> set[str]:
    t = template()
    return {
        m.group("braced") or m.group("named")
        for m in t.pattern.finditer(t.template)
        if m.group("braced") or m.group("named")
    }


def active_lines() -> list[str]:
    return [
        line.strip() for line in template().template.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]


def test_matches_the_rest_secret_scheme() -> None:
    lines = active_lines()
    assert "use-auth-secret" in lines
    assert [line for line in lines if line.startswith("static-auth-secret=")] == [
        "static-auth-secret=${TURN_SECRET}",
        "static-auth-secret=${TURN_SECRET_PREVIOUS}",
    ]
    assert "realm=${TURN_REALM}" in lines and "fingerprint" in lines


def test_production_safety() -> None:
    lines = active_lines()
    assert not any("allow-loopback-peers" in line for line in lines)
    for needed in (
        "no-cli",
        "no-multicast-peers",
        "denied-peer-ip=169.254.0.0-169.254.255.255",
        "denied-peer-ip=10.0.0.0-10.255.255.255",
        "no-software-attribute",
    ):
        assert needed in lines


def test_readme_documents_every_variable() -> None:
    readme = (DEPLOY / "README.md").read_text()
    for name in placeholders():
        assert f"`{name}`" in readme or f"`{name} `" in readme or f"{name}`" in readme, name
