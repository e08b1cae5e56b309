"""MindSpore adapter: ``mindspore.load`` + ``nn.GraphCell`` on a version's MindIR.

Uses the dynamic-batch ``model.mindir`` when present (any batch size); when only fixed-batch files
(``files.fixed_batch``, e.g. ``model_b4.mindir``) exist, or ``options["fixed_batch"]`` asks for them,
it loads one GraphCell per file and accepts exactly those sizes. Devices: ``cpu``, ``gpu``,
``ascend`` with a device id, chosen with ``mindspore.set_device`` before anything runs; a device the
installed MindSpore cannot use is a RuntimeUnavailableError. ``threads`` sets the CPU kernel thread
pool (``mindspore.device_context.cpu.op_tuning.threads_num``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from inference.runtimes.base import (
    ModelFileError,
    Runtime,
    RuntimeUnavailableError,
    as_batch,
    check_device,
    options_threads,
)

if TYPE_CHECKING:
    from model.manifest import ModelManifest

LOG = logging.getLogger(__name__)
_MS_DEVICE = {"cpu": "CPU", "gpu": "GPU", "ascend": "Ascend"}


def _select_device(ms: Any, device: str, device_id: int) -> None:
    """Set MindSpore's device, first checking the installed package can use it (MindSpore would
    otherwise fail later, at the first kernel launch, with a long message)."""
    from model.ms_device import use_device

    target = _MS_DEVICE[device]
    if device != "cpu":
        module = getattr(getattr(ms, "device_context", None), device, None)
        if module is not None:
            if not module.is_available():
                raise RuntimeUnavailableError(
                    f"MindSpore {ms.__version__} cannot use device {target}: this package or machine "
                    f"has no {target} support (is the {target} build and driver installed?)"
                )
            count = module.device_count()
            if device_id >= count:
                raise RuntimeUnavailableError(
                    f"MindSpore sees {count} {target} device(s); device id {device_id} does not exist"
                )
    try:
        use_device(target, device_id)
    except (RuntimeError, ValueError) as exc:
        raise RuntimeUnavailableError(f"MindSpore cannot use device {target}:{device_id}: {exc}") from None


def _set_threads(ms: Any, threads: int) -> None:
    op_tuning = getattr(getattr(getattr(ms, "device_context", None), "cpu", None), "op_tuning", None)
    if op_tuning is None or not hasattr(op_tuning, "threads_num"):  # MindSpore < 2.5
        ms.set_context(runtime_num_threads=threads)
        return
    try:
        op_tuning.threads_num(threads)
    except RuntimeError as exc:  # once per process; a worker process loads one model
        LOG.warning("MindSpore CPU threads were set before in this process, kept: %s", exc)


class MindSporeRuntime(Runtime):
    name = "mindspore"

    def __init__(self) -> None:
        super().__init__()
        self._ms: Any = None
        self._cells: dict[int, Any] = {}  # batch size -> GraphCell; key 0 = the dynamic-batch graph

    def load(
        self,
        version_dir: str,
        manifest: ModelManifest,
        device: str = "cpu",
        device_id: int = 0,
        options: dict[str, Any] | None = None,
    ) -> None:
        options = dict(options or {})
        if str(options.get("precision") or "fp32") != "fp32":
            raise RuntimeUnavailableError(
                f"the mindspore runtime serves fp32 only, not {options['precision']} (inference.precision)"
            )
        self.device = check_device(device, device_id)
        self.device_id = device_id
        self.threads = options_threads(options)
        if self.device == "cpu":
            # Before the first convolution: MindSpore 2.10's oneDNN otherwise runs 3x3 convs with a
            # reference kernel on AVX-512 CPUs, ~50x slower (model/onednn.py, BENCHMARKS.md).
            from model.onednn import configure_onednn

            configure_onednn()
        try:
            import mindspore as ms
            from mindspore import nn
        except ImportError as exc:
            raise RuntimeUnavailableError(f"mindspore is not installed in this Python ({exc})") from None
        self._ms = ms
        ms.set_context(mode=ms.GRAPH_MODE)
        _select_device(ms, self.device, device_id)
        if self.threads is not None:
            _set_threads(ms, self.threads)

        dynamic = manifest.existing_path(version_dir, "mindir")
        fixed = manifest.fixed_batch_paths(version_dir)
        if options.get("fixed_batch") and not fixed:
            raise ModelFileError(f"{version_dir} lists no fixed-batch MindIR files (files.fixed_batch)")
        if dynamic is not None and not options.get("fixed_batch"):
            files = {0: dynamic}
        elif fixed:
            files = fixed
        else:
            raise ModelFileError(f"{version_dir} has no MindIR (model.mindir) for the mindspore runtime")
        for size, path in files.items():
            try:
                self._cells[size] = nn.GraphCell(ms.load(path))
            except (RuntimeError, ValueError) as exc:
                raise ModelFileError(f"mindspore cannot load {path}: {exc}") from None
        self.model_file = files[min(files)]
        LOG.debug("loaded %s", files)

    @property
    def supported_batch_sizes(self) -> list[int] | None:
        if not self._cells or 0 in self._cells:
            return None
        return sorted(self._cells)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        batch = as_batch(batch)
        cell = self._cells[0] if 0 in self._cells else self._cells.get(batch.shape[0])
        if cell is None:
            raise ValueError(
                f"batch size {batch.shape[0]} is not one of the fixed sizes {self.supported_batch_sizes}"
            )
        out = cell(self._ms.Tensor(batch))
        return np.asarray(out.asnumpy(), dtype=np.float32)

    def library_version(self) -> str:
        return str(getattr(self._ms, "__version__", ""))

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if len(self._cells) > 1:
            info["file"] = f"{len(self._cells)} fixed-batch MindIR files"
        return info

    def close(self) -> None:
        self._cells.clear()
