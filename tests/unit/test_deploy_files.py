"""compose.yaml, the Dockerfile and the example inventory stay in step with the package and
with each other (docker compose itself is not run here: no daemon, no network)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.cli.main import build_parser
from orchestrator.settings import Settings
from schemas.inventory import Inventory

ROOT = Path(__file__).resolve().parents[2]
PASSWORD_VAR = "VMORCH_REDIS_PASSWORD"


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return loaded


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def vmorch_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services().items() if s["command"][0] == "vmorch"}


def example_inventory() -> Inventory:
    return Inventory.model_validate_json((ROOT / "deploy/inventory.example.json").read_text())


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def found(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    assert match is not None, pattern
    return match[1]


def args_of(name: str) -> Any:
    return build_parser().parse_args(services()[name]["command"][1:])


def running(command: str) -> dict[str, Any]:
    """The parsed arguments of each vmorch service that runs `command`, by service."""
    return {n: args_of(n) for n, s in vmorch_services().items() if s["command"][1] == command}


def test_every_compose_service_runs_a_command_the_package_has() -> None:
    commands = {name: args_of(name).cmd for name in vmorch_services()}
    assert {"api", "worker", "router", "agent", "inventory"} <= set(commands.values())


def test_the_api_and_the_routers_run_two_replicas_each_on_its_own_host_port() -> None:
    api, router = services()["api"], services()["router"]
    assert api["deploy"]["replicas"] == 2 and router["deploy"]["replicas"] == 2
    (port,) = api["ports"]
    ports = re.fullmatch(r"(\d+)-(\d+):8080", port)
    assert ports is not None, port  # a range of host ports: one for each replica
    assert int(ports[2]) - int(ports[1]) + 1 == api["deploy"]["replicas"]
    assert api["environment"]["VMORCH_API_PORT"] == "8080"
    assert api["environment"]["VMORCH_API_HOST"] == "0.0.0.0"
    assert "healthz" in " ".join(api["healthcheck"]["test"])


def test_one_worker_per_pool_and_one_agent_per_server_of_the_example_inventory() -> None:
    inv = example_inventory()
    workers = running("worker")
    assert set(workers) == {f"worker-{p.name}" for p in inv.pools}
    assert all(args.pool == [name.removeprefix("worker-")] for name, args in workers.items())
    agents = running("agent")
    assert set(agents) == {f"agent-{s.name}" for s in inv.servers}
    assert all(args.server == name.removeprefix("agent-") for name, args in agents.items())
    loaded = services()["inventory"]
    mounted = {v.split(":")[0]: v.split(":")[1] for v in loaded["volumes"]}
    assert mounted["./deploy/inventory.example.json"] == loaded["command"][-1]


def test_every_vmorch_service_reaches_the_one_redis_with_its_password() -> None:
    for name, svc in vmorch_services().items():
        url = svc["environment"]["VMORCH_REDIS_URL"]
        assert url.startswith(f"redis://:${{{PASSWORD_VAR}:?") and url.endswith("@redis:6379/0")
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy", name
    # the agents need the inventory (their server's libvirt URI) loaded first
    for name in running("agent"):
        after = services()[name]["depends_on"]
        assert after["inventory"]["condition"] == "service_completed_successfully"


def test_compose_redis_keeps_an_append_only_file_and_requires_the_password() -> None:
    redis = services()["redis"]
    script = redis["command"][-1]
    assert "--appendonly yes" in script and "--appendfsync everysec" in script
    assert any(v.endswith(":/data") for v in redis["volumes"])
    # the password: required, given to redis-server in a file, never on its command line
    assert redis["environment"]["REDISCLI_AUTH"].startswith(f"${{{PASSWORD_VAR}:?")
    assert "requirepass" in script and "--requirepass" not in script
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]  # with REDISCLI_AUTH


def test_the_image_has_what_the_mounts_and_the_hypervisors_need() -> None:
    text = dockerfile()
    home = found(r"--home-dir (\S+) vmorch", text)
    upload_dir = found(r"VMORCH_UPLOAD_DIR=(\S+)", text)
    for tool in ("openssh-client", "qemu-utils", "libvirt-dev"):
        assert tool in text
    assert f"{home}/.ssh" in text and upload_dir in text  # made for the vmorch user
    for name, svc in vmorch_services().items():
        targets = {v.split(":")[1] for v in svc.get("volumes", [])}
        command = svc["command"][1]
        if command in ("worker", "agent"):  # they open qemu+ssh:// URIs
            assert f"{home}/.ssh" in targets, name
        if command in ("worker", "api"):  # an upload waits for a worker's import job
            assert upload_dir in targets, name
    assert (ROOT / "deploy/ssh/README.md").exists()


@pytest.mark.parametrize("name", ["api", "worker-prod", "router"])
def test_every_setting_compose_gives_is_one_vmorch_reads(name: str) -> None:
    given = {k for k in services()[name]["environment"] if k.startswith("VMORCH_")}
    known = {f"VMORCH_{f.upper()}" for f in Settings.model_fields}
    assert given <= known, given - known


def test_example_inventory_is_valid_and_points_at_ssh_uris() -> None:
    inv = example_inventory()
    assert inv.servers and all(s.uri.startswith("qemu+ssh://") for s in inv.servers)
    pool_servers = {s for p in inv.pools for s in p.servers}
    assert pool_servers == {s.name for s in inv.servers}
