"""Version policy, labels and traffic split (``server.versions``): the policy picks the served
versions, a label or version pins a request, the split spreads the rest; over the real core with
fake-model workers, through HTTP (classify by label, OIP parameter) and gRPC (ClassifyRequest field,
ModelInfer parameter); policy changes apply at the next poll, versions no longer wanted drain first;
metrics name the version that answered."""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path

import grpc
import httpx
import pytest
import yaml

from protos import classify_pb2, classify_pb2_grpc, grpc_service_pb2, grpc_service_pb2_grpc
from server.errors import ErrorKind, ServingError
from server.grpc_api import HealthReporter, create_server
from server.http_api import create_app
from server.versions import VersionPolicy, route
from tests.support import server_fixtures as sf


def run(coro, timeout: float = 90.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


# -- the policy ---------------------------------------------------------------------------------------


def test_latest_n_specific_and_labelled_versions_are_served() -> None:
    assert VersionPolicy().select([1, 3, 2]) == [3]
    assert VersionPolicy(latest=2).select([1, 3, 2]) == [3, 2]
    assert VersionPolicy(specific=(1, 5)).select([1, 2, 3]) == [1]
    assert VersionPolicy(labels={"stable": 1}).select([1, 2, 3]) == [3, 1]  # a labelled version is served
    assert VersionPolicy(latest=1, labels={"old": 9}).select([1, 2]) == [
        2
    ]  # a label to nothing serves nothing


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"version_policy": {"latest": 2, "specific": [1]}}, "latest or specific, not both"),
        ({"version_policy": {"newest": 2}}, "version_policy: newest is not a policy (latest, specific)"),
        (
            {"version_policy": {"latest": 0}},
            "version_policy.latest: Input should be greater than or equal to 1",
        ),
        ({"version_policy": [1]}, "version_policy must be a mapping"),
        ({"version_labels": {"stable": "two"}}, "version_labels.stable: Input should be a valid integer"),
        ({"version_labels": {"has space": 1}}, "'has space' is not a label"),
        (
            {"version_labels": {"a": 1}, "traffic_split": {"b": 1}},
            "traffic_split: 'b' is not one of version_labels (a)",
        ),
        ({"version_labels": {"a": 1}, "traffic_split": {"a": 0}}, "the weights add up to 0"),
        ({"version_labels": {"a": 1}, "traffic_split": {"a": -1}}, "a weight is a finite number >= 0"),
        (
            {"version_labels": {"a": 1}, "traffic_split": {"a": float("nan")}},
            "a weight is a finite number >= 0",
        ),
    ],
)
def test_bad_policies_are_named(config, message) -> None:
    with pytest.raises(ValueError, match=None) as info:
        VersionPolicy.from_config(config)
    assert message in str(info.value)


def test_routing_by_version_label_and_split() -> None:
    policy = VersionPolicy(
        latest=2, labels={"stable": 2, "canary": 3, "gone": 1}, traffic={"stable": 1, "canary": 3}
    )
    served = ["3", "2"]
    assert route("m", served, policy, None, "stable") == "2"
    assert route("m", served, policy, "3", "canary") == "3"
    assert route("m", served, policy, "2", None) == "2"
    for version, label, kind, text in [
        (
            None,
            "beta",
            ErrorKind.NOT_FOUND,
            "has no version label 'beta' (labels: stable=2, canary=3, gone=1)",
        ),
        (
            None,
            "gone",
            ErrorKind.NOT_FOUND,
            "label 'gone' is version 1, which is not being served (serving 3, 2)",
        ),
        (
            "2",
            "canary",
            ErrorKind.INVALID_ARGUMENT,
            "label 'canary' is version 3, but the request names version 2",
        ),
        ("7", None, ErrorKind.NOT_FOUND, "has no version '7' being served (serving version 3, 2)"),
    ]:
        with pytest.raises(ServingError) as info:
            route("m", served, policy, version, label)
        assert info.value.kind is kind and text in info.value.message
    rng = random.Random(7)
    picks = [route("m", served, policy, None, None, rng) for _ in range(4000)]
    assert 0.72 < picks.count("3") / len(picks) < 0.78  # canary weight 3 of 4
    assert route("m", ["3"], policy, None, None, rng) == "3"  # stable's version not served: only canary
    no_split = VersionPolicy(latest=2)
    assert {route("m", served, no_split, None, None) for _ in range(50)} == {"3"}  # the newest


# -- the real core ------------------------------------------------------------------------------------


