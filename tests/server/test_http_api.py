"""HTTP front end (in process, httpx ASGI transport) over the real core and fake-model workers: the three
classify body forms, OIP v2 REST (JSON and binary tensors), health, metrics, auth, and every bad input
answered with its documented status and a JSON error naming the problem."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import io
import json
import os
import signal
import struct
import types

import httpx
import numpy as np
import pytest
from PIL import Image

from server.http_api import _until_disconnect, create_app
from server.http_schemas import BINARY_HEADER
from tests.support import server_fixtures as sf


def run(coro, timeout: float = 60.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture
def repository(tmp_path):
    sf.make_fake_version(tmp_path, "fake", 1)
    return tmp_path


@contextlib.asynccontextmanager
async def serving(repository, runtime=sf.FAKE_RUNTIME, **overrides):
    async with sf.started_core(sf.settings_for(repository, **overrides), runtime=runtime) as core:
        transport = httpx.ASGITransport(app=create_app(core))
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
            yield client, core


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def labels_of(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [r["predictions"][0]["label"] for r in response.json()["results"]]


def png_bytes(img: Image.Image, fmt: str = "PNG", **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


CLASSIFY = "/v1/models/fake/classify"
PNG = {"content-type": "image/png"}


def tensor_input(shape, data=None, **parameters):
    out = {"name": "input", "datatype": "FP32", "shape": shape}
    if data is not None:
        out["data"] = data
    if parameters:
        out["parameters"] = parameters
    return out


def bytes_input(shape, data=None, **parameters):
    out = {**tensor_input(shape, data, **parameters), "name": "images", "datatype": "BYTES"}
    return out


def header(*inputs) -> bytes:
    return json.dumps({"inputs": list(inputs)}).encode()


def json_logits(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    out = response.json()["outputs"][0]
    return np.array(out["data"]).reshape(out["shape"])


# -- classify ---------------------------------------------------------------------------------------------


def test_classify_three_body_forms(repository) -> None:
    async def main():
        async with serving(repository) as (client, _core):
            url = "/v1/models/fake/classify"
            raw = await client.post(url, content=sf.colour_image("red"), headers=PNG, params={"top_k": 2})
            body = raw.json()
            assert (body["model_name"], body["model_version"]) == ("fake", "1")
            preds = body["results"][0]["predictions"]
            assert [p["label"] for p in preds] == ["red", preds[1]["label"]] and len(preds) == 2
            assert preds[0]["index"] == 0 and 0 < preds[1]["score"] < preds[0]["score"] <= 1
            octet = await client.post(url, content=sf.colour_image("blue", "JPEG"),
                                      headers={"content-type": "application/octet-stream"})
            assert labels_of(octet) == ["blue"]
            colours = ("green", "red", "blue")
            files = [("file", (f"{c}.png", sf.colour_image(c), "image/png")) for c in colours]
            multi = await client.post(url, files=files, data={"top_k": "1"})
            assert labels_of(multi) == ["green", "red", "blue"]
            assert all(len(r["predictions"]) == 1 for r in multi.json()["results"])
            data_url = "data:image/png;base64," + b64(sf.colour_image("red"))
            as_json = await client.post(url, json={"images": [b64(sf.colour_image("green")), data_url],
                                                   "top_k": 3})
            assert labels_of(as_json) == ["green", "red"]
            assert len(as_json.json()["results"][0]["predictions"]) == 3
            versioned = await client.post("/v1/models/fake/versions/1/classify",
                                          json={"images": [b64(sf.colour_image("blue"))]})
            assert labels_of(versioned) == ["blue"]
            listing = (await client.get("/v1/models")).json()
            [entry] = listing["models"]
            assert entry == {"name": "fake", "version": "1", "ready": True, "runtime": entry["runtime"],
                             "device": "cpu", "precision": "fp32", "settings": {}, "versions": ["1"],
                             "version_labels": {}, "traffic_split": {}}
            assert entry["runtime"]  # the fake runtime (its module:Class name)

    run(main())


def _gif_animated() -> bytes:
    frames = [Image.new("RGB", (16, 16), sf.COLOURS[c]) for c in ("green", "red")]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    return buf.getvalue()


def test_unusual_but_valid_images_are_classified(repository) -> None:
    rgba = Image.new("RGBA", (10, 10), (230, 20, 20, 10))
    grey = Image.new("L", (10, 10), 200)
    cases = {
        "rgba png": png_bytes(rgba),
        "palette png": png_bytes(Image.new("RGB", (12, 12), sf.COLOURS["red"]).convert("P")),
        "cmyk jpeg": png_bytes(Image.new("RGB", (12, 12), sf.COLOURS["red"]).convert("CMYK"), "JPEG"),
        "16-bit png": png_bytes(Image.fromarray(np.full((9, 9), 50000, np.uint16))),
        "1x1": png_bytes(Image.new("RGB", (1, 1), sf.COLOURS["red"])),
        "grey": png_bytes(grey),
        "animated gif (first frame)": _gif_animated(),
    }

    async def main():
        async with serving(repository) as (client, _core):
            for name, data in cases.items():
                response = await client.post("/v1/models/fake/classify", content=data,
                                             headers={"content-type": "image/png"})
                assert response.status_code == 200, (name, response.text)
            gif = cases["animated gif (first frame)"]
            response = await client.post(CLASSIFY, content=gif, headers={"content-type": "image/gif"})
            assert labels_of(response) == ["green"]

    run(main())


BAD_REQUESTS = [
    # (case, content type, body, query, expected status, message part)
    ("no content type", None, b"x", {}, 415, "Content-Type"),
    ("text", "text/plain", b"hello", {}, 415, "text/plain"),
    ("empty body", "image/png", b"", {}, 400, "empty"),
    ("random bytes", "image/jpeg", bytes(range(256)) * 4, {}, 400, "cannot decode"),
    ("truncated png", "image/png", "TRUNCATED_PNG", {}, 400, "truncated"),
    ("truncated jpeg", "image/jpeg", "TRUNCATED_JPEG", {}, 400, "image"),
    ("unsupported format", "image/x-icon", "ICO", {}, 415, "unsupported image format"),
    ("text file as image", "image/png", b"just some text\n" * 10, {}, 400, "cannot decode"),
    ("top_k 0", "image/png", "RED", {"top_k": "0"}, 400, "top_k"),
    ("top_k negative", "image/png", "RED", {"top_k": "-3"}, 400, "top_k"),
    ("top_k huge", "image/png", "RED", {"top_k": str(10**9)}, 400, "top_k"),
    ("top_k not a number", "image/png", "RED", {"top_k": "five"}, 422, "top_k"),
    ("malformed json", "application/json", b'{"images": [', {}, 400, "malformed JSON"),
    ("json images not a list", "application/json", b'{"images": "abc"}', {}, 422, "images"),
    ("json unknown field", "application/json", b'{"images": [], "k": 1}', {}, 422, "k"),
    ("json top_k string", "application/json", b'{"images": ["AA=="], "top_k": "2"}', {}, 422, "top_k"),
    ("json no images", "application/json", b'{"images": []}', {}, 400, "no images"),
    ("invalid base64", "application/json", b'{"images": ["not base64!"]}', {}, 400, "base64"),
    ("multipart no file", "multipart/form-data; boundary=xyz",
     b'--xyz\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n3\r\n--xyz--\r\n', {}, 400, "no file"),
    ("multipart no boundary", "multipart/form-data", b"whatever", {}, 400, "multipart"),
]


def _body(spec):
    if not isinstance(spec, str):
        return spec
    red = sf.colour_image("red")
    if spec == "RED":
        return red
    if spec == "TRUNCATED_PNG":
        noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
        return png_bytes(Image.fromarray(noise))[:300]
    if spec == "TRUNCATED_JPEG":
        return sf.solid_image((10, 200, 30), size=64, fmt="JPEG")[:200]
    if spec == "ICO":
        return png_bytes(Image.new("RGB", (16, 16), (1, 2, 3)), "ICO")
    raise AssertionError(spec)


def test_bad_classify_requests_get_documented_errors(repository) -> None:
    async def main():
        async with serving(repository) as (client, _core):
            for case, content_type, body, query, status, part in BAD_REQUESTS:
                headers = {"content-type": content_type} if content_type else {}
                response = await client.post("/v1/models/fake/classify", content=_body(body), params=query,
                                             headers=headers)
                assert response.status_code == status, (case, response.status_code, response.text)
                error = response.json()["error"]
                assert part.lower() in error.lower(), (case, error)
                assert "Traceback" not in response.text
            response = await client.post("/v1/models/fake/classify", content=sf.colour_image("red"),
                                         headers={"content-type": "image/png"})
            assert labels_of(response) == ["red"]  # the next valid request succeeds

    run(main())


def test_limits_and_unknown_names(repository) -> None:
    async def main():
        async with serving(repository, max_request_bytes=4096, max_image_pixels=1000,
                           max_images_per_request=2) as (client, _core):
            url = "/v1/models/fake/classify"
            png = {"content-type": "image/png"}
            big = await client.post(url, content=b"\0" * 5000, headers=png)
            assert big.status_code == 413 and "4096" in big.json()["error"]
            bomb = await client.post(url, content=sf.solid_image((1, 1, 1), size=40), headers=png)
            assert bomb.status_code == 413 and "pixels" in bomb.json()["error"]
            many = await client.post(url, json={"images": [b64(sf.colour_image("red"))] * 3})
            assert many.status_code == 413 and "at most 2" in many.json()["error"]
            files = [("file", (f"{i}.png", sf.colour_image("red"), "image/png")) for i in range(3)]
            many_parts = await client.post(url, files=files)
            assert many_parts.status_code == 413 and "at most 2" in many_parts.json()["error"]
            gz = gzip.compress(b"\0" * 100_000)
            inflated = await client.post(url, content=gz, headers={**png, "content-encoding": "gzip"})
            assert inflated.status_code == 413 and "decompressed" in inflated.json()["error"]
            brotli = await client.post(url, content=b"x", headers={**png, "content-encoding": "br"})
            assert brotli.status_code == 415
            zipped = await client.post(url, content=gzip.compress(sf.colour_image("red")),
                                       headers={**png, "content-encoding": "gzip"})
            assert labels_of(zipped) == ["red"]
            unknown = await client.post("/v1/models/nope/classify", content=sf.colour_image("red"),
                                        headers=png)
            assert unknown.status_code == 404 and "nope" in unknown.json()["error"]
            version = await client.post("/v1/models/fake/versions/9/classify", content=sf.colour_image("red"),
                                        headers=png)
            assert version.status_code == 404 and "version" in version.json()["error"]
            timeout = await client.post(url, content=sf.colour_image("red"),
                                        headers={**png, "x-request-timeout-ms": "soon"})
            assert timeout.status_code == 400 and "X-Request-Timeout-Ms" in timeout.json()["error"]
            route = await client.get("/v3/whatever")
            assert route.status_code == 404 and "no route" in route.json()["error"]

    run(main())


def test_overload_deadline_and_runtime_failure_statuses(repository) -> None:
    async def main():
        async with serving(repository, max_queue_size=1, max_batch_size=1) as (client, core):
            hang = np.full((1, 3, 8, 8), -2.0, np.float32)
            blocker = asyncio.ensure_future(client.post("/v2/models/fake/infer", json={
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 8, 8],
                            "data": hang.ravel().tolist()}]}))
            await asyncio.sleep(0.5)
            png = {"content-type": "image/png"}
            queued = asyncio.ensure_future(client.post(CLASSIFY, content=sf.colour_image("red"),
                                                       headers={**png, "x-request-timeout-ms": "300"}))
            await asyncio.sleep(0.1)
            full = await client.post("/v1/models/fake/classify", content=sf.colour_image("red"), headers=png)
            assert full.status_code == 503 and int(full.headers["retry-after"]) >= 1
            assert "queue is full" in full.json()["error"]
            late = await queued
            assert late.status_code == 504 and "deadline" in late.json()["error"]
            blocker.cancel()
            for instance in core.manager.get("fake").current.instances:  # end the hanging batch
                os.kill(instance.worker.pid, signal.SIGKILL)
            fail = np.full((1, 3, 8, 8), -1.0, np.float32)
            failed = await client.post("/v2/models/fake/infer", json={
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 8, 8],
                            "data": fail.ravel().tolist()}]})
            assert failed.status_code == 500 and "injected runtime failure" in failed.json()["error"]
            ok = await client.post("/v1/models/fake/classify", content=sf.colour_image("red"), headers=png)
            assert labels_of(ok) == ["red"]

    run(main())


# -- OIP v2 -------------------------------------------------------------------------------------------------


def test_health_and_metadata(repository) -> None:
    async def main():
        async with serving(repository) as (client, core):
            assert (await client.get("/v2/health/live")).json() == {"live": True}
            assert (await client.get("/v2/health/ready")).status_code == 200
            meta = (await client.get("/v2")).json()
            assert meta["name"] == "ddrnet-serve" and "binary_tensor_data" in meta["extensions"]
            model = (await client.get("/v2/models/fake")).json()
            assert model["versions"] == ["1"] and model["platform"] == "fake"
            assert model["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 3, 8, 8]}
            assert model["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}]
            assert (await client.get("/v2/models/fake/versions/1")).status_code == 200
            assert (await client.get("/v2/models/fake/versions/2")).status_code == 404
            assert (await client.get("/v2/models/fake/ready")).json() == {"name": "fake", "ready": True}
            assert (await client.get("/v2/models/fake/versions/1/ready")).status_code == 200
            assert (await client.get("/v2/models/nope/ready")).status_code == 404
            core.begin_shutdown()
            assert (await client.get("/v2/health/ready")).status_code == 503
            assert (await client.get("/v2/models/fake/ready")).status_code == 503
            refused = await client.post("/v1/models/fake/classify", content=sf.colour_image("red"),
                                        headers={"content-type": "image/png"})
            assert refused.status_code == 503 and "shutting down" in refused.json()["error"]
            assert (await client.get("/v2/health/live")).status_code == 200

    run(main())


def test_infer_json_and_binary_tensors(repository) -> None:
    async def main():
        async with serving(repository) as (client, core):
            images = [sf.colour_image(c) for c in ("blue", "green")]
            tensor = core.manager.get("fake").current.transform.batch(images)
            expected = tensor.mean(axis=(2, 3))
            # JSON FP32 (nested lists), JSON output.
            response = await client.post("/v2/models/fake/infer", json={
                "id": "req-1",
                "inputs": [tensor_input([2, 3, 8, 8], data=tensor.tolist())],
                "outputs": [{"name": "logits"}]})
            body = response.json()
            assert response.status_code == 200, body
            assert (body["id"], body["model_version"]) == ("req-1", "1")
            out = body["outputs"][0]
            assert out["shape"] == [2, 3] and out["datatype"] == "FP32"
            np.testing.assert_allclose(np.array(out["data"]).reshape(2, 3), expected, atol=1e-5)
            # JSON BYTES (base64 strings).
            response = await client.post("/v2/models/fake/versions/1/infer", json={
                "inputs": [bytes_input([2], data=[b64(i) for i in images])]})
            np.testing.assert_allclose(json_logits(response), expected, atol=1e-5)
            # Binary tensor data extension both ways (what tritonclient sends by default).
            raw = b"".join(struct.pack("<I", len(i)) + i for i in images)
            header = json.dumps({
                "inputs": [{"name": "images", "datatype": "BYTES", "shape": [2],
                            "parameters": {"binary_data_size": len(raw)}}],
                "parameters": {"binary_data_output": True}}).encode()
            response = await client.post("/v2/models/fake/infer", content=header + raw,
                                         headers={BINARY_HEADER: str(len(header)),
                                                  "content-type": "application/octet-stream"})
            assert response.status_code == 200, response.text
            length = int(response.headers[BINARY_HEADER])
            meta = json.loads(response.content[:length])
            assert meta["outputs"][0]["parameters"]["binary_data_size"] == 24
            logits = np.frombuffer(response.content[length:], dtype="<f4").reshape(2, 3)
            np.testing.assert_allclose(logits, expected, atol=1e-5)
            # FP32 as binary input, JSON output for that one output.
            header = json.dumps({
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 3, 8, 8],
                            "parameters": {"binary_data_size": tensor.nbytes}}],
                "outputs": [{"name": "logits", "parameters": {"binary_data": False}}]}).encode()
            response = await client.post("/v2/models/fake/infer", content=header + tensor.tobytes(),
                                         headers={BINARY_HEADER: str(len(header))})
            assert BINARY_HEADER not in response.headers
            np.testing.assert_allclose(json_logits(response), expected, atol=1e-5)

    run(main())


BAD_INFER = [
    # (case, json body or (header, binary), extra headers, status, message part)
    ("wrong input name", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3, 8, 8],
                                      "data": [0.0] * 192}]}, {}, 400, "no input 'x'"),
    ("wrong dtype", {"inputs": [{"name": "input", "datatype": "INT32", "shape": [1, 3, 8, 8],
                                 "data": [0] * 192}]}, {}, 400, "FP32"),
    ("unknown dtype", {"inputs": [{"name": "input", "datatype": "FLOAT", "shape": [1],
                                   "data": [0.0]}]}, {}, 400, "datatype"),
    ("wrong shape", {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 4, 4],
                                 "data": [0.0] * 48}]}, {}, 400, "shape"),
    ("data count", {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 8, 8],
                                "data": [0.0] * 10}]}, {}, 400, "192"),
    ("negative dim", {"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 8, 8],
                                  "data": []}]}, {}, 400, "shape"),
    ("no data", {"inputs": [tensor_input([1, 3, 8, 8])]}, {}, 400, "no data"),
    ("strings as FP32", {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1],
                                     "data": ["a"]}]}, {}, 400, "numbers"),
    ("bytes not base64", {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1],
                                      "data": ["%%%"]}]}, {}, 400, "base64"),
    ("bytes undecodable", {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1],
                                       "data": [b64(b"nope")]}]}, {}, 400, "decode"),
    ("no inputs key", {"outputs": []}, {}, 422, "inputs"),
    ("two inputs", {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [0], "data": []}] * 2},
     {}, 400, "exactly one input"),
    ("unknown output", {"inputs": [bytes_input([1], data=[b64(b"x")])], "outputs": [{"name": "probs"}]},
     {}, 400, "no output"),
    ("classification extension", {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1],
                                              "data": [b64(b"x")]}],
                                  "outputs": [{"name": "logits", "parameters": {"classification": 3}}]},
     {}, 400, "classification"),
    ("bad timeout parameter", {"inputs": [], "parameters": {"timeout": -5}}, {}, 400, "timeout"),
    ("header length too big", (b"{}", b""), {BINARY_HEADER: "99"}, 400, BINARY_HEADER),
    ("header length not a number", (b"{}", b""), {BINARY_HEADER: "abc"}, 400, BINARY_HEADER),
    ("binary size past the end", (header(tensor_input([1, 3, 8, 8], binary_data_size=768)), b"\0" * 10),
     {}, 400, "binary_data_size"),
    ("unclaimed binary bytes", (header(tensor_input([1, 3, 8, 8], data=[0.0] * 192)), b"\0" * 8),
     {}, 400, "not claimed"),
    ("raw size mismatch", (header(tensor_input([1, 3, 8, 8], binary_data_size=12)), b"\0" * 12),
     {}, 400, "768"),
    ("bytes element overruns", (header(bytes_input([1], binary_data_size=6)), struct.pack("<I", 50) + b"ab"),
     {}, 400, "declares 50 bytes"),
    ("malformed json", b"{inputs", {}, 400, "malformed JSON"),
]


def test_bad_infer_requests_get_documented_errors(repository) -> None:
    async def main():
        async with serving(repository) as (client, _core):
            for case, body, headers, status, part in BAD_INFER:
                if isinstance(body, dict):
                    content = json.dumps(body).encode()
                elif isinstance(body, tuple):
                    content = body[0] + body[1]
                    headers = {BINARY_HEADER: str(len(body[0])), **headers}
                else:
                    content = body
                response = await client.post("/v2/models/fake/infer", content=content, headers=headers)
                assert response.status_code == status, (case, response.status_code, response.text)
                assert part.lower() in response.json()["error"].lower(), (case, response.text)
            nope = await client.post("/v2/models/nope/infer", json={"inputs": []})
            assert nope.status_code == 404

    run(main())


# -- auth, metrics, docs ------------------------------------------------------------------------------------


def test_bearer_token_guards_inference_only(repository) -> None:
    async def main():
        async with serving(repository, auth_token="s3cret") as (client, core):
            png = {"content-type": "image/png"}
            url = "/v1/models/fake/classify"
            missing = await client.post(url, content=sf.colour_image("red"), headers=png)
            assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
            assert "bearer token" in missing.json()["error"]
            wrong = await client.post(url, content=sf.colour_image("red"),
                                      headers={**png, "authorization": "Bearer nope"})
            assert wrong.status_code == 401
            right = await client.post(url, content=sf.colour_image("red"),
                                      headers={**png, "authorization": "Bearer s3cret"})
            assert labels_of(right) == ["red"]
            infer = await client.post("/v2/models/fake/infer", json={"inputs": []})
            assert infer.status_code == 401
            # refused before the core saw them, yet counted (the core checks the token, the route counts)
            labels = {"model": "fake", "version": "", "protocol": "http", "code": "401"}
            assert sf.sample(core.metrics, "ddrnet_requests_total", **labels) == 3
            for path in ("/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/fake", "/metrics", "/docs",
                         "/openapi.json"):
                assert (await client.get(path)).status_code == 200, path

    run(main())


def test_metrics_move_as_requests_are_served(repository) -> None:
    def value(text: str, prefix: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))

    async def main():
        async with serving(repository) as (client, _core):
            before = (await client.get("/metrics")).text
            ok = 'ddrnet_requests_total{code="200",model="fake",protocol="http",version="1"}'
            assert value(before, ok) == 0
            for colour in ("red", "green", "blue"):
                await client.post("/v1/models/fake/classify", content=sf.colour_image(colour),
                                  headers={"content-type": "image/png"})
            await client.post(CLASSIFY, content=b"junk", headers=PNG)
            response = await client.get("/metrics")
            assert response.headers["content-type"].startswith("text/plain")
            after = response.text
            assert value(after, ok) == 3
            assert value(after, 'ddrnet_requests_total{code="400",model="fake"') == 1
            assert value(after, 'ddrnet_batch_size_count{model="fake",version="1"}') == 3
            assert value(after, 'ddrnet_inference_duration_seconds_count{model="fake",version="1"}') == 3
            info = 'ddrnet_model_info{device="cpu",model="fake",runtime="fake",version="1"}'
            assert value(after, info) == 1
            assert "process_resident_memory_bytes" not in after  # test registry: no process collectors

    run(main())


def test_openapi_documents_routes_and_errors(repository) -> None:
    async def main():
        async with serving(repository) as (client, _core):
            schema = (await client.get("/openapi.json")).json()
            paths = schema["paths"]
            for path in ("/v1/models/{model}/classify", "/v1/models/{model}/versions/{version}/classify",
                         "/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/{model}",
                         "/v2/models/{model}/ready", "/v2/models/{model}/infer", "/metrics"):
                assert path in paths, path
            classify = paths["/v1/models/{model}/classify"]["post"]
            forms = {"image/*", "multipart/form-data", "application/json"}
            assert set(classify["requestBody"]["content"]) >= forms
            assert {"400", "404", "413", "415", "503", "504"} <= set(classify["responses"])
            assert (await client.get("/docs")).status_code == 200

    run(main())


def test_client_disconnect_cancels_the_request() -> None:
    async def main():
        async def receive():
            await asyncio.sleep(0.05)
            return {"type": "http.disconnect"}

        request = types.SimpleNamespace(receive=receive, method="POST", url=types.SimpleNamespace(path="/x"))
        cancelled = asyncio.Event()

        async def work():
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        assert await _until_disconnect(request, work()) is None
        assert cancelled.is_set()

        async def never():
            await asyncio.sleep(30)
            return {"type": "http.disconnect"}

        request.receive = never
        assert await _until_disconnect(request, asyncio.sleep(0.01, result="done")) == "done"

    run(main())


def test_truncated_gzip_body_is_refused(repository) -> None:
    async def main():
        async with serving(repository) as (client, _core):
            whole = gzip.compress(sf.colour_image("red"))
            ok = await client.post(CLASSIFY, content=whole, headers={**PNG, "content-encoding": "gzip"})
            assert labels_of(ok) == ["red"]
            cut = await client.post(CLASSIFY, content=whole[: len(whole) // 2],
                                    headers={**PNG, "content-encoding": "gzip"})
            assert cut.status_code == 400 and "truncated gzip body" in cut.json()["error"]

    run(main())


def test_large_multipart_parts_never_touch_the_disk(repository, monkeypatch) -> None:
    """Parts over Starlette's 1 MiB spool size stay in memory (the body already is): a full disk
    cannot fail an upload."""
    import tempfile

    def no_disk(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    big = png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (700, 700, 3), np.uint8)))
    assert len(big) > 1 << 20
    monkeypatch.setattr(tempfile, "TemporaryFile", no_disk)

    async def main():
        async with serving(repository) as (client, _core):
            response = await client.post(CLASSIFY, files=[("file", ("big.png", big, "image/png"))])
            assert response.status_code == 200, response.text

    run(main())


def test_a_model_answering_nan_is_a_clear_500_not_a_crash(repository) -> None:
    async def main():
        nan_runtime = "tests.support.fake_runtimes:NanRuntime"
        async with serving(repository, runtime=nan_runtime) as (client, _core):
            classify = await client.post(CLASSIFY, content=sf.colour_image("red"), headers=PNG)
            assert classify.status_code == 500
            assert "returned NaN or infinite logits" in classify.json()["error"]
            body = {"inputs": [bytes_input([1], data=[b64(sf.colour_image("red"))])]}
            as_json = await client.post("/v2/models/fake/infer", json=body)
            assert as_json.status_code == 500 and "binary_data outputs carry them" in as_json.json()["error"]
            binary = await client.post("/v2/models/fake/infer",
                                       json={**body, "parameters": {"binary_data_output": True}})
            assert binary.status_code == 200
            raw = binary.content[int(binary.headers[BINARY_HEADER]):]
            assert np.isnan(np.frombuffer(raw, "<f4")).all()

    run(main())


def test_image_lists_over_the_limit_are_refused_before_base64_decoding(repository, monkeypatch) -> None:
    from server import oip_codec

    decoded = []
    real = oip_codec.b64decode
    monkeypatch.setattr(oip_codec, "b64decode", lambda *a: decoded.append(1) or real(*a))

    async def main():
        async with serving(repository, max_images_per_request=4) as (client, _core):
            many = {"images": [b64(sf.colour_image("red"))] * 50}
            refused = await client.post(CLASSIFY, json=many)
            assert refused.status_code == 413 and "declares 50 images" in refused.json()["error"]
            oip = {"inputs": [bytes_input([50], data=[""] * 50)]}
            refused = await client.post("/v2/models/fake/infer", json=oip)
            assert refused.status_code == 413 and "declares 50 images" in refused.json()["error"]
            assert decoded == []
            ok = await client.post(CLASSIFY, json={"images": [b64(sf.colour_image("red"))]})
            assert labels_of(ok) == ["red"] and decoded == [1]

    run(main())


def test_liveness_fails_once_an_instance_stays_down_past_the_bound(repository, monkeypatch) -> None:
    """Restarts that keep failing (here: spawning raises) flip /v2/health/live to 503 after
    --max-worker-down-s, so Kubernetes restarts the pod; readiness is false meanwhile."""
    real_spawn = asyncio.create_subprocess_exec
    broken = {"on": False}

    async def spawn(*args, **kwargs):
        if broken["on"]:
            raise OSError(12, "Cannot allocate memory")
        return await real_spawn(*args, **kwargs)

    monkeypatch.setattr(asyncio, "create_subprocess_exec", spawn)

    async def main():
        async with serving(repository, max_worker_down_s=0.5) as (client, core):
            assert (await client.get("/v2/health/live")).status_code == 200
            broken["on"] = True
            worker = core.manager.get("fake").current.instances[0].worker
            os.kill(worker.pid, signal.SIGKILL)
            for _ in range(100):
                if (await client.get("/v2/health/live")).status_code == 503:
                    break
                await asyncio.sleep(0.05)
            live = await client.get("/v2/health/live")
            assert live.status_code == 503 and live.json() == {"live": False}
            assert (await client.get("/v2/health/ready")).status_code == 503
            assert worker.restart_failures >= 1
            broken["on"] = False  # the cause goes away: the worker comes back, liveness recovers
            for _ in range(200):
                if worker.ready:
                    break
                await asyncio.sleep(0.05)
            assert (await client.get("/v2/health/live")).status_code == 200

    run(main())
