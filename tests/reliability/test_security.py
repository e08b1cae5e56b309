"""Security promises, each with a test that fails when it breaks:

- nothing in a request selects a file, a model path or an interpreter: traversal and absolute names in
  model / version (raw, percent-encoded, backslashes, NUL), multipart file names, and gRPC names get
  404 / 400 / NOT_FOUND, and while the service handles them no file is opened or listed and no process
  is started (Python audit hooks: ``open``, ``os.listdir``, ``os.scandir``, ``subprocess.Popen``,
  ``os.exec*``, ``os.posix_spawn``, ``pickle.find_class``); the model names the server knows come only
  from repository directory names that pass ``model.repository.is_valid_model_name``, and a manifest
  cannot name a file outside its version directory;
- checkpoints never unpickle: a ``.pth`` carrying a pickle payload is refused by ``ddrnet convert``
  (``torch.load(weights_only=True)``) and the payload never runs (it does run under a plain
  ``torch.load``, so the payload is real); MindSpore ``.ckpt`` loading is protobuf (no
  ``pickle.find_class`` while a real checkpoint loads) and a pickle saved as ``.ckpt`` is refused;
- optional TLS (HTTPS and gRPC, a self-signed certificate made here with openssl) and the bearer token
  on inference endpoints only (health, metadata and metrics stay open); plaintext to the TLS ports
  gets nothing.

The container's non-root user is checked in tests/deploy (test_dockerfile.py
``test_final_stage_runs_as_a_numeric_non_root_user``, test_manifests.py
``test_security_context_matches_the_image_user``).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import pickle
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any, ClassVar

import grpc
import httpx
import pytest

from model import repository as repo
from protos import classify_pb2, classify_pb2_grpc, grpc_service_pb2, grpc_service_pb2_grpc
from server.errors import ErrorKind, ServingError
from tests.support import reliability_fixtures as rf

# -- audit hook ---------------------------------------------------------------------------------------------

WATCHED = ("open", "os.listdir", "os.scandir", "os.chdir", "os.system", "os.exec", "os.posix_spawn",
           "os.spawn", "os.fork", "subprocess.Popen", "pickle.find_class", "marshal.load", "ctypes.dlopen")


class Audit:
    """Records watched audit events while armed (Python audit hooks cannot be removed: one, gated)."""

    events: ClassVar[list[tuple[str, str]]] = []
    armed = False
    installed = False

    @classmethod
    def hook(cls, event: str, args: tuple) -> None:
        if cls.armed and event.startswith(WATCHED):
            cls.events.append((event, repr(args)[:300]))

    def __enter__(self) -> list[tuple[str, str]]:
        if not Audit.installed:
            sys.addaudithook(Audit.hook)
            Audit.installed = True
        Audit.events = []
        Audit.armed = True
        return Audit.events

    def __exit__(self, *exc: object) -> None:
        Audit.armed = False


# -- names that try to reach a file ------------------------------------------------------------------------

TRAVERSALS = [  # (raw request path, expected status)
    ("/v1/models/../../../../etc/passwd/classify", 404),
    ("/v1/models/..%2F..%2F..%2Fsecret.json/classify", 404),
    ("/v1/models/%2e%2e/classify", 404),
    ("/v1/models/%2E%2E%2F%2E%2E%2Fsecret.json/classify", 404),
    ("/v1/models/..%5C..%5Csecret.json/classify", 404),
    ("/v1/models/%2Fetc%2Fpasswd/classify", 404),
    ("/v1/models//etc/passwd/classify", 404),
    ("/v1/models/slow%00.json/classify", 404),
    ("/v1/models/slow/versions/../../classify", 404),
    ("/v1/models/slow/versions/..%2F..%2F/classify", 404),
    ("/v1/models/slow/versions/%2e%2e/classify", 404),
    ("/v1/models/slow/versions/1%2F..%2F..%2Fsecret.json/classify", 404),
    ("/v1/models/slow/classify?top_k=..%2F..%2Fsecret.json", 422),
    ("/v2/models/..%2Fsecret.json/infer", 404),
    ("/v2/models/%2e%2e/infer", 404),
    ("/v2/models/%2e%2e/ready", 404),
    ("/v2/models/..%2F..%2Fsecret.json", 404),
    ("/v2/models/slow/versions/..%2F1/ready", 404),
]
GRPC_NAMES = [("../../secret.json", ""), ("/etc/passwd", ""), ("slow/../slow", ""), ("..", ""),
              ("slow", "../../"), ("slow", "/etc/passwd"), ("slow", "1/../1"), ("slow\x00", "")]


def method_of(raw_path: str) -> str:
    return "POST" if raw_path.partition("?")[0].endswith(("/classify", "/infer")) else "GET"


def _asgi_call(app: Any, raw_path: str, body: bytes, headers: dict[str, str]) -> tuple[Any, dict[str, Any]]:
    """One request straight into the ASGI app with the path exactly as given (httpx would normalise
    ``..`` segments away before sending): (coroutine function to run, the answer once it ran)."""
    path, _, query = raw_path.partition("?")
    method = method_of(raw_path)
    body = body if method == "POST" else b""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": urllib.parse.unquote(path), "raw_path": path.encode(), "root_path": "",
        "query_string": query.encode(), "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 5000),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    out: dict[str, Any] = {"body": b""}
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client stays connected
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    async def call() -> None:
        await app(scope, receive, send)

    return call, out


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("security")
    rf.publish(tmp / "repo")
    (tmp / "secret.json").write_text('{"secret": "do not serve"}')
    lc = rf.LoopCore(tmp / "repo")
    yield lc
    lc.close()


def _hostile_requests(core: rf.LoopCore, app: Any) -> tuple[list[tuple[str, int, bytes]], dict[str, Any]]:
    """Every traversal path over HTTP, a multipart file named like a path, and the gRPC names."""
    png = {"content-type": "image/png"}
    answers = []
    for raw_path, _ in TRAVERSALS:
        call, out = _asgi_call(app, raw_path, rf.solid("red"), png)
        core.run(call())
        answers.append((raw_path, out["status"], out["body"]))
    # A multipart file name is never used as a path: only the part's bytes are read.
    boundary = "b0"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            'filename="../../../../etc/passwd"\r\nContent-Type: image/png\r\n\r\n')
    body = head.encode() + rf.solid("red") + f"\r\n--{boundary}--\r\n".encode()
    call, multipart = _asgi_call(app, "/v1/models/slow/classify", body,
                                 {"content-type": f"multipart/form-data; boundary={boundary}"})
    core.run(call())
    for model, version in GRPC_NAMES:  # what the gRPC front ends pass through, unchanged
        for attempt in (
            core.core.classify([rf.solid("red")], model=model, version=version or None, protocol="grpc"),
            core.core.infer(model=model, version=version or None, inputs=[], protocol="grpc"),
        ):
            with pytest.raises(ServingError) as info:
                core.run(attempt)
            assert info.value.kind is ErrorKind.NOT_FOUND, (model, version, info.value)
        with pytest.raises(ServingError):
            core.core.model_metadata(model, version or None)
    return answers, multipart


def test_no_request_selects_a_file_or_a_process(core) -> None:
    from server.http_api import create_app

    app = create_app(core.core)
    _hostile_requests(core, app)  # a rehearsal: lazy imports (Pillow plugins ...) happen here
    with Audit() as events:
        answers, multipart = _hostile_requests(core, app)
    for (raw_path, status), (_, got, text) in zip(TRAVERSALS, answers, strict=True):
        assert got == status, (raw_path, got, text)
        assert b"do not serve" not in text and b"root:" not in text
        assert set(json.loads(text)) == {"error"}
    assert multipart["status"] == 200, multipart
    assert json.loads(multipart["body"])["results"][0]["predictions"][0]["label"] == "red"
    assert events == [], events  # no file opened or listed, no process started, nothing unpickled
    with Audit() as control:  # the hook does see a file being read
        (rf.REPO_ROOT / "pyproject.toml").read_bytes()
    assert [e for e, _ in control] == ["open"]


def test_only_valid_directory_names_become_models_and_manifests_stay_inside(tmp_path) -> None:
    repository = tmp_path / "repo"
    rf.publish(repository)
    for bad in ("..hidden", "-dash", "with space", ".git"):
        shutil.copytree(repository / rf.MODEL, repository / bad)
    assert repo.list_models(repository) == [rf.MODEL]
    with pytest.raises(ValueError, match="invalid model name"):
        repo.model_dir(repository, "../outside")
    # A manifest naming a file outside its version directory is not a servable version.
    vdir = repository / rf.MODEL / "1"
    data = json.loads((vdir / "model.json").read_text())
    data["files"]["onnx"] = "../../../secret.onnx"
    (vdir / "model.json").write_text(json.dumps(data))
    with pytest.raises(repo.IncompleteVersionError, match="plain file name"):
        repo.check_version(vdir)


def test_the_real_server_answers_traversal_names_with_404(tmp_path) -> None:
    rf.publish(tmp_path / "repo")
    server = rf.SlowServer(tmp_path / "repo", tmp_path / "server.log").start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
        for raw_path, status in TRAVERSALS:  # sent byte for byte (http.client does not normalise)
            post = method_of(raw_path) == "POST"
            connection.request(method_of(raw_path), raw_path, body=rf.solid("red") if post else None,
                               headers={"content-type": "image/png"})
            response = connection.getresponse()
            text = response.read()
            assert response.status == status, (raw_path, response.status, text)
            assert set(json.loads(text)) == {"error"}
        connection.close()
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = classify_pb2_grpc.ClassifyStub(channel)
            for model, version in GRPC_NAMES:
                request = classify_pb2.ClassifyRequest(model_name=model, model_version=version,
                                                       images=[rf.solid("red")])
                with pytest.raises(grpc.RpcError) as info:
                    stub.Classify(request, timeout=30)
                assert info.value.code() is grpc.StatusCode.NOT_FOUND, (model, version)
        assert "Traceback" not in server.stderr()
    finally:
        server.kill()


# -- checkpoints never unpickle ---------------------------------------------------------------------------


class Payload:
    """Unpickling this runs ``os.mkdir(path)``: the visible effect of code execution on load."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (self.path,))


