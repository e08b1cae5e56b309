"""MindSpore Lite adapter (``mindspore_lite``): the product's primary serving runtime.

Runs under Python 3.7 with only numpy and mindspore_lite (PyPI's mindspore-lite 2.0.0 is cp37-only),
and equally under newer Lite releases (2.1 … 2.x, Python 3.9–3.11, from MindSpore's download site).
Both share the API used here: ``Context().target = [device]``, ``context.cpu.thread_num`` /
``inter_op_parallel_num``, ``context.gpu.device_id`` / ``context.ascend.device_id`` (Ascend310 and
up), ``Model.build_from_file(path, ModelType.MINDIR, context)``, ``get_inputs``, ``resize``,
``predict``, ``Tensor.set_data_from_numpy`` / ``get_data_to_numpy``. Lite 1.x (``CPUDeviceInfo``
style contexts) is refused with a clear message.

Which file is loaded, first that works:

1. the version's Lite file (``files.lite``, ``model.ms``): a model produced by Lite's converter.
   The cloud-inference packages (2.x) run the converter's MindIR output (``save_type MINDIR``); the
   device-side flatbuffer format (``MINDIR_LITE``) is tried second.
2. the version's ``model.mindir`` from MindSpore, when this Lite can read it. Lite 2.0 cannot
   ("can only support the maximum mind ir version: 1", MindSpore 2.10 writes version 3), so 2.0.x
   skips this step instead of logging a failed attempt; newer releases try it.
3. ``model.onnx`` converted by ``mindspore_lite.Converter`` (FmkType.ONNX) at load time into a cache
   directory outside the published version (``options["cache_dir"]``, default
   ``~/.cache/ddrnet-serve/lite``), keyed by the ONNX file's SHA-256 and the Lite version, written
   aside and renamed so concurrent workers never read a half-written file. The converted model keeps
   the dynamic batch dimension; ``infer`` resizes the input for each new batch size.

Precision (option ``precision``): ``fp32``, or ``fp16`` on gpu and ascend, set as Lite's
``precision_mode`` for the device (``_PRECISION_MODES``); int8 and bf16 are refused with a message.

Each candidate is checked with one batch-1 prediction right after building: some combinations build
fine and fail only at predict (e.g. a ``MINDIR_LITE`` file under the cloud package).

``python -m inference.runtimes.lite_rt convert MODEL.onnx OUTPUT`` converts from the command line (for
an exporter running in the main environment, where mindspore_lite cannot be imported next to
MindSpore).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

from inference.runtimes.base import (
    ModelFileError,
    Runtime,
    RuntimeUnavailableError,
    as_batch,
    check_device,
    input_hw,
    options_threads,
)

if TYPE_CHECKING:
    from model.manifest import ModelManifest

LOG = logging.getLogger(__name__)
SOURCES = ("auto", "lite", "mindir", "onnx")
_DEVICE_NODES = {"gpu": "/dev/nvidia%d", "ascend": "/dev/davinci%d"}
# Lite's documented ``precision_mode`` values per device for the precision switch (inference.precision).
# Ascend: fp32 keeps float32 wherever the chip has it (Ascend310's cube units compute convolutions in
# float16 whatever is asked); fp16 forces float16. GPU: float32, or float16 where kernels have it.
_PRECISION_MODES = {
    "gpu": {"fp32": "enforce_fp32", "fp16": "preferred_fp16"},
    "ascend": {"fp32": "preferred_fp32", "fp16": "enforce_fp16"},
}


def import_lite() -> Any:
    try:
        import mindspore_lite as mslite
    except ImportError as exc:
        raise RuntimeUnavailableError(
            f"mindspore_lite is not importable in Python {sys.version.split()[0]} ({exc}); PyPI's "
            "mindspore-lite 2.0.0 needs Python 3.7 (scripts/setup_lite_py37.sh)"
        ) from None
    if not hasattr(mslite.Context(), "target"):
        raise RuntimeUnavailableError(
            f"MindSpore Lite {mslite.__version__} is too old: this adapter needs the 2.x Context API"
        )
    return mslite


def version_tuple(version: str) -> tuple:
    """``"2.0.0"`` → ``(2, 0, 0)``; suffixes such as ``rc1`` are dropped."""
    parts = []
    for piece in str(version).split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def reads_mindspore_mindir(version: str) -> bool:
    """False for Lite releases known (measured here) to refuse MindSpore 2.x MindIR files ("can only
    support the maximum mind ir version: 1"): 2.0.x. The exporter converts from ONNX for those."""
    return version_tuple(version)[:2] > (2, 0)


def threads_safe(version: str) -> bool:
    """False for Lite 2.0.x: measured here, with ``thread_num`` > 1 one Model gives wrong logits (max
    |diff| 1-2 on DDRNet-23-slim at 64x64) for batch sizes divisible by the thread count once it has
    been resized from another concrete size (2 threads: 2, 4, 6, 8 after 1 or 3); 1 thread is exact."""
    return version_tuple(version)[:2] > (2, 0)


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ddrnet-serve", "lite")


FMK_TYPES = ("onnx", "mindir")


def convert_model(mslite: Any, source: str, fmk: str, output_path: str) -> str:
    """Convert ``source`` (an ONNX file, or a MindIR from MindSpore when this Lite reads it) with Lite's
    converter into a model ``Model.build_from_file`` loads, at ``output_path`` (written aside, then
    renamed into place, mode 0644); returns ``output_path``. The one conversion of the project: the
    adapter's on-the-fly ONNX fallback and ``ddrnet export --formats lite`` (through
    ``inference.lite_tool``) both use it. ModelFileError when the converter fails."""
    if fmk not in FMK_TYPES:
        raise ValueError(f"cannot convert from {fmk!r}: expected one of {FMK_TYPES}")
    out_dir = os.path.dirname(os.path.abspath(output_path))
    os.makedirs(out_dir, exist_ok=True)
    # The converter appends ".mindir" (or ".ms") to the name it is given, and rewrites a name that
    # already ends in one of those: give it a name without dots.
    stem = os.path.basename(output_path).replace(".", "_")
    tmp_base = os.path.join(out_dir, f".converting-{os.getpid()}-{stem}")
    converter = mslite.Converter()
    if hasattr(converter, "save_type"):  # the cloud-inference packages run MindIR, not .ms flatbuffers
        converter.save_type = mslite.ModelType.MINDIR
    framework = {"onnx": mslite.FmkType.ONNX, "mindir": mslite.FmkType.MINDIR}[fmk]
    try:
        converter.convert(framework, os.path.abspath(source), tmp_base)
        produced = [tmp_base + ext for ext in (".mindir", ".ms", "") if os.path.isfile(tmp_base + ext)]
        if not produced:
            raise RuntimeError(f"the converter reported success but wrote no file next to {tmp_base}")
        os.replace(produced[0], output_path)
        os.chmod(output_path, 0o644)  # the converter writes 0400; workers may run as another user
    except RuntimeError as exc:
        raise ModelFileError(f"MindSpore Lite {mslite.__version__} cannot convert {source}: {exc}") from None
    finally:
        for ext in (".mindir", ".ms"):
            if os.path.exists(tmp_base + ext):
                os.unlink(tmp_base + ext)
    return output_path


def cached_conversion(mslite: Any, onnx_path: str, cache_dir: str, sha256: str) -> str:
    """The converted model for ``onnx_path`` (whose recorded SHA-256 is ``sha256``) in ``cache_dir``,
    converting it on first use."""
    version = ".".join(str(p) for p in version_tuple(mslite.__version__))
    path = os.path.join(cache_dir, f"{sha256[:24]}-lite{version}.mindir")
    if os.path.isfile(path):
        LOG.info("using cached Lite conversion %s", path)
        return path
    LOG.info("converting %s with MindSpore Lite %s into %s", onnx_path, mslite.__version__, path)
    return convert_model(mslite, onnx_path, "onnx", path)


class LiteRuntime(Runtime):
    name = "lite"

    def __init__(self) -> None:
        super().__init__()
        self._mslite: Any = None
        self._model: Any = None
        self._shape: list[int] | None = None
        self.source = ""
        self.note = ""
        self.precision = "fp32"

    # -- building ------------------------------------------------------------------------------------
    def _context(self, inter_op: int | None) -> Any:
        ctx = self._mslite.Context()
        ctx.target = [self.device]
        if self.threads is not None:
            ctx.cpu.thread_num = self.threads
        if inter_op is not None:
            ctx.cpu.inter_op_parallel_num = min(inter_op, self.threads or inter_op)
        if self.device == "gpu":
            ctx.gpu.device_id = self.device_id
            ctx.gpu.precision_mode = _PRECISION_MODES["gpu"][self.precision]
        elif self.device == "ascend":
            ctx.ascend.device_id = self.device_id
            ctx.ascend.precision_mode = _PRECISION_MODES["ascend"][self.precision]
        return ctx

    def _try_build(self, path: str, model_type: Any, context: Any, sample_hw: tuple[int, int] | None) -> Any:
        model = self._mslite.Model()
        model.build_from_file(path, model_type, context)
        inputs = model.get_inputs()
        shape = list(inputs[0].shape)
        if sample_hw is not None and len(shape) == 4:
            shape[2], shape[3] = sample_hw
        shape[0] = 1
        if any(d < 1 for d in shape):
            raise ModelFileError(f"{path}: cannot tell the input shape ({inputs[0].shape})")
        model.resize(inputs, [shape])
        inputs = model.get_inputs()
        inputs[0].set_data_from_numpy(np.zeros(shape, np.float32))
        model.predict(inputs)  # some file/package combinations build but cannot run: find out now
        self._shape = shape
        return model

    def _candidates(self, version_dir: str, manifest: ModelManifest, source: str) -> list[tuple[str, str]]:
        """(label, path) pairs to try, converting ONNX lazily (label ``onnx``, path of the ONNX)."""
        out = []
        lite_file = manifest.existing_path(version_dir, "lite")
        mindir = manifest.existing_path(version_dir, "mindir")
        onnx = manifest.existing_path(version_dir, "onnx")
        if lite_file and source in ("auto", "lite"):
            out.append(("lite", lite_file))
        readable = reads_mindspore_mindir(self._mslite.__version__)
        if mindir and (source == "mindir" or (source == "auto" and readable)):
            out.append(("mindir", mindir))
        if onnx and source in ("auto", "onnx"):
            out.append(("onnx", onnx))
        return out

    def load(
        self,
        version_dir: str,
        manifest: ModelManifest,
        device: str = "cpu",
        device_id: int = 0,
        options: dict[str, Any] | None = None,
    ) -> None:
        options = dict(options or {})
        self.device = check_device(device, device_id)
        self.device_id = device_id
        self.threads = options_threads(options)
        inter_op = options_threads(options, "inter_op_threads")
        self.precision = str(options.get("precision") or "fp32")
        if self.precision not in ("fp32", "fp16"):
            raise RuntimeUnavailableError(
                f"the lite runtime serves fp32 (any device) and fp16 (gpu, ascend), not {self.precision}"
            )
        if self.precision == "fp16" and self.device == "cpu":
            raise RuntimeUnavailableError("the lite runtime serves fp16 on gpu and ascend, not on the cpu")
        source = options.get("lite_source", "auto")
        if source not in SOURCES:
            raise ValueError(f"option lite_source must be one of {SOURCES}, got {source!r}")
        if self.device in _DEVICE_NODES:
            node = _DEVICE_NODES[self.device] % device_id
            if not os.path.exists(node):
                raise RuntimeUnavailableError(
                    f"device {self.device}:{device_id} is not there ({node} does not exist)"
                )
        self._mslite = mslite = import_lite()
        if not threads_safe(mslite.__version__) and self.threads != 1:
            if self.threads is not None:
                LOG.warning("MindSpore Lite %s: using 1 thread, not %d (more give wrong logits after a "
                            "resize); run more instances to use more cores", mslite.__version__, self.threads)
            self.note = f"{self.threads or 'auto'} threads requested; Lite {mslite.__version__} runs 1"
            self.threads, inter_op = 1, 1
        context = self._context(inter_op)
        sample_hw = input_hw(manifest)
        candidates = self._candidates(version_dir, manifest, source)
        if not candidates:
            raise ModelFileError(
                f"{version_dir} has no model MindSpore Lite {mslite.__version__} can use (source "
                f"{source!r}): it needs model.ms, a MindIR this Lite reads, or model.onnx to convert"
            )
        errors = []
        for label, path in candidates:
            if label == "onnx":
                cache_dir = options.get("cache_dir") or default_cache_dir()
                path = cached_conversion(mslite, path, cache_dir, manifest.sha256(os.path.basename(path)))
            types = [mslite.ModelType.MINDIR]
            if label == "lite" and hasattr(mslite.ModelType, "MINDIR_LITE"):
                types.append(mslite.ModelType.MINDIR_LITE)
            for model_type in types:
                try:
                    self._model = self._try_build(path, model_type, context, sample_hw)
                except (RuntimeError, ValueError, TypeError) as exc:
                    errors.append(f"{os.path.basename(path)} as {model_type.name}: {exc}")
                    continue
                self.model_file = path
                self.source = label
                LOG.info("MindSpore Lite %s runs %s (%s)", mslite.__version__, path, model_type.name)
                return
        if self.device != "cpu":
            raise RuntimeUnavailableError(
                f"MindSpore Lite {mslite.__version__} cannot build the model for device "
                f"{self.device}:{device_id} (a CPU-only Lite package, or no driver?): {'; '.join(errors)}"
            )
        raise ModelFileError(
            f"MindSpore Lite {mslite.__version__} cannot run {version_dir}: {'; '.join(errors)}"
        )

    # -- inference -----------------------------------------------------------------------------------
    def infer(self, batch: np.ndarray) -> np.ndarray:
        batch = as_batch(batch)
        shape = list(batch.shape)
        if shape != self._shape:
            self._model.resize(self._model.get_inputs(), [shape])
            self._shape = shape
        inputs = self._model.get_inputs()
        inputs[0].set_data_from_numpy(batch)
        outputs = self._model.predict(inputs)
        # get_data_to_numpy() is a view of Lite's output buffer, which the next predict overwrites.
        return np.array(outputs[0].get_data_to_numpy(), dtype=np.float32, copy=True)

    def library_version(self) -> str:
        return str(getattr(self._mslite, "__version__", ""))

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["source"] = self.source
        info["precision"] = self.precision
        if self.note:
            info["note"] = self.note
        return info

    def close(self) -> None:
        self._model = None
