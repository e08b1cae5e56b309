"""Model repository → served models: loading, warm-up, polling, hot swap, draining.

For every model in the repository (or only those named in ``models``) the manager serves the newest
*complete* version (``model.repository.check_version``: manifest valid, every file present with its
recorded size and SHA-256). Serving a version means: its eval transform built from its ``model.json``,
``instances`` worker processes started with the configured runtime and device, each warmed up with
one batch at every batch size the batcher can send (:func:`warmup_batch_sizes`), and a
:class:`~server.batcher.Batcher` in front of them. A model is ready only after all of that.

Polling (every ``poll_interval_s``; 0 = never) hot-swaps a model to a new newest complete version with
no failed or dropped request: the new version's workers are loaded and warmed while the old ones
serve, then the batcher switches generation (new requests go to the new version at once), the old
generation finishes everything already accepted, and only then are its workers stopped. A version
that fails to load or verify is logged, counted in ``ddrnet_model_load_failures_total``, remembered
(not retried every poll) and never served; the current version keeps serving. If the current
version's directory disappears while an older complete version remains, the manager switches to that
one (deleting a bad version is how an operator rolls back); if the repository directory vanishes
altogether, every model keeps serving what it has loaded.

Per-model settings (``<repository>/<model>/config.yaml``, ``server.model_config``): every load and
batcher of a model uses :meth:`ModelManager.settings_for`; a bad file refuses only that model.

At start-up (:meth:`ModelManager.start`) a model whose complete versions all fail to load is a
start-up error (a missing device, a broken runtime), raised as :class:`StartupError`. An empty
repository is not: the server starts unready and picks models up when they are published.

Worker deaths are handled by the worker client (restart with backoff); :class:`ManagedInstance`
makes the batcher wait for a restarting worker instead of failing every batch while it is down, so
only the batch in flight when a worker dies fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from inference.precision import PrecisionError, check_verified
from inference.worker_client import WorkerInstance
from model import repository as repo
from model.manifest import ModelManifest
from model.preprocess import EvalTransform
from server.batcher import Batcher, BatcherConfig
from server.errors import ErrorKind, ServingError
from server.instance import ManagedInstance
from server.metrics import ServerMetrics
from server.model_config import ModelConfigs, settings_part
from server.repository_control import RepositoryControl
from server.served import Lane, ServedModel, ServedVersion
from server.settings import ServerSettings
from server.tracing import Tracing

log = logging.getLogger(__name__)

IMAGES_INPUT = "images"  # the OIP v2 BYTES input of encoded images every model also takes
WARMUP_ALL_SIZES_UP_TO = 16  # above this, warm powers of two and the maximum only


class StartupError(RuntimeError):
    """A model could not be served at start-up; the message names the model and the cause."""


def warmup_batch_sizes(max_batch_size: int, preferred: Sequence[int]) -> list[int]:
    """The batch sizes the batcher can send an instance, each warmed once before serving.

    With static sizes (padding) only those occur; otherwise every size from 1 to ``max_batch_size``
    (runtimes such as ONNX Runtime plan memory per shape, so the first batch of each size is slow),
    thinned out to powers of two above :data:`WARMUP_ALL_SIZES_UP_TO`.
    """
    if preferred:
        return sorted({s for s in preferred if 1 <= s <= max_batch_size})
    if max_batch_size <= WARMUP_ALL_SIZES_UP_TO:
        return list(range(1, max_batch_size + 1))
    sizes = {1 << i for i in range(max_batch_size.bit_length()) if (1 << i) <= max_batch_size}
    return sorted(sizes | {max_batch_size})


InstanceFactory = Callable[[Path, ModelManifest, int], ManagedInstance]


class ModelManager(RepositoryControl):
    """Serves the models of ``settings.model_repository``; see the module docstring.

    ``runtime`` overrides ``settings.runtime`` (a ``module:Class`` custom runtime, e.g. a test's fake
    model: only the operator or a test sets it); ``extra_pythonpath`` is handed to the workers.
    """

    def __init__(
        self,
        settings: ServerSettings,
        metrics: ServerMetrics,
        *,
        runtime: str | None = None,
        extra_pythonpath: Sequence[str] = (),
        instance_factory: InstanceFactory | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.tracing = tracing
        self.runtime = runtime or settings.runtime
        self.extra_pythonpath = list(extra_pythonpath)
        self.repository = Path(settings.model_repository)
        self.models: dict[str, ServedModel] = {}
        self.started = False
        self._factory = instance_factory or self._worker_instance
        self._failed: dict[tuple[str, int, str], str] = {}  # version key -> why it failed
        self._settings_failed: set[tuple[str, str, str]] = set()  # (model, version, settings) that failed
        self._reported: set[tuple[str, int, str]] = set()  # incomplete versions already logged
        self._warned: set[str] = set()
        self._restarts_seen: dict[tuple[int, str], int] = {}
        self.configs = ModelConfigs(settings, self.repository, metrics)
        self._last_error: dict[str, str] = {}  # model -> why its last load failed (repository index)
        self._repository_names: set[str] = set()  # model directories at the last scan
        self._control = asyncio.Lock()  # one explicit load/unload at a time
        self._poll_task: asyncio.Task | None = None
        self._closing = False

    # -- queries -----------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Started, at least one model served, and every served model ready (not draining)."""
        return (
            self.started and not self._closing and bool(self.models)
            and all(m.ready for m in self.models.values())
        )  # fmt: skip

    def has(self, name: str) -> bool:
        return name in self.models

    def get(self, name: str, version: str | None = None, label: str | None = None) -> Lane:
        """The lane of model ``name`` that takes a request naming ``version`` and/or ``label`` (or
        neither: the traffic split, else the newest served version); ServingError NOT_FOUND for an
        unknown model, version or label."""
        served = self.models.get(name)
        if served is None or not served.lanes:
            raise ServingError(ErrorKind.NOT_FOUND, f"unknown model {name!r}", reason="unknown_model")
        return served.route(version, label)

    def settings_for(self, name: str) -> ServerSettings:
        """The effective settings of model ``name``: the server's, with its ``config.yaml`` applied."""
        return self.configs.settings_for(name)

    def _runtime_for(self, name: str) -> str:
        """The manager's runtime (a custom ``module:Class`` given by the operator or a test wins), else
        the model's own setting."""
        if self.runtime != self.settings.runtime:
            return self.runtime
        return self.settings_for(name).runtime

    def describe(self) -> list[dict[str, Any]]:
        return [lane.current.describe() for m in self.models.values() for lane in m.lanes.values()]

    # -- start-up ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the versions each model's policy wants (the newest complete one by default). Raises
        StartupError when a model has complete versions but none of them loads."""
        explicit = self.settings.model_control == "explicit"  # only --models at start, the rest on request
        scan = await asyncio.to_thread(self._scan, self.settings.models if explicit else None)
        for name, versions in scan.items():
            if not versions:
                log.warning("model %s has no complete version yet", name)
                continue
            errors = await self._serve_versions(name, versions)
            if name not in self.models:
                raise StartupError(f"model {name!r} could not be loaded: {errors[0]}")
        if not self.models:
            log.warning("model repository %s has no servable model yet", self.repository)
        self.started = True

    # -- polling -----------------------------------------------------------------------------------

    def start_polling(self) -> None:
        """Poll the repository every ``poll_interval_s`` in the background (nothing when 0)."""
        polls = self.settings.model_control == "poll" and self.settings.poll_interval_s > 0
        if polls and self._poll_task is None:
            self._poll_task = asyncio.get_running_loop().create_task(self._poll_loop())

    async def _poll_loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a poll must never take the server down
                log.exception("repository poll failed; serving continues")

    async def poll_once(self) -> None:
        """Look at the repository once: load new models and versions, retire versions no longer wanted."""
        scan = await asyncio.to_thread(self._scan)
        for name in self.models:
            if name not in scan and name not in self._warned:
                self._warned.add(name)
                log.warning("model %s is gone from %s; still serving version %s",
                            name, self.repository, ", ".join(self.models[name].served_versions))
        for name, versions in scan.items():
            if self._closing:
                return
            self._warned.discard(name)
            if versions:
                await self._serve_versions(name, versions)
                await self._apply_settings(name, dict(versions))

    async def _apply_settings(self, name: str, manifests: dict[int, ModelManifest]) -> None:
        """Reload the served versions of ``name`` whose settings differ from its config.yaml as it is now
        (a drain-free swap each). A reload that fails leaves the version serving with its settings of
        before: logged and counted once per content of the file, never retried until it changes."""
        served = self.models.get(name)
        if served is None or self._closing:
            return
        wanted = settings_part(self.configs.overrides_for(name))
        for version, lane in list(served.lanes.items()):
            manifest = manifests.get(int(version))
            if manifest is None or settings_part(lane.current.overrides) == wanted:
                continue
            key = (name, version, repr(sorted(wanted.items())))
            if key in self._settings_failed:
                continue
            log.info("model %s: its config.yaml changed; reloading version %s with %s", name, version, wanted)
            try:
                await self._swap(served, lane, manifest, remember=False)
            except ServingError as err:
                self._settings_failed.add(key)
                log.error("model %s version %s keeps its previous settings: %s", name, version, err.message)

    async def _serve_versions(self, name: str, versions: list[tuple[int, ModelManifest]]) -> list[str]:
        """Make model ``name`` serve what its policy wants of ``versions`` (complete, newest first): load
        the versions it lacks (one that fails is logged, counted, remembered, and an older one takes its
        place), then, once a wanted version serves, retire the others after they finish their work.
        Returns the load errors. A model keeps serving what it has when nothing wanted loads."""
        manifests = dict(versions)
        failed: set[int] = set()
        errors: list[str] = []
        wanted: list[int] = []
        while not self._closing:
            policy = self.configs.policy_for(name)
            wanted = policy.select([v for v in manifests if v not in failed])
            served = self.models.get(name)
            if served is not None:
                served.policy = policy
            missing = [v for v in wanted if served is None or str(v) not in served.lanes]
            if not missing:
                break
            version = missing[0]
            try:
                await self._add_lane(name, version, manifests[version])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a ServingError is logged already; a bug is still never half-applied
                if not isinstance(exc, ServingError):
                    log.exception("model %s version %d: load failed unexpectedly", name, version)
                    why = f"{type(exc).__name__}: {exc}"
                    exc = self._load_failed(name, version, manifests[version], "load_error", why)
                failed.add(version)
                errors.append(f"version {version}: {exc.message}")
        served = self.models.get(name)
        keep = {str(v) for v in wanted}  # the policy's choice once every wanted version loaded or failed
        if served is not None and not self._closing and keep & set(served.lanes):
            for version in [v for v in served.lanes if v not in keep]:
                await self._retire(served, version)
        return errors

    def _scan(self, only: Sequence[str] | None = None) -> dict[str, list[tuple[int, ModelManifest]]]:
        """Complete, not-failed versions of each model (of ``only`` when given), newest first (runs in a
        thread: hashing)."""
        out: dict[str, list[tuple[int, ModelManifest]]] = {}
        names = repo.list_models(self.repository)
        self._repository_names = set(names)  # what readiness answers from, without touching the disk
        wanted = only if only is not None else self.settings.models
        if wanted:
            names = [n for n in names if n in wanted]
        for name in names:
            if not self.configs.refresh(name):
                continue
            found = []
            for version in reversed(repo.list_versions(self.repository, name)):
                vdir = repo.version_dir(self.repository, name, version)
                try:
                    manifest = repo.check_version(vdir)
                    if manifest.name != name:
                        raise repo.IncompleteVersionError(f"{vdir}: model.json names model {manifest.name!r}")
                except repo.IncompleteVersionError as exc:
                    self._report_incomplete(name, version, vdir, str(exc))
                    continue
                if self._key(name, version, manifest) in self._failed:
                    continue
                found.append((version, manifest))
            out[name] = found
        return out

    def _report_incomplete(self, name: str, version: int, vdir: Path, why: str) -> None:
        try:
            stamp = str(vdir.stat().st_mtime_ns)
        except OSError:
            stamp = ""
        key = (name, version, stamp)
        if key in self._reported:
            return
        self._reported.add(key)
        log.error("model %s version %d is not complete and will not be served: %s", name, version, why)
        self.metrics.model_load_failures_total.labels(name, "incomplete").inc()

    @staticmethod
    def _key(name: str, version: int, manifest: ModelManifest) -> tuple[str, int, str]:
        """A failed version is remembered by its content: rewriting any of its files (model.json, which
        records every other file's SHA-256) makes it a new attempt."""
        return (name, version, hashlib.sha256(manifest.to_json().encode()).hexdigest())

    # -- loading -----------------------------------------------------------------------------------

    def _worker_instance(self, vdir: Path, manifest: ModelManifest, index: int) -> ManagedInstance:
        s = self.settings_for(manifest.name)
        runtime, options = self._runtime_for(manifest.name), {"max_batch_size": s.max_batch_size}
        if s.precision != "fp32":  # the worker's auto takes only runtimes the export verified it on
            options["precision"] = s.precision
        worker = WorkerInstance(
            vdir,
            manifest,
            runtime=runtime,
            options=options,
            device=s.device,
            device_id=s.device_id,
            threads=s.threads_per_instance,
            max_batch_size=s.max_batch_size,
            python=s.runtime_python,
            name=f"{manifest.name}/{manifest.version}#{index}",
            warmup_batch_sizes=warmup_batch_sizes(s.max_batch_size, s.preferred_batch_sizes),
            log_level=s.log_level if s.log_level != "info" else "warning",
            extra_pythonpath=self.extra_pythonpath,
            infer_timeout_s=s.infer_timeout_s,
        )
        return ManagedInstance(worker, restart_wait_s=s.request_timeout_ms / 1000.0)

    async def _load_version(
        self, name: str, version: int, manifest: ModelManifest, remember: bool = True
    ) -> ServedVersion:
        """Start and warm the instances of one version. Raises ServingError (logged and counted; with
        ``remember``, the version is not tried again until its files change)."""
        vdir = repo.version_dir(self.repository, name, version)
        started = time.monotonic()
        log.info("model %s: loading version %d from %s", name, version, vdir)
        settings, runtime = self.settings_for(name), self._runtime_for(name)
        try:
            transform = EvalTransform.for_manifest(manifest, self.settings.max_image_pixels)
        except ValueError as exc:
            why = str(exc)
            raise self._load_failed(name, version, manifest, "invalid_preprocess", why, remember) from None
        try:
            verified = check_verified(manifest.verification, settings.precision, name, version)
        except PrecisionError as exc:
            why = str(exc)
            raise self._load_failed(name, version, manifest, "unverified_precision", why, remember) from None
        explicit = runtime != "auto" and ":" not in runtime
        if settings.precision != "fp32" and explicit and runtime not in verified:
            message = (f"model {name} version {version} was verified for precision {settings.precision} "
                       f"on {', '.join(verified)}, not on {runtime}")
            raise self._load_failed(name, version, manifest, "unverified_precision", message, remember)
        instances = [self._factory(vdir, manifest, i) for i in range(settings.instances or 1)]
        try:
            results = await asyncio.gather(*(i.start() for i in instances), return_exceptions=True)
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures:
                first = failures[0]
                if isinstance(first, asyncio.CancelledError):
                    raise first
                if isinstance(first, ServingError):
                    message = first.message
                else:
                    message = f"{type(first).__name__}: {first}"
                raise self._load_failed(name, version, manifest, "load_error", message, remember)
        except BaseException:
            await asyncio.gather(*(i.stop() for i in instances), return_exceptions=True)
            raise
        info = instances[0].worker.describe()
        seconds = time.monotonic() - started
        self.metrics.model_load_seconds.labels(name, str(version)).observe(seconds)
        served = ServedVersion(
            model=name, version=str(version), version_dir=vdir, manifest=manifest, transform=transform,
            instances=instances, runtime=str(info.get("runtime") or runtime),
            device=str(info.get("device") or settings.device), load_seconds=seconds,
            precision=settings.precision, overrides=self.configs.overrides_for(name),
        )
        log.info("model %s: version %d loaded and warmed in %.1f s (%s)", name, version, seconds, info)
        return served

    def _load_failed(
        self, name: str, version: int, manifest: ModelManifest, reason: str, message: str,
        remember: bool = True,
    ) -> ServingError:
        if remember:
            self._failed[self._key(name, version, manifest)] = message
        self._last_error[name] = message
        self.metrics.model_load_failures_total.labels(name, reason).inc()
        log.error("model %s version %d failed to load and will not be served: %s", name, version, message)
        return ServingError(ErrorKind.UNAVAILABLE, message, reason=reason)

    def _batcher_config(self, name: str) -> BatcherConfig:
        s = self.settings_for(name)
        return BatcherConfig(
            max_batch_size=s.max_batch_size,
            max_queue_delay_ms=s.max_queue_delay_ms,
            preprocess_wait_ms=s.preprocess_wait_ms,
            max_queue_size=s.max_queue_size,
            preferred_batch_sizes=tuple(s.preferred_batch_sizes),
            default_timeout_s=s.request_timeout_ms / 1000.0,
        )

    async def _add_lane(self, name: str, version: int, manifest: ModelManifest) -> None:
        """Load ``version`` of model ``name`` with a batcher of its own and start routing to it."""
        loaded = await self._load_version(name, version, manifest)
        if self._closing:
            await self._stop_instances(loaded.instances)
            raise ServingError(ErrorKind.UNAVAILABLE, "server is shutting down")
        try:
            batcher = Batcher(
                name, loaded.instances, version=loaded.version, config=self._batcher_config(name),
                metrics=self.metrics, item_shape=loaded.item_shape, tracing=self.tracing,
            )
        except Exception as exc:  # e.g. instances that disagree on fixed batch sizes
            await self._stop_instances(loaded.instances)
            why = f"{type(exc).__name__}: {exc}"
            raise self._load_failed(name, version, manifest, "load_error", why) from None
        served = self.models.setdefault(name, ServedModel(name, policy=self.configs.policy_for(name)))
        served.lanes[loaded.version] = Lane(batcher, loaded, {loaded.version: loaded})
        self._publish(served)
        log.info("model %s: serving version %s (versions served: %s)", name, loaded.version,
                 ", ".join(served.served_versions))

    async def _retire(self, served: ServedModel, version: str) -> None:
        """Stop routing to ``version``, let it finish what it accepted, stop its workers."""
        lane = served.lanes.pop(version)
        served.retiring.append(lane)
        self._publish(served)
        log.info("model %s: version %s is no longer wanted; draining it (serving %s)", served.name, version,
                 ", ".join(served.served_versions))
        try:
            await lane.batcher.drain(None)  # every request has a deadline: the drain ends
            await self._stop_instances([i for v in lane.versions.values() for i in v.instances])
        finally:
            served.retiring.remove(lane)
            self.metrics.set_queue_depth(served.name, lane.batcher, -1)
        log.info("model %s: version %s stopped", served.name, version)

    def _publish(self, served: ServedModel) -> None:
        versions = [lane.current for lane in served.lanes.values()]
        self.metrics.set_serving(served.name, [(v.version, v.runtime, v.device) for v in versions])

    async def _swap(
        self, served: ServedModel, lane: Lane, manifest: ModelManifest, remember: bool = True
    ) -> None:
        """Reload ``lane``'s version (its files or the model's config.yaml changed): load + warm new
        instances, switch the batcher, drain and stop the old instances. Atomic: until the batcher has
        switched, any failure stops the new instances and leaves the old ones serving."""
        version = int(lane.current.version)
        loaded = await self._load_version(served.name, version, manifest, remember)
        if self._closing or not lane.batcher.accepting:
            await self._stop_instances(loaded.instances)
            raise ServingError(ErrorKind.UNAVAILABLE, "server is shutting down")
        previous_config = lane.batcher.config
        lane.batcher.config = self._batcher_config(served.name)  # the model's config.yaml as it is now
        try:
            replacing = lane.batcher.switch(
                loaded.instances, version=loaded.version, item_shape=loaded.item_shape
            )
        except Exception as exc:
            lane.batcher.config = previous_config
            await self._stop_instances(loaded.instances)
            if isinstance(exc, ServingError) and exc.kind is ErrorKind.UNAVAILABLE:
                raise  # shutting down: nothing wrong with the version
            raise self._load_failed(served.name, version, manifest, "load_error",
                                    f"{type(exc).__name__}: {exc}", remember) from None
        old = lane.current
        lane.versions[loaded.version] = loaded
        lane.current = loaded  # the batcher switched in the same step (no await in between)
        self._publish(served)
        log.info("model %s: version %s reloaded; draining its old instances", served.name, loaded.version)
        await replacing
        await self._stop_instances(old.instances)
        if lane.versions.get(old.version) is old:  # a reload keeps the version's name for the new one
            lane.versions.pop(old.version, None)

    @staticmethod
    async def _stop_instances(instances: Sequence[ManagedInstance]) -> None:
        await asyncio.gather(*(i.stop() for i in instances), return_exceptions=True)

    # -- health bookkeeping ------------------------------------------------------------------------

    def refresh_metrics(self) -> None:
        """Count worker restarts and failed restart attempts since the last call
        (``ddrnet_worker_restarts_total{reason="worker_died" | "restart_failed"}``)."""
        for served in self.models.values():
            for version in served.loaded():
                for instance in version.instances:
                    for reason, count in (("worker_died", instance.worker.restarts),
                                          ("restart_failed", instance.worker.restart_failures)):
                        key = (id(instance), reason)
                        seen = self._restarts_seen.get(key, 0)
                        if count > seen:
                            self.metrics.worker_restarts_total.labels(served.name, reason).inc(count - seen)
                            self._restarts_seen[key] = count

    def longest_down(self) -> tuple[float, str]:
        """(seconds, instance name) of the served instance longest without a working worker."""
        worst = (0.0, "")
        now = time.monotonic()
        for served in self.models.values():
            for instance in [i for lane in served.lanes.values() for i in lane.current.instances]:
                down = instance.worker.down_for(now)
                if down > worst[0]:
                    worst = (down, instance.worker.name)
        return worst

    # -- shutdown ----------------------------------------------------------------------------------

    async def drain(self, timeout_s: float | None) -> bool:
        """Stop polling, refuse new requests, finish accepted ones (bounded), stop every worker.
        True when everything accepted finished in time."""
        self._closing = True
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._poll_task
            self._poll_task = None
        results = await asyncio.gather(
            *(lane.batcher.drain(timeout_s) for m in self.models.values() for lane in m.all_lanes()),
            return_exceptions=True,
        )
        await self.close()
        return all(r is True for r in results)

    async def close(self) -> None:
        """Stop every worker of every version (idempotent)."""
        self._closing = True
        instances = [i for m in self.models.values() for v in m.loaded() for i in v.instances]
        await self._stop_instances(instances)
        for name in self.models:
            self.metrics.clear_serving(name)
