"""The published contract is the served one: the OpenAPI document validates, and it lists
exactly the routes the API app serves, each body from the models the handlers use."""

from __future__ import annotations

from typing import Any, get_args

import msgspec
import pytest
from aiohttp import web
from openapi_spec_validator import validate

from matchmaker import models
from matchmaker.config import MatchmakerSettings
from matchmaker.http import HANDLERS, STORE_ERRORS, create_app
from matchmaker.openapi import ERROR_STATUSES, ROUTES, build_document
from matchmaker.server import build_matchmaker


@pytest.fixture
def document() -> dict[str, Any]:
    # Through JSON, as a client receives it.
    doc: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(build_document()))
    return doc


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    validate(document)


def _served(app: web.Application) -> set[tuple[str, str]]:
    served = set()
    for resource in app.router.resources():
        info = resource.get_info()
        path = info.get("path") or info.get("formatter")
        assert isinstance(path, str)
        for route in resource:
            if route.method != "HEAD":
                served.add((route.method, path))
    return served


def test_every_served_route_is_documented_and_every_documented_route_served(document: dict[str, Any]) -> None:
    mm = build_matchmaker(MatchmakerSettings(session_token_secret="s" * 32))
    served = _served(create_app(mm))
    documented = {(method.upper(), path) for path, ops in document["paths"].items() for method in ops}
    assert served == documented
    assert len(served) == len(ROUTES) == len(HANDLERS)


def test_each_operation_declares_its_credential_bodies_and_errors(document: dict[str, Any]) -> None:
    schemes = set(document["components"]["securitySchemes"])
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            where = f"{method.upper()} {path}"
            for requirement in op["security"]:
                assert set(requirement) <= schemes, where
            for status, reply in op["responses"].items():
                assert reply["content"], where
                if int(status) >= 400:
                    assert reply["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/ErrorBody"
                    }, where
            if "requestBody" in op:
                assert {"400", "413"} <= set(op["responses"]), where
            params = {p["name"] for p in op.get("parameters", [])}
            assert params == {part[1:-1] for part in path.split("/") if part.startswith("{")}, where


def test_the_schemas_are_the_models(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert sorted(schemas["SlotState"]["enum"]) == sorted(s.value for s in models.SlotState)
    assert sorted(schemas["EndReason"]["enum"]) == sorted(r.value for r in models.EndReason)
    assert set(schemas["HostRegistration"]["properties"]) == set(models.HostRegistration.__struct_fields__)
    assert schemas["HostRegistration"]["additionalProperties"] is False  # unknown fields are refused
    assert set(schemas["TicketReply"]["discriminator"]["mapping"]) == {
        "assigned",
        "waiting",
        "served",
        "cancelled",
        "expired",
    }
    assert sorted(schemas["ErrorBody"]["properties"]["error"]["enum"]) == sorted(get_args(models.ErrorCode))
    events = document["paths"]["/queue/{ticket_id}/events"]["get"]["responses"]["200"]["content"]
    assert events["text/event-stream"]["x-event-data"] == {"$ref": "#/components/schemas/TicketReply"}


def test_every_error_code_and_status_is_declared() -> None:
    codes = set(get_args(models.ErrorCode))
    assert {code for _, code in STORE_ERRORS.values()} <= codes
    assert {status for status, _ in STORE_ERRORS.values()} <= set(ERROR_STATUSES)
    for route in ROUTES:
        assert set(route.errors) <= set(ERROR_STATUSES), route.operation