def test_a_malicious_pth_is_refused_and_never_runs(tmp_path, monkeypatch, capsys) -> None:
    torch = pytest.importorskip("torch", reason="torch (the [torch] extra) is needed to write a .pth")
    import cli.main

    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv1.0.weight": torch.zeros(1)}, "extra": Payload(str(marker))}, evil)
    monkeypatch.setattr(cli.main, "SUBCOMMANDS", {"convert": cli.main.SUBCOMMANDS["convert"]})
    output = tmp_path / "o.ckpt"
    code = cli.main.main(["convert", str(evil), "--arch", "ddrnet23_slim", "--output", str(output)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("ddrnet convert: error: ")
    assert "cannot read" in err and "as a PyTorch state dict" in err and "Traceback" not in err
    assert not marker.exists()
    assert not output.exists()
    torch.load(evil, weights_only=False)  # the payload is live: an unsafe load runs it
    assert marker.is_dir()


def test_checkpoint_loading_is_protobuf_and_refuses_a_pickle(tmp_path) -> None:
    marker = tmp_path / "payload-ran"
    script = f"""
import os, pickle, sys
import mindspore as ms
from mindspore import nn
from model.weights import WeightLoadError, read_checkpoint
events = []
ms.save_checkpoint(nn.Dense(3, 2), {str(tmp_path / 'real.ckpt')!r})
read_checkpoint({str(tmp_path / 'real.ckpt')!r})  # a rehearsal (lazy imports), then watched
sys.addaudithook(lambda e, a: events.append(e) if e.startswith("pickle.") else None)
state = read_checkpoint({str(tmp_path / 'real.ckpt')!r})
assert sorted(state) == ["bias", "weight"], sorted(state)
try:
    read_checkpoint({str(tmp_path / 'evil.ckpt')!r})
    print("LOADED")
except WeightLoadError as exc:
    print("REFUSED", str(exc).splitlines()[0])
print("EVENTS", sorted(set(events)))
import collections
pickle.loads(pickle.dumps(collections.OrderedDict()))  # the hook does see an unpickled global
print("CONTROL", sorted(set(events)))
"""
    (tmp_path / "evil.ckpt").write_bytes(pickle.dumps(Payload(str(marker))))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "GLOG_v": "3", "PYTHONPATH": str(rf.REPO_ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert any(line.startswith("REFUSED cannot read checkpoint") for line in lines), proc.stdout
    assert "EVENTS []" in lines, proc.stdout  # nothing unpickled while a real checkpoint loaded
    assert "CONTROL ['pickle.find_class']" in lines, proc.stdout
    assert not marker.exists()


# -- TLS and the bearer token ---------------------------------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 / localhost and its key (openssl CLI; no `cryptography` here)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a test certificate")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return cert, key


TOKEN = "s3cret-t0ken"


def test_tls_and_bearer_token(tmp_path) -> None:
    cert, key = self_signed(tmp_path)
    rf.publish(tmp_path / "repo")
    server = rf.SlowServer(tmp_path / "repo", tmp_path / "server.log", "--tls-cert", str(cert),
                           "--tls-key", str(key), "--auth-token", TOKEN).start()
    try:
        assert any(line.startswith("ddrnet serve: HTTP on https://") for line in server.lines)
        base = f"https://127.0.0.1:{server.http_port}"
        png = {"content-type": "image/png"}
        with httpx.Client(base_url=base, verify=str(cert), timeout=30) as https:
            url = f"/v1/models/{rf.MODEL}/classify"
            ok = https.post(url, content=rf.solid("red"), headers={**png, "authorization": f"Bearer {TOKEN}"})
            assert ok.status_code == 200 and ok.json()["results"][0]["predictions"][0]["label"] == "red"
            for auth in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {TOKEN}"}):
                refused = https.post(url, content=rf.solid("red"), headers={**png, **auth})
                assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
                assert "bearer token" in refused.json()["error"]
            infer = https.post(f"/v2/models/{rf.MODEL}/infer", json={"inputs": []})
            assert infer.status_code == 401
            for path in ("/v2/health/live", "/v2/health/ready", "/v2", f"/v2/models/{rf.MODEL}",
                         f"/v2/models/{rf.MODEL}/ready", "/metrics", "/openapi.json"):
                assert https.get(path).status_code == 200, path
        with pytest.raises(httpx.HTTPError):  # plaintext to the TLS port gets no answer
            httpx.get(f"http://127.0.0.1:{server.http_port}/v2/health/live", timeout=10)
        with pytest.raises(httpx.ConnectError):  # and the certificate is the one served
            httpx.get(f"{base}/v2/health/live", timeout=10)

        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(server.grpc_target, credentials) as channel:
            stub = classify_pb2_grpc.ClassifyStub(channel)
            request = classify_pb2.ClassifyRequest(model_name=rf.MODEL, images=[rf.solid("blue")])
            reply = stub.Classify(request, timeout=30, metadata=(("authorization", f"Bearer {TOKEN}"),))
            assert reply.results[0].predictions[0].label == "blue"
            for metadata in ((), (("authorization", "Bearer wrong"),)):
                with pytest.raises(grpc.RpcError) as info:
                    stub.Classify(request, timeout=30, metadata=metadata)
                assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
            oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                oip.ModelInfer(grpc_service_pb2.ModelInferRequest(model_name=rf.MODEL), timeout=30)
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert oip.ServerReady(grpc_service_pb2.ServerReadyRequest(), timeout=30).ready  # open
            meta = oip.ModelMetadata(grpc_service_pb2.ModelMetadataRequest(name=rf.MODEL), timeout=30)
            assert meta.name == rf.MODEL
        with grpc.insecure_channel(server.grpc_target) as channel:  # plaintext to the TLS port
            with pytest.raises(grpc.RpcError) as info:
                grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ServerLive(
                    grpc_service_pb2.ServerLiveRequest(), timeout=10)
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert TOKEN not in server.stderr()  # the effective configuration masks the token
    finally:
        server.kill()
