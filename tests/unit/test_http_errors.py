"""The matchmaker's HTTP error codes come from one explicit table that lists every store error."""

from __future__ import annotations

import importlib
import pkgutil

import matchmaker
from matchmaker.http import STORE_ERRORS, store_error_reply
from matchmaker.store import StoreError, UnknownHost


def _all_subclasses(cls: type[StoreError]) -> set[type[StoreError]]:
    found: set[type[StoreError]] = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_all_subclasses(sub)}
    return found


def test_every_store_error_has_an_explicit_status_and_code() -> None:
    # Import every matchmaker module, so a StoreError defined anywhere in it is seen.
    for module in pkgutil.walk_packages(matchmaker.__path__, "matchmaker."):
        importlib.import_module(module.name)
    ours = {cls for cls in _all_subclasses(StoreError) if cls.__module__.startswith("matchmaker.")}
    assert len(ours) >= 6  # the walk found them
    missing = {cls.__qualname__ for cls in ours if cls not in STORE_ERRORS}
    assert not missing, f"add these to matchmaker.http.STORE_ERRORS: {sorted(missing)}"


def test_the_codes_clients_already_see_are_kept() -> None:
    assert {cls.__name__: reply for cls, reply in STORE_ERRORS.items()} == {
        "StoreError": (400, "store_error"),
        "UnknownHost": (404, "unknown_host"),
        "UnknownApp": (404, "unknown_app"),
        "UnknownSession": (404, "unknown_session"),
        "SessionEnded": (410, "session_ended"),
        "HostConflict": (409, "host_conflict"),
        "QueueFull": (429, "queue_full"),
        "BackendUnavailable": (503, "backend_unavailable"),
        "NotReplicated": (503, "backend_unavailable"),  # a client retries it as any 503
    }


def test_an_unlisted_subclass_answers_as_its_nearest_listed_parent() -> None:
    class GoneHost(UnknownHost):
        pass

    assert store_error_reply(GoneHost("gone")) == (404, "unknown_host")
    assert store_error_reply(StoreError("bad")) == (400, "store_error")
