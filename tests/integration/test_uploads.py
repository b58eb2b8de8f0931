"""Uploading into a repository through the api: the body streamed to the upload directory
the api shares with the workers, imported by a job, the staged file gone afterwards; bad
uploads refused with the field named and nothing staged."""

from __future__ import annotations

import http.client
import json
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from schemas.inventory import Inventory
from tests.integration.conftest import Api, Proc
from tests.sources import make_iso

pytestmark = pytest.mark.integration
UPLOADS = Path(tempfile.gettempdir()) / "vmorch-uploads"  # the default both processes use


def put(api: Api, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    u = urlsplit(api.url)
    conn = http.client.HTTPConnection(u.hostname or "", u.port, timeout=30)
    try:
        conn.putrequest("PUT", path)
        conn.putheader("Authorization", f"Bearer {api.token}")
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.endheaders()
        if body:
            conn.send(body)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None
    finally:
        conn.close()


def staged() -> set[str]:
    return {p.name for p in UPLOADS.iterdir()} if UPLOADS.exists() else set()


def test_an_uploaded_iso_is_imported_and_its_staged_file_removed(
    api: Api, worker: Proc, fleet: Inventory, tmp_path: Path
) -> None:
    sha = make_iso(tmp_path / "up.iso")
    data = (tmp_path / "up.iso").read_bytes()
    before = staged()
    status, job = put(
        api, f"/v1/repositories/repo-a/content/up.iso?content=iso&sha256={sha}", data,
        {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))},
    )  # fmt: skip
    assert status == 202, job
    done = api.wait(job["id"])
    assert done["state"] == "succeeded", done["error"]
    assert done["request"]["upload"] and done["request"]["name"] == "up.iso"
    [iso] = api.call("GET", "/v1/repositories/repo-a")["isos"]
    assert iso["name"] == "up.iso" and iso["sha256"] == sha and iso["size_bytes"] == len(data)
    assert iso["source"].startswith("upload:")
    assert staged() == before  # the staged file went with the job
    # the same name again: 409, before anything is read
    status, body = put(
        api, "/v1/repositories/repo-a/content/up.iso", data,
        {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))},
    )  # fmt: skip
    assert status == 409 and body["error"]["details"][0]["loc"] == ["path", "name"]


def test_bad_uploads_are_refused_and_nothing_is_staged(
    api: Api, fleet: Inventory, tmp_path: Path
) -> None:
    make_iso(tmp_path / "x.iso")
    data = (tmp_path / "x.iso").read_bytes()
    octet = {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))}
    before = staged()
    cases = [
        ("/v1/repositories/repo-a/content/x.iso?sha256=" + "0" * 64, data, octet, 422,
         ["query", "sha256"]),
        ("/v1/repositories/repo-a/content/x.iso", data,
         {"Content-Type": "application/json", "Content-Length": str(len(data))}, 415, None),
        ("/v1/repositories/repo-a/content/x.iso", b"",
         {"Content-Type": "application/octet-stream", "Content-Length": str(10**15)}, 413,
         ["body"]),
        ("/v1/repositories/repo-a/content/x.iso", b"",
         {"Content-Type": "application/octet-stream", "Transfer-Encoding": "chunked"}, 411,
         ["header", "Content-Length"]),
        ("/v1/repositories/nope/content/x.iso", data, octet, 404, None),
        ("/v1/repositories/repo-a/content/..%2Fx.iso", data, octet, 422, ["path", "name"]),
    ]  # fmt: skip
    for path, body, headers, want, loc in cases:
        status, reply = put(api, path, body, headers)
        assert status == want, (path, headers, reply)
        if loc is not None:
            assert reply["error"]["details"][0]["loc"] == loc, reply
    assert staged() == before
    assert api.call("GET", "/v1/repositories/repo-a")["isos"] == []


def test_an_uploaded_ova_becomes_templates(
    api: Api, worker: Proc, fleet: Inventory, tmp_path: Path
) -> None:
    from tests.sources import make_assembly, make_ova

    members = make_assembly(tmp_path, "app", [{"id": "web", "memory_mib": 128, "disks": [0]}])
    make_ova(tmp_path, "app", members, tmp_path / "app.ova")
    data = (tmp_path / "app.ova").read_bytes()
    before = staged()
    status, job = put(
        api, "/v1/repositories/repo-a/content/app.ova?content=assembly", data,
        {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))},
    )  # fmt: skip
    assert status == 202 and job["kind"] == "assembly.import", job
    done = api.wait(job["id"])
    assert done["state"] == "succeeded", done["error"]
    [asm] = api.call("GET", "/v1/repositories/repo-a")["assemblies"]
    assert asm["name"] == "app" and asm["virtual_systems"][0]["template"] == "app-web"
    assert staged() == before
    # an assembly is uploaded as an .ova
    status, body = put(
        api, "/v1/repositories/repo-a/content/app.ovf?content=assembly", data,
        {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))},
    )  # fmt: skip
    assert status == 422 and body["error"]["details"][0]["loc"] == ["path", "name"]
