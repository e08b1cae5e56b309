"""Explicit model control, the repository extension (``server.repository_control``), against the real
server: ``tritonclient``'s ``get_model_repository_index``, ``load_model`` and ``unload_model`` unchanged
over HTTP (this venv) and gRPC (its own venv); a reload is a drain-free swap; the mode and the bearer
token are enforced."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from tests.support import server_fixtures as sf
from tests.support.triton_venv import triton_grpc_python

TOKEN = "control-token"


@pytest.fixture(scope="module")
def repository(slim_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two models: ``slim`` and a copy named ``other``."""
    repo = tmp_path_factory.mktemp("control") / "repo"
    shutil.copytree(slim_repository, repo)
    sf.copy_version(repo / "slim" / "1", repo, "other", 1)
    return repo


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory):
    proc = sf.ServerProcess(repository, tmp_path_factory.mktemp("logs") / "server.log", "--model-control",
                            "explicit", "--models", "other", "--instances", "1",
                            "--threads-per-instance", "1",
                            "--auth-token", TOKEN).start()
    yield proc
    proc.kill()


def test_tritonclient_http_index_load_reload_unload(server) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(server.http_url.removeprefix("http://"),
                                          network_timeout=120, connection_timeout=120)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    index = {m["name"]: m for m in client.get_model_repository_index(headers=headers)}
    assert index["other"]["state"] == "READY"  # --models in explicit mode: loaded at start
    assert index["slim"] == {"name": "slim", "version": "1", "state": "UNAVAILABLE", "reason": "not loaded"}
    assert not client.is_model_ready("slim")

    client.load_model("slim", headers=headers)
    assert client.is_model_ready("slim")
    image = sf.photos()[0]
    url = f"{server.http_url}/v1/models/slim/classify"
    assert httpx.post(url, files={"file": image}, headers=headers, timeout=60).status_code == 200

    # a reload while requests run: every one is answered (a drain-free swap)
    codes: list[int] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                codes.append(http.post(url, files={"file": image}, headers=headers).status_code)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        client.load_model("slim", headers=headers)
    finally:
        stop.set()
        worker.join(120)
    assert codes and set(codes) == {200}, codes

    client.unload_model("slim", headers=headers, unload_dependents=True)
    assert not client.is_model_ready("slim")
    index = {m["name"]: m for m in client.get_model_repository_index(headers=headers)}
    assert (index["slim"]["state"], index["slim"]["reason"]) == ("UNAVAILABLE", "unloaded")
    assert httpx.post(url, files={"file": image}, headers=headers, timeout=60).status_code == 404
    ready_only = client.get_model_repository_index(headers=headers, query_params=None)
    assert {m["name"] for m in ready_only if m["state"] == "READY"} == {"other"}

    with pytest.raises(triton.InferenceServerException, match="'nope' is not in the repository"):
        client.load_model("nope", headers=headers)
    with pytest.raises(triton.InferenceServerException, match="not supported"):
        client.load_model("slim", headers=headers, config='{"max_batch_size": 2}')
    with pytest.raises(triton.InferenceServerException, match="bearer token"):
        client.load_model("slim")
    client.close()


def test_http_index_body_and_errors(server) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    ready = httpx.post(f"{server.http_url}/v2/repository/index", json={"ready": True}, headers=headers)
    assert ready.status_code == 200 and all(m["state"] == "READY" for m in ready.json())
    for wrong in ("yes please", 1):  # a strict boolean: schemathesis found 1 accepted as true
        bad = httpx.post(f"{server.http_url}/v2/repository/index", json={"ready": wrong}, headers=headers)
        assert bad.status_code == 422 and "error" in bad.json()
    nope = httpx.post(f"{server.http_url}/v2/repository/models/slim/unload", headers=headers)
    assert nope.status_code in (200, 404)  # unloaded by the test above, or never loaded
    unauthenticated = httpx.post(f"{server.http_url}/v2/repository/index")
    assert unauthenticated.status_code == 401


TRITON_GRPC_CONTROL = r"""
import json, sys
import tritonclient.grpc as triton

target, token = sys.argv[1:3]
headers = {"authorization": "Bearer " + token}
client = triton.InferenceServerClient(target)
out = {}
client.load_model("slim", headers=headers)
out["ready_after_load"] = client.is_model_ready("slim")
index = client.get_model_repository_index(headers=headers, as_json=True)
out["index"] = {m["name"]: m.get("state") for m in index["models"]}
client.unload_model("slim", headers=headers)
out["ready_after_unload"] = client.is_model_ready("slim")
try:
    client.load_model("nope", headers=headers)
except triton.InferenceServerException as exc:
    out["unknown"] = exc.status()
try:
    client.get_model_repository_index()
except triton.InferenceServerException as exc:
    out["no_token"] = exc.status()
print(json.dumps(out))
"""


def test_tritonclient_grpc_from_its_own_venv(server, tmp_path: Path) -> None:
    python = triton_grpc_python()
    script = tmp_path / "control.py"
    script.write_text(TRITON_GRPC_CONTROL)
    proc = subprocess.run([python, str(script), server.grpc_target, TOKEN], capture_output=True, text=True,
                          timeout=300, env={"PATH": os.environ.get("PATH", "")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ready_after_load"] is True and out["ready_after_unload"] is False
    assert out["index"] == {"other": "READY", "slim": "READY"}
    assert out["unknown"] == "StatusCode.NOT_FOUND" and out["no_token"] == "StatusCode.UNAUTHENTICATED"


def test_poll_mode_refuses_explicit_loads(slim_repository: Path, tmp_path: Path) -> None:
    server = sf.ServerProcess(slim_repository, tmp_path / "server.log", "--instances", "1",
                              "--threads-per-instance", "1").start()
    try:
        index = httpx.post(f"{server.http_url}/v2/repository/index").json()
        assert index == [{"name": "slim", "version": "1", "state": "READY", "reason": ""}]
        refused = httpx.post(f"{server.http_url}/v2/repository/models/slim/load")
        assert refused.status_code == 400
        assert "not allowed with --model-control poll" in refused.json()["error"]
        meta = httpx.get(f"{server.http_url}/v2").json()
        assert "model_repository" in meta["extensions"]
    finally:
        server.kill()
