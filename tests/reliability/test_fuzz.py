"""Property-based fuzzing (hypothesis) of the request parsers, in process and through a live server.

In process, on the real parsing functions and a started service core (synthetic model in real worker
processes): whatever the classify JSON body, multipart body, compressed body, OIP v2 JSON (+ binary
tensor extension) body, or gRPC ModelInferRequest / ClassifyRequest, the only exceptions that escape
are :class:`~server.errors.ServingError` of a client-error kind (400/404/413/415/422), and the one
documented runtime failure of the synthetic model (a batch whose first value is -1: INTERNAL for that
batch). Through a live ``ddrnet serve``: random HTTP requests get 200 or a documented 4xx with a JSON
error and no traceback; random bytes and mutated messages on the gRPC wire get OK, INVALID_ARGUMENT or
NOT_FOUND. (Decode + preprocessing of arbitrary image bytes is fuzzed in tests/model/
test_preprocess_fuzz.py.)
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import zlib
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.requests import Request

from protos import classify_pb2, grpc_service_pb2
from server import grpc_api, http_codec, oip_codec
from server.errors import ErrorKind, ServingError
from tests.support import reliability_fixtures as rf
from tests.support.bad_input_cases import BINARY_HEADER, IMAGES, has_traceback

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow on damaged metadata

CLIENT_KINDS = {ErrorKind.INVALID_ARGUMENT, ErrorKind.PAYLOAD_TOO_LARGE, ErrorKind.UNSUPPORTED_MEDIA,
                ErrorKind.UNPROCESSABLE}
CORE_KINDS = CLIENT_KINDS | {ErrorKind.NOT_FOUND}
INJECTED = "injected runtime failure"  # the synthetic model's documented failure (first value -1)
LIMIT = 64 * 1024
SETTINGS = {"max_request_bytes": LIMIT, "max_image_pixels": 250_000, "max_images_per_request": 4}
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
LIVE = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    repository = tmp_path_factory.mktemp("fuzz") / "repo"
    rf.publish(repository)
    lc = rf.LoopCore(repository, max_batch_size=4, **SETTINGS)
    yield lc
    lc.close()


def check_error(exc: BaseException, kinds: set[ErrorKind]) -> None:
    """``exc`` must be a ServingError of one of ``kinds`` (or the synthetic model's injected failure)."""
    assert isinstance(exc, ServingError), f"{type(exc).__name__}: {exc}"
    if exc.kind is ErrorKind.INTERNAL:
        assert INJECTED in exc.message, exc.message
        return
    assert exc.kind in kinds, exc
    assert exc.message and not has_traceback(exc.message)


# -- strategies -------------------------------------------------------------------------------------------

SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)
ENCODED = st.sampled_from(["red", "1x1", "animated-gif", "truncated-png", "random-bytes", "image-bomb",
                           "empty", "unsupported-format"]).map(lambda name: IMAGES[name]())
IMAGE_BYTES = ENCODED | st.binary(max_size=64)
B64 = IMAGE_BYTES.map(lambda b: base64.b64encode(b).decode()) | st.text(max_size=12)
DIM = st.integers(-2, 9) | st.sampled_from([0, 3, 8, 2**31, 2**62, 2**63 - 1, 10**30])
SHAPE = st.lists(DIM, max_size=5)
NAME = st.sampled_from(["input", "images"]) | st.text(max_size=5)
DATATYPE = st.sampled_from([*oip_codec.DATATYPES, "FLOAT", "", "fp32"])
HEADER_CHARS = st.characters(min_codepoint=32, max_codepoint=126)  # what an HTTP header can carry
FLOATS = st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), max_size=400)


