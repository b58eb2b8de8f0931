"""What a hook matches, and how its request template is filled (pure functions)."""

from __future__ import annotations

import re
from typing import Any

from orchestrator.globs import glob_match
from schemas.events import Event
from schemas.hooks import HookMatch
from schemas.inventory import Vm

_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


def matches(match: HookMatch, event: Event, vm: Vm | None) -> bool:
    """Whether `event` (about `vm`, when it is about a VM) meets every criterion of `match`."""
    if not any(glob_match(event.type, t) for t in match.types):
        return False
    data = event.data
    if match.vm_name is not None and not glob_match(
        str(data.get("vm_name") or (vm.name if vm else "")), match.vm_name
    ):
        return False
    if match.server is not None and data.get("server") != match.server:
        return False
    if match.pool is not None and data.get("pool", vm.pool if vm else None) != match.pool:
        return False
    labels = vm.labels if vm else {}
    if any(labels.get(k) != v for k, v in match.labels.items()):
        return False
    return all(data.get(k) == v for k, v in match.data.items())


def fill(template: Any, values: dict[str, str]) -> Any:
    """Put event values into a request template's strings: "{vm_id}" -> the VM's id.

    Only whole-placeholder and simple `{name}` substitutions: no format specs or attribute
    access (`str.format_map` would let a hook read object attributes).
    """
    if isinstance(template, str):
        # one pass: a value that itself looks like a placeholder stays as it is
        return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)
    if isinstance(template, list):
        return [fill(x, values) for x in template]
    if isinstance(template, dict):
        return {k: fill(v, values) for k, v in template.items()}
    return template
