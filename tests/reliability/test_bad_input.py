"""Bad input, end to end: every row of ``bad_input_cases.rows()`` (issue 8's list on HTTP classify,
HTTP OIP v2 infer, gRPC Classify and gRPC ModelInfer) sent to a real ``ddrnet serve`` process on the
synthetic model. Each gets its documented status (4xx / gRPC code) with a message naming the problem,
never a 500 or a traceback, and the next valid request on the same surface succeeds. Unusual but valid
images (1x1, 16-bit, CMYK, palette, alpha, greyscale, animated GIF) succeed with the right label."""

from __future__ import annotations

import grpc
import httpx
import pytest

from protos import classify_pb2
from tests.support import reliability_fixtures as rf
from tests.support.bad_input_cases import SERVER_ARGS, SURFACES, VALID, Client, Row, has_traceback, rows

ROWS = rows()

#: Issue 8 item 1, case by case: the matrix must keep a row for each (on the surfaces listed).
REQUIRED = {
    "empty": SURFACES, "truncated-jpeg": SURFACES, "truncated-png": SURFACES, "random-bytes": SURFACES,
    "text-file": SURFACES, "image-bomb": SURFACES, "over-pixel-limit": SURFACES,
    "body-too-large": SURFACES, "1x1": SURFACES, "16-bit": SURFACES, "cmyk": SURFACES,
    "palette": SURFACES, "alpha": SURFACES, "greyscale": SURFACES, "animated-gif": SURFACES,
    "wrong-content-type": ("http-classify",), "invalid-base64": ("http-classify", "http-infer"),
    "tensor-wrong-shape": ("http-infer", "grpc-infer"), "tensor-wrong-dtype": ("http-infer", "grpc-infer"),
    "tensor-wrong-name": ("http-infer", "grpc-infer"), "top_k=0": ("http-classify", "grpc-classify"),
    "top_k=-3": ("http-classify",), "top_k=-2": ("grpc-classify",), "top_k=1000000000": ("http-classify",),
    "top_k=2147483647": ("grpc-classify",), "top_k=five": ("http-classify",),
    "unknown-model": SURFACES, "unknown-version": SURFACES,
    "malformed-json": ("http-classify", "http-infer"), "multipart-no-file": ("http-classify",),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_input")
    rf.publish(tmp / "repo")
    proc = rf.SlowServer(tmp / "repo", tmp / "server.log", *SERVER_ARGS).start()
    yield proc
    proc.kill()


@pytest.fixture(scope="module")
def client(server):
    with Client(server.http_url, server.grpc_target) as c:
        yield c


def test_the_matrix_covers_every_case_of_the_issue() -> None:
    have = {(row.case, row.surface) for row in ROWS}
    missing = [(case, s) for case, surfaces in REQUIRED.items() for s in surfaces if (case, s) not in have]
    assert missing == []
    assert len({row.id for row in ROWS}) == len(ROWS), "row ids must be unique"


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input_gets_its_documented_answer(row: Row, client: Client) -> None:
    answer = client.send(row.request)
    assert answer.status == row.status, (row.id, answer.status, answer.message)
    assert not has_traceback(answer.body), answer.body
    if row.ok:
        assert answer.labels and all(answer.labels), answer
        if row.words:
            assert answer.labels[0] == row.words
    else:
        assert answer.status not in (500, "INTERNAL", "UNKNOWN")
        assert row.words.lower() in answer.message.lower(), (row.id, answer.message)
        if isinstance(answer.status, int):
            assert answer.headers.get("content-type") == "application/json"
            assert list(httpx.Response(answer.status, text=answer.body).json()) == ["error"]
    after = client.send(VALID[row.surface])  # the server's next valid request succeeds
    assert (after.status, after.labels) in ((200, ["red"]), ("OK", ["red"])), (row.id, after)


def test_a_malformed_message_in_a_classify_stream_ends_it_with_invalid_argument(server, client) -> None:
    good = classify_pb2.ClassifyRequest(model_name=rf.MODEL, images=[rf.solid("red")], id="a")
    stream = client.channel.stream_stream("/ddrnet.v1.Classify/ClassifyStream")  # bytes in and out
    with pytest.raises(grpc.RpcError) as info:
        list(stream(iter([good.SerializeToString(), b"\x0a\x02\xff\xfe"]), timeout=30))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot parse the request message" in info.value.details()
    replies = [classify_pb2.ClassifyResponse.FromString(r)
               for r in stream(iter([good.SerializeToString()] * 3), timeout=30)]
    assert [r.results[0].predictions[0].label for r in replies] == ["red"] * 3


def test_after_the_matrix_no_500_no_traceback_and_still_ready(server, client) -> None:
    for row in ROWS[:8]:  # the module may run alone: make sure some bad input went through
        client.send(row.request)
    metrics = httpx.get(f"{server.http_url}/metrics", timeout=30).text
    for code in ("500", "INTERNAL", "UNKNOWN"):
        assert rf.metric(metrics, f'ddrnet_requests_total{{code="{code}"') == 0, code
    assert rf.metric(metrics, 'ddrnet_requests_total{code="400"') > 0
    assert rf.metric(metrics, 'ddrnet_requests_total{code="INVALID_ARGUMENT"') > 0
    log = server.stderr()
    assert "Traceback" not in log and "unexpectedly" not in log, log[-3000:]
    assert httpx.get(f"{server.http_url}/v2/health/ready", timeout=30).status_code == 200
    assert server.proc is not None and server.proc.poll() is None