@st.composite
def tensor_inputs(draw) -> dict[str, Any]:
    """An OIP input: sometimes well formed (a batch of n valid tensors or images), often not."""
    kind = draw(st.sampled_from(["tensor", "images", "empty", "random"]))
    n = draw(st.integers(0, 3))
    if kind == "empty":  # no elements, but dimensions numpy cannot represent
        shape = draw(st.permutations([0, *draw(st.lists(st.sampled_from([2**40, 2**63 - 1, 10**30]),
                                                         min_size=1, max_size=2))]))
        out = {"name": draw(NAME), "datatype": draw(DATATYPE), "shape": shape, "data": []}
    elif kind == "tensor":
        out = {"name": "input", "datatype": "FP32", "shape": [n, 3, 8, 8],
               "data": draw(st.lists(st.floats(-3, 3, width=32), min_size=192 * n, max_size=192 * n))}
    elif kind == "images":
        out = {"name": "images", "datatype": "BYTES", "shape": [n], "data": draw(st.lists(B64, min_size=n,
                                                                                      max_size=n))}
    else:
        out = {"name": draw(NAME), "datatype": draw(DATATYPE), "shape": draw(SHAPE),
               "data": draw(JSON | FLOATS | st.lists(B64, max_size=4))}
    if draw(st.integers(0, 3)) == 0:
        out[draw(st.sampled_from(["name", "datatype", "shape", "data"]))] = draw(JSON)
    if draw(st.booleans()):
        out["parameters"] = {"binary_data_size": draw(st.integers(-2, 900) | JSON)}
    return out


