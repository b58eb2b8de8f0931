"""compose.yaml and the example inventory stay in step with the package."""

from __future__ import annotations

from pathlib import Path

import yaml

from orchestrator.cli.main import build_parser
from schemas.inventory import Inventory

ROOT = Path(__file__).resolve().parents[2]


def test_every_compose_service_runs_a_command_the_package_has() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    parser = build_parser()
    vmorch_services = {}
    for name, svc in compose["services"].items():
        cmd = svc["command"]
        if cmd[0] == "vmorch":
            args = parser.parse_args(cmd[1:])  # exits (SystemExit) on an unknown command
            vmorch_services[name] = args.cmd
    assert {"api", "worker", "router"} <= set(vmorch_services.values())
    assert "agent" in vmorch_services.values()


def test_compose_redis_keeps_an_append_only_file() -> None:
    redis = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["redis"]
    cmd = redis["command"]
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_example_inventory_is_valid_and_points_at_ssh_uris() -> None:
    inv = Inventory.model_validate_json((ROOT / "deploy/inventory.example.json").read_text())
    assert inv.servers and all(s.uri.startswith("qemu+ssh://") for s in inv.servers)
    pool_servers = {s for p in inv.pools for s in p.servers}
    assert pool_servers == {s.name for s in inv.servers}
