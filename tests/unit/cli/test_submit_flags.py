"""`vmorch jobs submit KIND --flags`: the flags generated from the request models round-trip
into the very request the model validates, for every kind; a bad value is refused before
anything is sent, naming the field and its flag."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from orchestrator.cli import submit
from orchestrator.cli.commands.jobs import _request
from orchestrator.cli.exitcodes import CliError, ExitCode
from orchestrator.cli.main import build_parser, main
from schemas.requests import ClientJobRequest

MAC = "52:54:00:00:00:01"
SHA = "ab" * 32
# One request per kind, using as many field shapes as the kind has (scalars, enums, bools
# both ways, lists of scalars and of models, maps, nested models, null).
EXAMPLES: dict[str, dict[str, Any]] = {
    "vm.create_from_template": {
        "kind": "vm.create_from_template",
        "pool": "pool-a",
        "template": "tmpl-a",
        "name": "web1",
        "vcpus": 2,
        "memory_mib": 768,
        "vnics": [{"network": "net-a"}, {"network": "net-b", "mac": MAC}],
        "disks": [{"clone_type": "thin"}, {}],
        "server": "srv-a1",
        "start": True,
        "ha": False,
        "labels": {"env": "prod", "tier": "web"},
        "config": [
            {"key": "hostname", "value": "web1"},
            {"key": "root_password", "value": "s3cret", "secret": True},
        ],
        "config_timeout_s": 120.5,
        "cloud_init": {"user_data": "#cloud-config\n", "meta_data": {"a": "b"}},
    },
    "vm.create_from_iso": {
        "kind": "vm.create_from_iso",
        "pool": "pool-a",
        "iso": "debian.iso",
        "name": "inst1",
        "memory_mib": 1024,
        "disks": [{"size_mib": 20480}],
        "config_via": "cloud-init",
        "config": [{"key": "hostname", "value": "inst1"}],
        "start": True,
    },
    "vm.create_from_install_tree": {
        "kind": "vm.create_from_install_tree",
        "pool": "pool-a",
        "name": "i1",
        "url": "http://127.0.0.1/tree/",
        "kickstart_url": "http://127.0.0.1/ks.cfg",
        "kernel_args": "console=ttyS0 inst.text",
        "arch": "x86_64",
        "install_timeout_s": 600,
        "disks": [{"size_mib": 4096}, {"size_mib": 1024}],
    },
    "vm.eject_iso": {"kind": "vm.eject_iso", "vm": "inst1"},
    "vm.insert_iso": {"kind": "vm.insert_iso", "vm": "inst1", "iso": "debian.iso"},
    "repository.import": {
        "kind": "repository.import",
        "repository": "repo-a",
        "content": "virtual_disk",
        "url": "http://127.0.0.1:8000/a.qcow2",
        "name": "a.qcow2",
        "sha256": SHA,
    },
    "vm.clone": {
        "kind": "vm.clone",
        "vm": "web1",
        "name": "web2",
        "vcpus": 1,
        "disks": [{"clone_type": "full", "repository": "repo-x"}],
        "network_map": {"net-a": "net-b"},
        "start": False,
        "ha": True,
        "labels": {"a": "1"},
    },
    "template.create_from_vm": {
        "kind": "template.create_from_vm",
        "vm": "web1",
        "name": "t1",
        "disks": [{"clone_type": "sparse"}],
    },
    "template.clone": {"kind": "template.clone", "template": "tmpl-a", "name": "t2", "disks": []},
    "template.import": {
        "kind": "template.import",
        "repository": "repo-a",
        "name": "t3",
        "url": "http://127.0.0.1/d.raw",
        "sha256": SHA,
        "vcpus": 2,
        "memory_mib": 1024,
    },
    "assembly.import": {
        "kind": "assembly.import",
        "repository": "repo-a",
        "url": "http://127.0.0.1/a.ova",
        "name": "app",
        "sha256": SHA,
    },
    "vm.start": {"kind": "vm.start", "vm": "web1"},
    "vm.stop": {"kind": "vm.stop", "vm": "web1", "timeout_s": 30},
    "vm.kill": {"kind": "vm.kill", "vm": "web1"},
    "vm.restart": {"kind": "vm.restart", "vm": "web1", "timeout_s": 0.5},
    "vm.suspend": {"kind": "vm.suspend", "vm": "web1"},
    "vm.resume": {"kind": "vm.resume", "vm": "web1"},
    "vm.delete": {"kind": "vm.delete", "vm": "web1", "delete_disks": False, "force": True},
    "vm.migrate": {
        "kind": "vm.migrate",
        "vm": "web1",
        "target_server": "srv-a2",
        "live": True,
        "bandwidth_mib_s": 100,
        "pinning": {"0": [1], "1": [2, 3]},
        "on_timeout": "pause",
        "completion_timeout_per_gib_s": 10.5,
        "progress_timeout_s": 30,
    },
    "vm.pin_vcpus": {"kind": "vm.pin_vcpus", "vm": "web1", "pinning": None},
    "vm.move": {"kind": "vm.move", "vm": "web1", "repository": "repo-x", "disks": [0, 2]},
    "vm.add_vnic": {"kind": "vm.add_vnic", "vm": "web1", "network": "net-a", "mac": MAC},
    "vm.remove_vnic": {"kind": "vm.remove_vnic", "vm": "web1", "mac": MAC},
    "vm.message": {
        "kind": "vm.message",
        "vms": ["web1", "web2"],
        "labels": {"env": "prod"},
        "pool": "pool-a",
        "timeout_s": 60,
        "messages": [
            {"key": "motd", "value": "hi there"},
            {"key": "pw", "value": "x", "secret": True},
        ],
    },
    "server.maintenance": {
        "kind": "server.maintenance",
        "server": "srv-a1",
        "dry_run": True,
        "strategy": "stop",
        "vms": {"web1": "migrate", "web2": "restart_elsewhere"},
        "parallel": 3,
        "pinned_vms": "drop",
        "reason": "bios update",
    },
    "server.activate": {"kind": "server.activate", "server": "srv-a1", "reason": "done"},
    "server.discover": {"kind": "server.discover", "server": "kvm7"},
    "noop": {
        "kind": "noop",
        "steps": 3,
        "step_delay_ms": 10,
        "fail_at": 2,
        "transient_failures": 1,
        "wait_for": "test.go",
        "wait_timeout_s": 5,
        "on_timeout": "escalate",
    },
}

ADAPTER: TypeAdapter[Any] = TypeAdapter(ClientJobRequest)


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["jobs", "submit", *argv])


def test_every_kind_has_an_example() -> None:
    assert set(EXAMPLES) == set(submit.KINDS)
    assert "vm.ha_restart" not in submit.KINDS  # internal: the API refuses it


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_flags_round_trip_into_the_model(kind: str) -> None:
    # given: a valid request, written as a command line with a flag per field
    request = EXAMPLES[kind]
    expected = ADAPTER.validate_python(request, strict=True)
    argv = submit.to_argv(request)
    assert argv[0] == kind
    assert {a for a in argv if a.startswith("--")} >= {
        s.flag for s in submit.flag_specs(kind) if s.field in request and s.shape != "bool"
    }
    # when: the command line is parsed as `vmorch jobs submit` parses it
    body = _request(parse(*argv))
    submit.validate(body)
    # then: the very request, which the model validates (strictly) to the same value
    assert body == request
    assert ADAPTER.validate_python(body, strict=True) == expected


def test_the_pinning_of_a_migration_and_null_pinning_parse_as_json() -> None:
    body = _request(parse("vm.pin_vcpus", "--vm", "w", "--pinning", '{"0": [1]}'))
    assert body["pinning"] == {"0": [1]}
    assert _request(parse("vm.pin_vcpus", "--vm", "w", "--pinning", "null"))["pinning"] is None


def test_lists_and_maps_take_repeated_flags_or_json() -> None:
    args = parse(
        "vm.message",
        "--vms",
        "a",
        "--vms",
        '["b", "c"]',
        "--labels",
        "x=1",
        "--labels",
        '{"y": "2"}',
        "--messages",
        '[{"key": "k", "value": "v"}]',
    )
    body = _request(args)
    assert body["vms"] == ["a", "b", "c"]
    assert body["labels"] == {"x": "1", "y": "2"}
    assert body["messages"] == [{"key": "k", "value": "v"}]


def test_no_field_flag_shadows_an_option_of_the_command() -> None:
    own = {
        "--wait",
        "--timeout",
        "--idempotency-key",
        "--file",
        "--json",
        "--api",
        "--token",
        "--help",
    }
    for kind in submit.KINDS:
        assert not own & {s.flag for s in submit.flag_specs(kind)}, kind


def test_enums_are_choices_and_bools_have_a_negative() -> None:
    specs = {s.field: s for s in submit.flag_specs("server.maintenance")}
    assert specs["strategy"].choices == ("migrate", "restart_elsewhere", "stop")
    assert specs["dry_run"].shape == "bool"
    with pytest.raises(SystemExit) as e:  # argparse: a usage error
        _request(parse("server.maintenance", "--server", "s", "--strategy", "teleport"))
    assert e.value.code == ExitCode.USAGE
    assert _request(parse("vm.delete", "--vm", "w", "--no-delete-disks"))["delete_disks"] is False


def refusal(*argv: str) -> CliError:
    with pytest.raises(CliError) as e:
        submit.validate(_request(parse(*argv)))
    assert e.value.code == ExitCode.REFUSED
    return e.value


def test_a_bad_value_is_refused_naming_the_field_and_its_flag() -> None:
    err = refusal(
        "vm.create_from_template", "--pool", "p", "--template", "t", "--name", "w", "--vcpus", "0"
    )
    [(loc, msg)] = err.details
    assert loc == ["body", "vcpus"] and "greater than or equal to 1" in msg and "--vcpus" in msg
    err = refusal("vm.stop", "--vm", "w", "--timeout-s", "soon")
    assert err.details[0][0] == ["body", "timeout_s"] and "--timeout-s" in err.details[0][1]


def test_a_missing_required_field_is_named() -> None:
    err = refusal("vm.create_from_template", "--pool", "p", "--name", "w")
    assert (["body", "template"], "Field required (--template)") in err.details


def test_json_that_does_not_parse_names_the_flag() -> None:
    err = refusal(
        "vm.create_from_template",
        "--pool",
        "p",
        "--template",
        "t",
        "--name",
        "w",
        "--cloud-init",
        "{user_data: x}",
    )
    assert err.details[0][0] == ["body", "cloud_init"]
    assert err.details[0][1].startswith("--cloud-init: not JSON")


def test_the_model_s_own_checks_run_too() -> None:
    err = refusal("repository.import", "--repository", "r", "--content", "iso")
    assert "give a url or an upload" in err.details[0][1]


def test_json_on_the_command_line_a_file_and_stdin_still_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = {"kind": "vm.start", "vm": "web1"}
    assert _request(parse("--wait", json.dumps(request))) == request
    assert _request(parse(json.dumps(request), "--wait")).get("vm") == "web1"
    path = tmp_path / "r.json"
    path.write_text(json.dumps(request))
    assert _request(parse(str(path))) == request
    assert _request(parse("--file", str(path))) == request
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(json.dumps(request)))
    assert _request(parse("-")) == request


def test_flags_are_set_over_a_file(tmp_path: Path) -> None:
    path = tmp_path / "base.json"
    path.write_text(json.dumps(EXAMPLES["vm.clone"]))
    body = _request(parse("vm.clone", "--file", str(path), "--name", "web3", "--no-ha"))
    assert body == {**EXAMPLES["vm.clone"], "name": "web3", "ha": False}
    with pytest.raises(CliError) as e:
        _request(parse("vm.start", "--file", str(path)))
    assert "the file's kind is 'vm.clone'" in e.value.details[0][1]


def test_a_misspelt_kind_is_a_usage_error_with_a_suggestion(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["jobs", "submit", "vm.strat", "--vm", "w"]) == ExitCode.USAGE
    assert "did you mean vm.start" in capsys.readouterr().err


def test_a_refused_request_exits_5_before_anything_is_sent(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # an api that cannot be reached: the refusal comes first
    argv = ["--api", "http://127.0.0.1:9", "jobs", "submit", "vm.start", "--vm", "no spaces"]
    assert main(argv) == ExitCode.REFUSED
    err = capsys.readouterr().err
    assert "body.vm" in err and "--vm" in err
    assert main([*argv, "--json"]) == ExitCode.REFUSED
    doc = json.loads(capsys.readouterr().err)
    assert doc["exit_code"] == 5 and doc["error"]["details"][0]["loc"] == ["body", "vm"]
