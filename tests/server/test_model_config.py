"""Per-model settings (``<repository>/<model>/config.yaml``, ``server.model_config``): read, merged and
validated like the options; applied to that model's instances, batcher and deadlines only; shown in
``/v1/models``; a bad file refuses that model (log line, load-failure metric) while the others serve."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from server.model_config import MAX_BYTES, ModelConfigError, effective_settings, read_overrides
from tests.support import server_fixtures as sf


def _base(tmp_path: Path):
    return sf.settings_for(tmp_path, instances=None, threads_per_instance=None)


def test_no_file_means_no_overrides(tmp_path: Path) -> None:
    assert read_overrides(tmp_path) == ({}, "")
    (tmp_path / "config.yaml").write_text("# nothing set\n")
    overrides, stamp = read_overrides(tmp_path)
    assert overrides == {} and len(stamp) == 64


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a\n- b\n", "must be a mapping of setting: value, got list"),
        ("max_batch_size: [\n", "not valid YAML"),
        ("auth_token: x\nmodel_repository: /\n", "auth_token, model_repository cannot be set per model"),
    ],
)
def test_unusable_files_are_named(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(ModelConfigError, match=message):
        read_overrides(tmp_path)


def test_an_oversized_file_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("#" * (MAX_BYTES + 1))
    with pytest.raises(ModelConfigError, match=f"larger than {MAX_BYTES} bytes"):
        read_overrides(tmp_path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_batch_size": 0}, r"max_batch_size: Input should be greater than or equal to 1"),
        ({"max_batch_size": 4, "preferred_batch_sizes": [8]}, "preferred batch size 8 exceeds"),
        ({"precision": "fp16"}, "precision fp16 is not served on device cpu"),
        ({"runtime": "tensorflow"}, r"runtime: Input should be"),
    ],
)
def test_values_are_validated_like_the_options(tmp_path: Path, overrides: dict, message: str) -> None:
    with pytest.raises(ModelConfigError, match=message):
        effective_settings(_base(tmp_path), overrides, "models/m/config.yaml")


def test_merging_rederives_the_paired_placement(tmp_path: Path) -> None:
    base = _base(tmp_path)
    merged = effective_settings(base, {"instances": 2, "max_batch_size": 3})
    assert (merged.instances, merged.max_batch_size) == (2, 3)
    assert merged.threads_per_instance == max(1, (base.instances * base.threads_per_instance) // 2)
    assert merged.poll_interval_s == base.poll_interval_s and merged.http_port == base.http_port
    assert effective_settings(base, {}) is base


def test_settings_apply_to_their_model_only_and_a_bad_file_refuses_only_its_model(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    for name in ("tuned", "plain", "broken"):
        sf.make_fake_version(repository, name, 1)
    (repository / "tuned" / "config.yaml").write_text(
        "max_batch_size: 2\nmax_queue_size: 5\nmax_queue_delay_ms: 3\nrequest_timeout_ms: 1500\n")
    (repository / "broken" / "config.yaml").write_text("max_batch_size: lots\n")
    settings = sf.settings_for(repository, max_batch_size=8)

    async def main() -> None:
        async with sf.started_core(settings) as core:
            manager = core.manager
            assert sorted(manager.models) == ["plain", "tuned"]
            tuned, plain = manager.models["tuned"], manager.models["plain"]
            assert (tuned.batcher.config.max_batch_size, tuned.batcher.config.max_queue_size) == (2, 5)
            assert tuned.batcher.config.max_queue_delay_ms == 3
            assert (plain.batcher.config.max_batch_size, plain.batcher.config.max_queue_size) == (8, 256)
            assert manager.settings_for("plain") is settings
            statuses = {m.name: m.settings for m in core.models()}
            assert statuses == {"tuned": {"max_batch_size": 2, "max_queue_size": 5, "max_queue_delay_ms": 3,
                                          "request_timeout_ms": 1500}, "plain": {}}
            # the model's own timeout bounds its deadlines; another model keeps the server's
            import time

            now = time.monotonic()
            assert core.deadline(None, "tuned") - now == pytest.approx(1.5, abs=0.2)
            assert core.deadline(None, "plain") - now == pytest.approx(30.0, abs=0.2)
            results = await core.classify([sf.colour_image("red")] * 5, model="tuned", protocol="http")
            assert [r[0].label for r in results.results] == ["red"] * 5
            assert sf.sample(core.metrics, "ddrnet_model_load_failures_total", model="broken",
                             reason="invalid_config") == 1.0
            # a poll does not report the same bad file again
            await manager.poll_once()
            assert sf.sample(core.metrics, "ddrnet_model_load_failures_total", model="broken",
                             reason="invalid_config") == 1.0
            # fixed: the model is picked up by the next poll
            (repository / "broken" / "config.yaml").write_text("max_batch_size: 4\n")
            await manager.poll_once()
            assert manager.models["broken"].batcher.config.max_batch_size == 4
            # an explicit load of a served model reloads it with its file as it is now (drain-free swap)
            (repository / "tuned" / "config.yaml").write_text("max_batch_size: 3\n")
            old = manager.models["tuned"].current
            await manager.load_model("tuned")
            reloaded = manager.models["tuned"]
            assert reloaded.current is not old and reloaded.current.version == "1"
            lane = reloaded.default
            assert list(lane.versions) == ["1"] and lane.versions["1"] is reloaded.current
            assert reloaded.batcher.config.max_batch_size == 3
            assert reloaded.current.overrides == {"max_batch_size": 3}
            results = await core.classify([sf.colour_image("green")] * 4, model="tuned", protocol="http")
            assert [r[0].label for r in results.results] == ["green"] * 4

    asyncio.run(main())


@pytest.mark.slow
def test_real_server_batches_within_the_models_own_limit(slim_repository: Path, tmp_path: Path) -> None:
    """``ddrnet serve`` with a model whose config.yaml caps batches at 2 (the server's default is 8):
    concurrent requests never make a larger batch, and /v1/models shows the setting."""
    import concurrent.futures
    import shutil

    import httpx

    repository = tmp_path / "repo"
    shutil.copytree(slim_repository, repository)
    (repository / "slim" / "config.yaml").write_text("max_batch_size: 2\npreferred_batch_sizes: []\n")
    server = sf.ServerProcess(repository, tmp_path / "server.log", "--instances", "1",
                              "--threads-per-instance", "1").start()
    try:
        image = sf.photos()[0]
        url = f"{server.http_url}/v1/models/slim/classify"
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: httpx.post(url, files={"file": image}, timeout=60).status_code,
                                  range(24)))
        assert codes == [200] * 24
        [entry] = httpx.get(f"{server.http_url}/v1/models").json()["models"]
        assert entry["settings"] == {"max_batch_size": 2, "preferred_batch_sizes": []}
        from prometheus_client.parser import text_string_to_metric_families

        families = text_string_to_metric_families(httpx.get(f"{server.http_url}/metrics").text)
        [batches] = [f for f in families if f.name == "ddrnet_batch_size"]
        count = next(s.value for s in batches.samples if s.name.endswith("_count"))
        within = next(s.value for s in batches.samples if s.labels.get("le") == "2.0")
        assert count >= 12 and within == count  # every batch held at most 2 images
    finally:
        server.kill()


def test_a_changed_file_reloads_the_served_versions_at_the_next_poll(tmp_path: Path) -> None:
    """Poll mode: a changed config.yaml reloads the model's served versions with it (drain-free: the
    requests in flight are all answered); a reload that fails keeps the version serving as it was,
    is counted once, and is not retried until the file changes again."""
    repository = tmp_path / "repo"
    sf.make_fake_version(repository, "tuned", 1)
    config = repository / "tuned" / "config.yaml"
    config.write_text("max_batch_size: 2\n")

    async def main() -> None:
        async with sf.started_core(sf.settings_for(repository, max_batch_size=8)) as core:
            manager = core.manager
            served = manager.models["tuned"]
            first = served.current
            assert served.batcher.config.max_batch_size == 2
            await manager.poll_once()
            assert served.current is first  # nothing changed: nothing reloaded

            config.write_text("max_batch_size: 4\nmax_queue_delay_ms: 1\n")
            requests = [asyncio.create_task(core.classify([sf.colour_image("red")], model="tuned",
                                                          protocol="http")) for _ in range(20)]
            await manager.poll_once()
            answers = await asyncio.gather(*requests)
            assert all(a.results[0][0].label == "red" for a in answers)
            assert served.current is not first and served.current.version == "1"
            assert served.batcher.config.max_batch_size == 4
            assert served.current.overrides == {"max_batch_size": 4, "max_queue_delay_ms": 1}
            assert all(not i.worker.ready for i in first.instances)  # the old instances were stopped

            # a setting the version cannot load with (int8 was never verified): it keeps serving as it was
            second = served.current
            config.write_text("max_batch_size: 4\nmax_queue_delay_ms: 1\nprecision: int8\n"
                              "runtime: onnxruntime\n")
            await manager.poll_once()
            await manager.poll_once()
            assert served.current is second and served.batcher.config.max_batch_size == 4
            assert sf.sample(core.metrics, "ddrnet_model_load_failures_total", model="tuned",
                             reason="unverified_precision") == 1.0
            result = await core.classify([sf.colour_image("blue")], model="tuned", protocol="http")
            assert result.results[0][0].label == "blue"
            # fixed again: the next poll reloads
            config.write_text("max_batch_size: 3\n")
            await manager.poll_once()
            assert served.batcher.config.max_batch_size == 3 and served.current is not second

    asyncio.run(asyncio.wait_for(main(), 120))
