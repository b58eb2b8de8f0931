"""The least-privileged token for each call, from the api's own route table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.api.routes import routes
from orchestrator.cli import roles
from orchestrator.cli.client import Client
from orchestrator.cli.credentials import Credentials
from orchestrator.cli.roles import RouteRole, route_for, route_roles
from schemas.api import Role

VIEW, OPER, ADM = "tok-viewer", "tok-operator", "tok-admin"
ALL = Credentials(by_role={Role.VIEWER: VIEW, Role.OPERATOR: OPER, Role.ADMIN: ADM})


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    route_roles.cache_clear()


def _instance(template: str) -> str:
    """ADM concrete path of a template: each {param} filled in."""
    return roles._PARAM.sub("x1", template)


def test_every_route_of_the_api_resolves_to_its_own_role() -> None:
    for r in routes():
        found = route_for(r.method, _instance(r.path) + "?limit=5")
        assert found is not None, r.path
        assert (found.template, found.role) == (r.path, r.role), r.path


@pytest.mark.parametrize(
    ("method", "path", "token"),
    [
        ("GET", "/v1/jobs?state=running", VIEW),
        ("GET", "/v1/jobs/0b1c/stream", VIEW),
        ("HEAD", "/v1/queue", VIEW),
        ("POST", "/v1/jobs", OPER),
        ("POST", "/v1/jobs/0b1c/abort", OPER),
        ("POST", "/v1/alerts/a1/ack", OPER),
        ("POST", "/v1/hooks", ADM),
        ("DELETE", "/v1/hooks/h1", ADM),
        ("GET", "/healthz", ""),  # public: no token sent
        ("GET", "/v1/not-a-route", ADM),  # unknown to this CLI: the strongest, the api decides
    ],
)
def test_the_least_token_that_suffices_is_chosen(method: str, path: str, token: str) -> None:
    assert ALL.for_request(method, path) == token


def test_without_a_token_of_the_role_needed_the_next_stronger_or_the_strongest() -> None:
    viewer_admin = Credentials(by_role={Role.VIEWER: VIEW, Role.ADMIN: ADM})
    assert viewer_admin.for_request("POST", "/v1/jobs") == ADM
    viewer_operator = Credentials(by_role={Role.VIEWER: VIEW, Role.OPERATOR: OPER})
    assert viewer_operator.for_request("POST", "/v1/hooks") == OPER  # the api refuses: 403


def test_a_given_token_is_used_for_everything() -> None:
    creds = Credentials(fixed="mine", by_role={Role.VIEWER: VIEW})
    assert creds.for_request("GET", "/v1/jobs") == "mine"
    assert creds.for_request("POST", "/v1/hooks") == "mine"
    assert creds.stronger_than("mine") is None


def test_one_known_token_needs_no_route_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(roles, "route_roles", lambda: pytest.fail("table read"))
    assert Credentials(by_role={Role.ADMIN: ADM}).for_request("GET", "/v1/jobs") == ADM


def test_a_403_is_tried_again_with_each_stronger_token_only() -> None:
    assert ALL.stronger_than(VIEW) == OPER
    assert ALL.stronger_than(OPER) == ADM
    assert ALL.stronger_than(ADM) is None
    assert ALL.stronger_than("unknown") is None


def test_tokens_come_from_the_environment_over_the_details_file() -> None:
    state = {"admin_token": "old-admin", "tokens": {"viewer": "file-viewer", "admin": ADM}}
    env = {"VMORCH_TOKEN_VIEWER": "env-viewer", "VMORCH_TOKEN_OPERATOR": OPER}
    creds = Credentials.discover(None, env, state)
    assert creds.by_role == {Role.VIEWER: "env-viewer", Role.OPERATOR: OPER, Role.ADMIN: ADM}
    legacy = Credentials.discover(None, {}, {"admin_token": "old-admin"})
    assert legacy.by_role == {Role.ADMIN: "old-admin"}
    assert Credentials.discover("given", env, state).fixed == "given"


def test_the_client_keeps_its_one_token_interface() -> None:
    # the integration tests' Api: one token, used for every request
    client = Client("http://127.0.0.1:1/", "t0k")
    assert client.token == "t0k" and client.api_url == "http://127.0.0.1:1"
    assert client.credentials.for_request("POST", "/v1/hooks") == "t0k"


def test_the_derived_table_is_cached_and_rebuilt_when_the_api_changes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    first = route_roles()
    [cached] = (tmp_path / "cache" / "vmorch").glob("route-roles-*.json")
    # a second process reads the cache instead of importing the api
    route_roles.cache_clear()
    monkeypatch.setattr(roles, "_derive", lambda: pytest.fail("derived again"))
    assert route_roles() == first
    # an api file that changes makes another fingerprint, hence a new table
    route_roles.cache_clear()
    monkeypatch.setattr(roles, "_fingerprint", lambda: "changed")
    monkeypatch.setattr(roles, "_derive", lambda: [RouteRole("GET", "/x", Role.ADMIN)])
    assert route_roles() == (RouteRole("GET", "/x", Role.ADMIN),)
    assert cached.exists() and (cached.parent / "route-roles-changed.json").exists()


def test_the_lab_s_tokens_go_to_the_lab_s_api_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse
    import json

    from orchestrator.cli.context import Context
    from orchestrator.cli.output import Output
    from orchestrator.settings import Settings

    for name in ("VMORCH_API_URL", "VMORCH_TOKEN", "VMORCH_TOKEN_VIEWER"):
        monkeypatch.delenv(name, raising=False)
    details = {"api_url": "http://127.0.0.1:8080", "admin_token": ADM,
               "tokens": {"viewer": VIEW, "operator": OPER, "admin": ADM}}  # fmt: skip
    (tmp_path / "vmorch.json").write_text(json.dumps(details))

    def client_for(**args: str) -> Any:
        ctx = Context(Settings(lab_dir=tmp_path), argparse.Namespace(**args), Output(False))
        return ctx.client

    lab = client_for()
    assert lab.api_url == "http://127.0.0.1:8080"
    assert lab.credentials.for_request("GET", "/v1/jobs") == VIEW
    other = client_for(api="http://elsewhere:8080")
    assert other.credentials.by_role == {} and other.token == ""
    monkeypatch.setenv("VMORCH_TOKEN_VIEWER", "env-viewer")
    assert client_for(api="http://elsewhere:8080").token == "env-viewer"
