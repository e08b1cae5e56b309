"""schemathesis against the server's own OpenAPI document (``/openapi.json``) on a live ``ddrnet serve``.

Every operation is driven with schema-valid requests (positive), schema-invalid ones (negative), and
with random model/version path parameters; each response is checked by schemathesis: no 5xx, the
status code, content type, headers and body conform to the document, invalid data is rejected, a
missing or wrong bearer token is refused (the server runs with ``--auth-token``).

Left out on purpose: schemathesis's ``positive_data_acceptance`` (schema-valid must mean 2xx). An
image body is ``format: binary`` and a tensor's ``data`` is any JSON: the document cannot say "bytes
that decode as an image" or "as many values as the shape holds", so a schema-valid request that is
not an image is rightly a 400.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from tests.support import reliability_fixtures as rf

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis (the dev extra) is not installed")
from schemathesis import GenerationMode  # noqa: E402

TOKEN = "schemathesis-token"
EXAMPLES = 40
EXCLUDED = [schemathesis.checks.positive_data_acceptance]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("schemathesis")
    rf.publish(tmp / "repo")
    proc = rf.SlowServer(tmp / "repo", tmp / "server.log", "--max-request-bytes", "65536",
                         "--auth-token", TOKEN, "--max-batch-size", "4").start()
    yield proc
    proc.kill()


@pytest.fixture(scope="module")
def schema(server):
    return schemathesis.openapi.from_url(f"{server.http_url}/openapi.json")


def run_operation(operation, base_url: str, mode: GenerationMode, served: bool, seen: dict) -> None:
    path_parameters = None
    if served:  # aim at the model being served, or nearly every request is a 404
        wanted = (("model", rf.MODEL), ("version", "1"))
        path_parameters = {k: v for k, v in wanted if f"{{{k}}}" in operation.path}
    strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters or None,
                                     headers={"Authorization": f"Bearer {TOKEN}"})

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def check(case) -> None:
        response = case.call(base_url=base_url, timeout=60)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        case.validate_response(response, excluded_checks=EXCLUDED)

    try:
        check()
    except Unsatisfiable:  # nothing to make invalid (an operation without parameters or body)
        assert mode is GenerationMode.NEGATIVE


@pytest.mark.parametrize(
    ("mode", "served"),
    [(GenerationMode.POSITIVE, True), (GenerationMode.NEGATIVE, True), (GenerationMode.POSITIVE, False)],
    ids=["positive", "negative", "random-names"],
)
def test_every_operation_conforms_to_the_openapi_document(schema, server, mode, served) -> None:
    seen: dict[int, int] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 13
    for operation in operations:
        run_operation(operation, server.http_url, mode, served, seen)
    assert not any(code >= 500 for code in seen), seen
    rejected = sum(v for k, v in seen.items() if 400 <= k < 500)
    if mode is GenerationMode.NEGATIVE:  # invalid requests: a 200 is luck (a mutation that stays valid)
        assert rejected > 0, seen
    elif served:
        assert seen.get(200, 0) > 0 and rejected > 0, seen
    else:
        assert seen.get(404, 0) > 0, seen
    log = server.stderr()
    assert "Traceback" not in log, log[-3000:]
