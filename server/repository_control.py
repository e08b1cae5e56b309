"""Explicit model control, the Open Inference Protocol's repository extension as Triton implements it:
the repository index, load (or reload, a drain-free swap) and unload of one model, on the model manager.

``--model-control`` decides when models load: ``poll`` (the default) serves every model at start and
picks up new versions by polling, ``none`` serves every model at start and never polls, ``explicit``
serves only ``--models`` at start (none when not given) and the others when a client loads them, with
no polling. The front ends (``POST /v2/repository/...``, gRPC ``Repository*``) refuse load and unload
unless the mode is ``explicit``, as Triton does.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from model import repository as repo
from server.errors import ErrorKind, ServingError

if TYPE_CHECKING:
    from server.served import ServedModel

log = logging.getLogger("server.model_manager")


class RepositoryControl:
    """The repository extension's operations; mixed into ``server.model_manager.ModelManager`` (whose
    state they use: the repository, the served models, the load steps and the failure memory)."""

    models: dict[str, ServedModel]
    repository: Any
    settings: Any
    metrics: Any
    _control: asyncio.Lock
    _failed: dict[tuple[str, int, str], str]
    _last_error: dict[str, str]
    _repository_names: set[str]

    def in_repository(self, name: str) -> bool:
        """Whether the repository had a directory for model ``name`` at the last scan (a request never
        makes the server list or open anything)."""
        return name in self._repository_names

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Every model of the repository and every served one: each served version (else the newest
        version), state ``READY`` or ``UNAVAILABLE`` and why."""
        out = []
        self._repository_names = set(repo.list_models(self.repository))
        for name in sorted(self._repository_names | set(self.models)):
            served = self.models.get(name)
            if served is not None and served.ready:  # one entry per served version, as Triton lists them
                out.extend({"name": name, "version": version, "state": "READY", "reason": ""}
                           for version in served.served_versions)
            elif not ready_only:
                versions = repo.list_versions(self.repository, name)
                version = served.current.version if served else (str(versions[-1]) if versions else "")
                why = "loading or restarting" if served else self._last_error.get(name, "not loaded")
                out.append({"name": name, "version": version, "state": "UNAVAILABLE", "reason": why})
        return out

    async def load_model(self, name: str) -> None:
        """Load the versions model ``name``'s policy wants (the newest complete one by default), or
        reload a served model: its versions and labels as its config.yaml says now, each version kept
        reloaded with its current settings (drain-free swaps). ServingError: NOT_FOUND for a model the
        repository lacks, INVALID_ARGUMENT naming why no version loaded. A request repeats versions that
        failed before (their files may be fixed)."""
        async with self._control:
            if name not in repo.list_models(self.repository):
                raise ServingError(ErrorKind.NOT_FOUND, f"model {name!r} is not in the repository")
            self._failed = {k: v for k, v in self._failed.items() if k[0] != name}
            versions = (await asyncio.to_thread(self._scan, [name])).get(name, [])
            if not versions:
                why = self._last_error.get(name, "no complete version (see the log)")
                raise ServingError(ErrorKind.INVALID_ARGUMENT, f"model {name!r} could not be loaded: {why}")
            served = self.models.get(name)
            kept = set(served.lanes) if served is not None else set()
            errors = await self._serve_versions(name, versions)
            served = self.models.get(name)
            if served is None:
                why = errors[0] if errors else "no version loaded (see the log)"
                raise ServingError(ErrorKind.INVALID_ARGUMENT, f"model {name!r} could not be loaded: {why}")
            manifests = {str(v): m for v, m in versions}
            for version in sorted(kept & set(served.lanes) & set(manifests), key=int, reverse=True):
                try:
                    await self._swap(served, served.lanes[version], manifests[version])
                except ServingError as err:  # the version keeps its instances
                    raise ServingError(ErrorKind.INVALID_ARGUMENT, f"model {name!r} version {version} could "
                                       f"not be reloaded: {err.message}") from None
            self._last_error.pop(name, None)

    async def unload_model(self, name: str, timeout_s: float | None = None) -> None:
        """Stop serving ``name``: refuse new requests, finish accepted ones, stop its workers. NOT_FOUND
        when it is not being served."""
        async with self._control:
            served = self.models.get(name)
            if served is None:
                raise ServingError(ErrorKind.NOT_FOUND, f"model {name!r} is not loaded")
            limit = timeout_s if timeout_s is not None else self.settings.shutdown_timeout_s
            lanes = served.all_lanes()
            await asyncio.gather(*(lane.batcher.drain(limit) for lane in lanes))  # new requests: UNAVAILABLE
            await self._stop_instances([i for v in served.loaded() for i in v.instances])
            for lane in lanes:
                self.metrics.set_queue_depth(name, lane.batcher, -1)
            del self.models[name]
            self.metrics.clear_serving(name)
            self._last_error[name] = "unloaded"
            log.info("model %s: unloaded", name)