def write_config(repository: Path, name: str, config: dict) -> None:
    (repository / name / "config.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    for version in (1, 2, 3):
        sf.make_fake_version(tmp_path, "fake", version)
    write_config(
        tmp_path, "fake", {"version_policy": {"latest": 2}, "version_labels": {"stable": 2, "canary": 3}}
    )
    return tmp_path


@contextlib.asynccontextmanager
async def serving(repository: Path):
    async with sf.started_core(sf.settings_for(repository)) as core:
        health = HealthReporter(core)
        server, port = create_server(core, health)
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        transport = httpx.ASGITransport(app=create_app(core))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
                yield client, channel, core
        finally:
            await channel.close()
            await server.stop(None)


def test_versions_labels_over_http_and_grpc(repository: Path) -> None:
    image = sf.colour_image("red")

    async def main() -> None:
        async with serving(repository) as (client, channel, core):
            listed = (await client.get("/v1/models")).json()["models"][0]
            assert listed["versions"] == ["3", "2"] and listed["version"] == "3"
            assert listed["version_labels"] == {"stable": "2", "canary": "3"}
            assert (await client.get("/v2/models/fake")).json()["versions"] == ["3", "2"]
            index = (await client.post("/v2/repository/index")).json()
            assert [(e["name"], e["version"], e["state"]) for e in index] == [("fake", "3", "READY"),
                                                                               ("fake", "2", "READY")]

            async def classify(path: str) -> httpx.Response:
                return await client.post(path, files={"file": image})

            assert (await classify("/v1/models/fake/classify")).json()["model_version"] == "3"
            assert (await classify("/v1/models/fake/labels/stable/classify")).json()["model_version"] == "2"
            assert (await classify("/v1/models/fake/labels/canary/classify")).json()["model_version"] == "3"
            assert (await classify("/v1/models/fake/versions/2/classify")).json()["model_version"] == "2"
            missing = await classify("/v1/models/fake/versions/1/classify")
            assert missing.status_code == 404 and "serving version 3, 2" in missing.json()["error"]
            unknown = await classify("/v1/models/fake/labels/beta/classify")
            assert unknown.status_code == 404 and "no version label 'beta'" in unknown.json()["error"]
            assert (await client.get("/v2/models/fake/versions/2/ready")).status_code == 200

            # OIP over HTTP: the version_label parameter
            response = await client.post("/v2/models/fake/infer", json=_binary_free_infer("stable"))
            assert response.status_code == 200, response.text
            assert response.json()["model_version"] == "2"
            response = await client.post("/v2/models/fake/infer", json=_binary_free_infer(5))
            assert response.status_code == 400 and "version_label" in response.json()["error"]
            response = await client.post(
                "/v2/models/fake/versions/2/infer", json=_binary_free_infer("canary")
            )
            assert response.status_code == 400 and "label 'canary' is version 3" in response.json()["error"]

            # gRPC: ClassifyRequest.version_label and the ModelInfer parameter
            stub = classify_pb2_grpc.ClassifyStub(channel)
            reply = await stub.Classify(
                classify_pb2.ClassifyRequest(model_name="fake", images=[image], version_label="stable"),
                timeout=30,
            )
            assert reply.model_version == "2"
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Classify(
                    classify_pb2.ClassifyRequest(model_name="fake", images=[image], version_label="beta"),
                    timeout=30,
                )
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            oip = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = grpc_service_pb2.ModelInferRequest(model_name="fake")
            request.parameters["version_label"].string_param = "stable"
            tensor = request.inputs.add(name="images", datatype="BYTES", shape=[1])
            tensor.contents.bytes_contents.append(image)
            assert (await oip.ModelInfer(request, timeout=30)).model_version == "2"

            # every answer is counted under the version that gave it
            ok = answered_by_version(core)
            assert ok == {"2": 3.0, "3": 2.0}  # stable, versions/2, OIP stable | newest, canary
            info_lines = [
                line
                for line in core.metrics.render()[0].decode().splitlines()
                if line.startswith("ddrnet_model_info")
            ]
            assert sorted('version="2"' in line for line in info_lines) == [False, True]

    run(main())


def answered_by_version(core) -> dict[str, float]:
    """HTTP requests answered 200, by the version that answered (``ddrnet_requests_total``)."""
    return {
        v: sf.sample(core.metrics, "ddrnet_requests_total", model="fake", version=v, protocol="http",
                     code="200")
        for v in ("2", "3")
    }


def _binary_free_infer(label) -> dict:
    """An OIP JSON request: the model's FP32 tensor input, with the version_label parameter."""
    return {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 8, 8], "data": [0.0] * 192}],
        "parameters": {"version_label": label},
    }