@st.composite
def infer_bodies(draw) -> tuple[bytes, str | None]:
    """(body, Inference-Header-Content-Length or None): OIP JSON, a binary tail, random bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=300)), draw(st.none() | st.text(HEADER_CHARS, max_size=6))
    doc: dict[str, Any] = {"inputs": draw(st.lists(tensor_inputs(), max_size=3))}
    if draw(st.booleans()):
        doc["outputs"] = draw(st.lists(st.fixed_dictionaries(
            {"name": st.sampled_from(["logits", "probs"])},
            optional={"parameters": st.dictionaries(st.sampled_from(["binary_data", "classification"]),
                                                    JSON, max_size=2)}), max_size=2))
    if draw(st.booleans()):
        doc["parameters"] = draw(st.dictionaries(st.sampled_from(["binary_data_output", "timeout"]), JSON,
                                                 max_size=2))
    if draw(st.booleans()):
        doc["id"] = draw(JSON)
    if draw(st.integers(0, 5)) == 0:
        doc = draw(JSON)
    text = json.dumps(doc).encode()
    tail = draw(st.binary(max_size=800) | st.just(b""))
    header = draw(st.sampled_from(["exact", "none", "random"]))
    if header == "none":
        return text, None
    if header == "exact":
        return text + tail, str(len(text))
    return text + tail, draw(st.text(HEADER_CHARS, max_size=6))


@st.composite
def classify_json_bodies(draw) -> bytes:
    if draw(st.integers(0, 5)) == 0:
        return draw(st.binary(max_size=200))
    doc: Any = {"images": draw(st.lists(B64, max_size=6))}
    if draw(st.booleans()):
        doc["top_k"] = draw(JSON)
    if draw(st.integers(0, 5)) == 0:
        doc = draw(JSON)
    return json.dumps(doc).encode()


@st.composite
def multipart_bodies(draw) -> tuple[str, bytes]:
    boundary = draw(st.sampled_from(["b0undary", "x", "--", ""]) | st.text("abcXYZ019'-_", max_size=8))
    out = b""
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.sampled_from(["file", "top_k", "images"]) | st.text(max_size=4))
        filename = draw(st.none() | st.sampled_from(["a.png", ""]) | st.text(max_size=4))
        data = draw(IMAGE_BYTES | st.sampled_from([b"3", b"0", b"five"]))
        disposition = f'form-data; name="{name}"' + ("" if filename is None else f'; filename="{filename}"')
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    if draw(st.booleans()):  # damage it
        raw = bytearray(out)
        for _ in range(draw(st.integers(1, 6))):
            if raw:
                raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        out = bytes(raw[: draw(st.integers(0, len(raw)))])
    header = draw(st.sampled_from([f"multipart/form-data; boundary={boundary}", "multipart/form-data",
                                   'multipart/form-data; boundary="unterminated']))
    return header, out


def request_for(headers: dict[str, str], body: bytes = b"") -> Request:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/", "query_string": b"",
             "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]}
    return Request(scope, receive)


# -- in process: HTTP body parsers ------------------------------------------------------------------------


@FUZZ
@given(body=classify_json_bodies())
def test_classify_json_body_parser_and_core(core, body: bytes) -> None:
    try:
        images, top_k = http_codec._classify_json_body(body, 4)
    except Exception as exc:  # the property: only documented errors escape
        check_error(exc, CLIENT_KINDS)
        return
    assert all(isinstance(i, bytes) for i in images)
    try:
        result = core.run(core.core.classify(images, model=rf.MODEL, top_k=top_k, protocol="http"))
    except Exception as exc:
        check_error(exc, CORE_KINDS)
        return
    assert len(result.results) == len(images)


@FUZZ
@given(part=multipart_bodies())
def test_multipart_parser(core, part: tuple[str, bytes]) -> None:
    content_type, body = part
    request = request_for({"content-type": content_type}, body)
    try:
        images, top_k = core.run(http_codec._classify_multipart(request, body, 4))
    except Exception as exc:
        check_error(exc, CLIENT_KINDS)
        return
    assert images and all(isinstance(i, bytes) for i in images)
    assert top_k is None or isinstance(top_k, int)


@FUZZ
@given(data=st.binary(max_size=2000),
       encoding=st.sampled_from(["gzip", "deflate", "identity", "br", "x", ""]),
       compress=st.booleans(), declared=st.none() | st.text(HEADER_CHARS, max_size=6))
def test_body_reader_with_content_encoding(core, data: bytes, encoding: str, compress: bool,
                                           declared: str | None) -> None:
    body = data
    if compress and encoding == "gzip":
        body = gzip.compress(data * 50)
    elif compress and encoding == "deflate":
        body = zlib.compress(data * 50)
    headers = {"content-encoding": encoding}
    if declared is not None:
        headers["content-length"] = declared
    try:
        out = core.run(http_codec.read_body(request_for(headers, body), 4096))
    except Exception as exc:
        check_error(exc, CLIENT_KINDS)
        return
    assert isinstance(out, bytes) and len(out) <= 4096


@FUZZ
@given(part=infer_bodies())
def test_oip_rest_parser_and_core(core, part: tuple[bytes, str | None]) -> None:
    body, header = part
    try:
        parsed, binary_outputs, requested, inputs = http_codec._parse_infer(body, header, 4)
    except Exception as exc:
        check_error(exc, CLIENT_KINDS)
        return
    try:
        response = core.run(core.core.infer(model=rf.MODEL, version=None, inputs=inputs, outputs=requested,
                                            parameters=parsed.parameters, request_id=parsed.id or "",
                                            protocol="http"))
        http_codec.infer_response(response, binary_outputs)
    except Exception as exc:
        check_error(exc, CORE_KINDS)
        return
    assert response.outputs[0].data.shape[1] == len(rf.LABELS)


# -- in process: gRPC messages --------------------------------------------------------------------------

INT64 = st.integers(-(2**63), 2**63 - 1) | st.integers(-2, 9)


@st.composite
def infer_messages(draw) -> Any:
    tensor = grpc_service_pb2.ModelInferRequest.InferInputTensor
    inputs = []
    for spec in draw(st.lists(tensor_inputs(), max_size=3)):
        shape = spec.get("shape")
        if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool)
                                                and -(2**63) <= d < 2**63 for d in shape)):
            shape = draw(st.lists(INT64, max_size=4))
        name = spec.get("name") if isinstance(spec.get("name"), str) else draw(NAME)
        datatype = spec.get("datatype") if isinstance(spec.get("datatype"), str) else draw(DATATYPE)
        contents = None
        if draw(st.booleans()):
            contents = grpc_service_pb2.InferTensorContents(
                fp32_contents=draw(FLOATS), bytes_contents=draw(st.lists(IMAGE_BYTES, max_size=3)),
                int_contents=draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=5)))
        inputs.append(tensor(name=name, datatype=datatype, shape=shape, contents=contents))
    raw: list[bytes] = []
    if draw(st.booleans()):
        for spec in inputs:
            if spec.datatype == "BYTES":
                raw.append(oip_codec.pack_bytes(draw(st.lists(IMAGE_BYTES, max_size=3))))
            elif spec.datatype == "FP32" and len(spec.shape) == 4 and list(spec.shape[1:]) == [3, 8, 8] \
                    and 0 <= spec.shape[0] <= 3:
                n = spec.shape[0] * 192
                raw.append(np.asarray(draw(st.lists(st.floats(-3, 3, width=32), min_size=n, max_size=n)),
                                      np.float32).tobytes())
            else:
                raw.append(draw(st.binary(max_size=800)))
        if draw(st.integers(0, 4)) == 0:
            raw.append(b"extra")
    param = grpc_service_pb2.InferParameter
    parameters = {}
    if draw(st.booleans()):
        parameters["timeout"] = draw(st.sampled_from([
            param(int64_param=draw(INT64)), param(bool_param=True), param(string_param="soon"),
            param(double_param=draw(st.floats())), param()]))
    outputs = [grpc_service_pb2.ModelInferRequest.InferRequestedOutputTensor(name=n)
               for n in draw(st.lists(st.sampled_from(["logits", "probs"]), max_size=2))]
    return grpc_service_pb2.ModelInferRequest(
        model_name=draw(st.sampled_from([rf.MODEL, rf.MODEL, "nope"])),
        model_version=draw(st.sampled_from(["", "1", "2", "x"])), inputs=inputs, raw_input_contents=raw,
        parameters=parameters, outputs=outputs)


@FUZZ
@given(message=infer_messages())
def test_grpc_infer_decoding_and_core(core, message: Any) -> None:
    try:
        inputs = grpc_api._decode_inputs(message, 4)
        parameters = grpc_api.parameter_values(message.parameters)
    except Exception as exc:
        check_error(exc, CLIENT_KINDS)
        return
    try:
        response = core.run(core.core.infer(
            model=message.model_name, version=message.model_version or None, inputs=inputs,
            outputs=[o.name for o in message.outputs] or None, parameters=parameters, protocol="grpc"))
        grpc_api._infer_proto(response)
    except Exception as exc:
        check_error(exc, CORE_KINDS)


@FUZZ
@given(images=st.lists(IMAGE_BYTES, max_size=6), top_k=st.none() | st.integers(-(2**31), 2**31 - 1),
       model=st.sampled_from([rf.MODEL, "nope", ""]), version=st.sampled_from(["", "1", "9"]))
def test_grpc_classify_fields_and_core(core, images, top_k, model, version) -> None:
    message = classify_pb2.ClassifyRequest(model_name=model, model_version=version, images=images,
                                           top_k=top_k)
    message = classify_pb2.ClassifyRequest.FromString(message.SerializeToString())  # as the wire gives it
    try:
        result = core.run(core.core.classify(
            list(message.images), model=message.model_name, version=message.model_version or None,
            top_k=message.top_k if message.HasField("top_k") else None, protocol="grpc"))
    except Exception as exc:
        check_error(exc, CORE_KINDS)
        return
    assert len(result.results) == len(images)


# -- through a live server ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz_live")
    rf.publish(tmp / "repo")
    args = [f"--{k.replace('_', '-')}={v}" for k, v in SETTINGS.items()]
    proc = rf.SlowServer(tmp / "repo", tmp / "server.log", *args, "--max-batch-size", "4").start()
    yield proc
    proc.kill()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.http_url, timeout=60) as client:
        yield client


@st.composite
def http_requests(draw) -> tuple[str, dict[str, str], bytes, dict[str, str]]:
    route = draw(st.sampled_from(["/v1/models/slow/classify", "/v1/models/slow/versions/1/classify",
                                  "/v2/models/slow/infer", "/v2/models/slow/versions/1/infer",
                                  "/v1/models/nope/classify"]))
    headers: dict[str, str] = {}
    form = draw(st.sampled_from(["image", "json", "multipart", "infer", "random"]))
    if form == "image":
        body = draw(IMAGE_BYTES)
        headers["content-type"] = draw(st.sampled_from(["image/png", "image/jpeg", "application/octet-stream",
                                                        "text/plain", "image/x-whatever"]))
    elif form == "json":
        body = draw(classify_json_bodies())
        headers["content-type"] = "application/json"
    elif form == "multipart":
        headers["content-type"], body = draw(multipart_bodies())
    elif form == "infer":
        body, header = draw(infer_bodies())
        if header is not None:
            headers[BINARY_HEADER] = header
        headers["content-type"] = "application/json"
    else:
        body = draw(st.binary(max_size=500))
        headers["content-type"] = draw(st.text(HEADER_CHARS, max_size=12))
    if draw(st.integers(0, 4)) == 0:
        headers["x-request-timeout-ms"] = draw(st.sampled_from(["10000", "0", "-1", "nan", "1e9", "soon"]))
    if draw(st.integers(0, 6)) == 0:
        headers["content-encoding"] = draw(st.sampled_from(["gzip", "deflate", "br"]))
    params = {}
    if draw(st.integers(0, 3)) == 0:
        params["top_k"] = draw(st.sampled_from(["1", "0", "-1", "3", "1001", "x", "", "2.0"]))
    return route, headers, body, params


@LIVE
@given(req=http_requests())
def test_live_http_answers_200_or_a_documented_4xx(http, req) -> None:
    route, headers, body, params = req
    try:
        response = http.post(route, content=body, headers=headers, params=params)
    except httpx.LocalProtocolError:  # the client refuses to send it (e.g. a header it cannot encode)
        return
    assert response.status_code in (200, 400, 404, 413, 415, 422, 500), response.text
    assert not has_traceback(response.text)
    if response.status_code != 200:
        error = response.json()["error"]
        assert error
        if response.status_code == 500:
            assert INJECTED in error, error


@LIVE
@given(method=st.sampled_from(["/ddrnet.v1.Classify/Classify", "/inference.GRPCInferenceService/ModelInfer"]),
       payload=st.binary(max_size=300) | infer_messages().map(lambda m: m.SerializeToString()),
       cut=st.none() | st.integers(0, 300),
       flips=st.lists(st.tuples(st.integers(0, 299), st.integers(0, 255)), max_size=4))
def test_live_grpc_wire_answers_ok_or_a_documented_code(server, method, payload, cut, flips) -> None:
    raw = bytearray(payload if cut is None else payload[:cut])
    for position, value in flips:
        if raw:
            raw[position % len(raw)] = value
    with grpc.insecure_channel(server.grpc_target) as channel:
        try:
            channel.unary_unary(method)(bytes(raw), timeout=60)
        except grpc.RpcError as err:
            code, details = err.code(), err.details() or ""
            assert not has_traceback(details)
            if code is grpc.StatusCode.INTERNAL:
                assert INJECTED in details, details
            else:
                assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), (code, details)


def test_live_server_survived_the_fuzzing(server, http) -> None:
    response = http.post("/v1/models/slow/classify", content=rf.solid("red"),
                         headers={"content-type": "image/png"})
    assert response.status_code == 200 and response.json()["results"][0]["predictions"][0]["label"] == "red"
    log = server.stderr()
    assert "Traceback" not in log and "unexpectedly" not in log, log[-3000:]


def test_no_loop_left_running() -> None:  # the in-process core's loop is closed with its fixture
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