def test_traffic_split_spreads_unpinned_requests(repository: Path) -> None:
    write_config(
        repository,
        "fake",
        {"version_labels": {"stable": 2, "canary": 3}, "traffic_split": {"stable": 3, "canary": 1}},
    )
    image = sf.colour_image("blue")

    async def main() -> None:
        async with serving(repository) as (client, _, core):
            answers = [
                (await client.post("/v1/models/fake/classify", files={"file": image})).json()["model_version"]
                for _ in range(200)
            ]
            share = answers.count("2") / len(answers)
            assert 0.6 < share < 0.9, share  # 0.75 expected: a 200-draw binomial stays well inside
            counted = answered_by_version(core)
            assert counted == {"2": answers.count("2"), "3": answers.count("3")}

    run(main())


def test_policy_changes_apply_at_the_next_poll_and_old_versions_drain(repository: Path) -> None:
    image = sf.colour_image("green")

    async def main() -> None:
        async with serving(repository) as (client, _, core):
            manager = core.manager
            served = manager.models["fake"]
            assert served.served_versions == ["3", "2"]
            v2_workers = [i.worker for i in served.lanes["2"].current.instances]

            # a new version under latest 2: 4 and 3 serve... but the stable label keeps 2 served
            sf.make_fake_version(repository, "fake", 4)
            await manager.poll_once()
            assert served.served_versions == ["4", "3", "2"]

            # the label moves and the policy narrows: requests in flight meanwhile are all answered
            write_config(
                repository, "fake", {"version_policy": {"latest": 1}, "version_labels": {"stable": 4}}
            )
            requests = [
                asyncio.create_task(client.post("/v1/models/fake/classify", files={"file": image}))
                for _ in range(30)
            ]
            await manager.poll_once()
            answers = await asyncio.gather(*requests)
            assert all(r.status_code == 200 for r in answers), [
                r.text for r in answers if r.status_code != 200
            ]
            assert served.served_versions == ["4"] and not served.retiring
            assert all(not w.ready for w in v2_workers)  # the retired versions' workers were stopped
            response = await client.post("/v1/models/fake/labels/stable/classify", files={"file": image})
            assert response.json()["model_version"] == "4"
            assert (await client.get("/v2/models/fake")).json()["versions"] == ["4"]
            assert sf.sample(core.metrics, "ddrnet_queue_depth", model="fake") == 0

            # a broken file: the model keeps its versions and labels, the problem is counted
            (repository / "fake" / "config.yaml").write_text("traffic_split: {nobody: 1}\n")
            await manager.poll_once()
            assert served.served_versions == ["4"]
            assert (
                sf.sample(
                    core.metrics, "ddrnet_model_load_failures_total", model="fake", reason="invalid_config"
                )
                == 1
            )

    run(main(), timeout=120)


def test_a_specific_policy_serves_only_the_versions_named(repository: Path) -> None:
    write_config(repository, "fake", {"version_policy": {"specific": [1, 3]}})

    async def main() -> None:
        async with serving(repository) as (client, _, core):
            assert core.manager.models["fake"].served_versions == ["3", "1"]
            response = await client.post(
                "/v1/models/fake/versions/1/classify", files={"file": sf.colour_image("red")}
            )
            assert response.json()["model_version"] == "1"

    run(main())


# -- the real server and the client library ------------------------------------------------------------


def test_real_server_labels_with_the_client_library(slim_repository: Path, tmp_path: Path) -> None:
    """``ddrnet serve`` serving two versions with labels; HttpClient/GrpcClient(label=...) pin them."""
    from clients import GrpcClient, HttpClient

    repo = tmp_path / "repo"
    sf.copy_version(slim_repository / "slim" / "1", repo, "slim", 1)
    sf.copy_version(slim_repository / "slim" / "1", repo, "slim", 2)
    write_config(repo, "slim", {"version_labels": {"stable": 1, "canary": 2}})
    proc = sf.ServerProcess(repo, tmp_path / "server.log", "--instances", "1", "--threads-per-instance", "1")
    try:
        proc.start()
        image = sf.photos()[0]
        with HttpClient(proc.http_url, model="slim", label="stable") as client:
            assert client.classify(image).model_version == "1"
        with HttpClient(proc.http_url, model="slim") as client:
            assert client.classify(image).model_version == "2"
        with GrpcClient(proc.grpc_target, model="slim", label="stable") as client:
            assert client.classify(image).model_version == "1"
        with GrpcClient(proc.grpc_target, model="slim", label="canary") as client:
            assert client.classify(image).model_version == "2"
        metrics = httpx.get(f"{proc.http_url}/metrics", timeout=10).text
        info = [line for line in metrics.splitlines() if line.startswith("ddrnet_model_info{")]
        assert len(info) == 2 and {'version="1"' in line for line in info} == {True, False}
    finally:
        proc.kill()
