"""The one precision switch: what ``fp32``, ``bf16``, ``fp16`` and ``int8`` mean on every runtime and device,
which runtimes serve each, in which order ``auto`` tries them, and the CPU's bf16 check.

- fp32: any device; lite, onnxruntime, openvino (cpu), mindspore; the version's float files.
- bf16: cpu with bf16 instructions (AVX512_BF16 or AMX); openvino on ``model.onnx``.
- fp16: gpu (onnxruntime: CUDA EP on ``model.fp16.onnx``, TensorRT EP when installed; lite) and
  ascend (lite, ``model.ms`` in Lite's float16 mode).
- int8: cpu; openvino, then onnxruntime, on ``model.int8.onnx``.

The orders are measured (BENCHMARKS.md, "Precisions"): int8 runs faster on OpenVINO than on ONNX Runtime
on this CPU; fp32 is equal on both, and ONNX Runtime loads lighter. A reduced precision is never a
silent float32: a runtime, device or CPU that cannot run it is refused with a message naming why, and
the server serves a reduced precision only for a version whose export verified it (``model.json``'s
verification records carry ``precision``; :func:`verified_runtimes`).

Standard library only, Python 3.7 syntax: the Lite worker (Python 3.7) imports it.
"""

from __future__ import annotations

from typing import Any

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
REDUCED = ("bf16", "fp16", "int8")

#: precision -> device -> runtimes that serve it there, in ``auto``'s order
SERVED_BY = {
    "fp32": {
        "cpu": ("lite", "onnxruntime", "openvino", "mindspore"),
        "gpu": ("lite", "onnxruntime", "mindspore"),
        "ascend": ("lite", "onnxruntime", "mindspore"),
    },
    "bf16": {"cpu": ("openvino",)},
    "fp16": {"gpu": ("onnxruntime", "lite"), "ascend": ("lite",)},
    "int8": {"cpu": ("openvino", "onnxruntime")},
}

_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


class PrecisionError(ValueError):
    """A precision that cannot be served as asked; the message names the precision, runtime and device."""


def check_precision(precision: str) -> str:
    """The precision name, or PrecisionError naming the choices."""
    name = str(precision or "fp32").strip().lower()
    if name not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return name


def runtimes_for(precision: str, device: str) -> tuple[str, ...]:
    """Runtimes that serve ``precision`` on ``device``, in ``auto``'s order (empty: none does)."""
    return SERVED_BY.get(check_precision(precision), {}).get(device, ())


def check_combination(precision: str, runtime: str, device: str) -> None:
    """PrecisionError when ``runtime`` (a registry name or ``auto``; a custom ``module:Class`` is the
    operator's business) cannot serve ``precision`` on ``device``."""
    precision = check_precision(precision)
    served = runtimes_for(precision, device)
    if not served:
        raise PrecisionError(
            f"precision {precision} is not served on device {device}: "
            + "; ".join(f"on {d} by {', '.join(r)}" for d, r in SERVED_BY[precision].items())
        )
    if runtime != "auto" and ":" not in runtime and runtime not in served:
        raise PrecisionError(
            f"precision {precision} on {device} is served by {', '.join(served)}, not by {runtime!r} "
            "(use --runtime auto or one of those)"
        )


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str] | None:
    """The CPU feature flags of the first processor in ``cpuinfo``; None where the file is not there
    (not Linux): the runtime's own check then decides."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags") or line.startswith("Features"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return set()


def check_cpu_bf16(flags: set[str] | None = None) -> None:
    """PrecisionError when this CPU lacks bf16 instructions (AVX512_BF16 or AMX): OpenVINO would
    run float32 there instead, which is not what bf16 promises. ``flags`` None reads /proc/cpuinfo."""
    flags = cpu_flags() if flags is None else flags
    if flags is not None and not any(f in flags for f in _CPU_BF16_FLAGS):
        raise PrecisionError(
            "precision bf16 needs a CPU with bf16 instructions (AVX512_BF16 or AMX: Intel Cooper Lake / "
            "Sapphire Rapids and later, AMD Zen 4 and later); this CPU has neither, so it would run "
            "float32: serve fp32 or int8 here"
        )


def record_precision(record: dict[str, Any]) -> str:
    """The precision a verification record speaks for (records written before the switch: fp32, or
    int8 for the ``onnx_int8`` file)."""
    return str(record.get("precision") or "fp32")


def verified_runtimes(verification: dict[str, dict[str, Any]], precision: str) -> list[str]:
    """Runtimes the version's export verified ``precision`` on (from ``model.json``'s verification)."""
    out: list[str] = []
    for record in verification.values():
        if record_precision(record) == precision and record.get("runtime") and record["runtime"] not in out:
            out.append(str(record["runtime"]))
    return out


def precision_summary(verification: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per precision the version was verified for: its runtimes, the lowest top-1 agreement with the
    float32 checkpoint network and the largest logit difference over its records, and the images."""
    out: dict[str, dict[str, Any]] = {}
    for record in verification.values():
        name = record_precision(record)
        entry = out.setdefault(name, {"runtimes": [], "top1_agreement": 1.0, "max_abs_diff": 0.0,
                                      "samples": 0})
        runtime = record.get("runtime")
        if runtime and runtime not in entry["runtimes"]:
            entry["runtimes"].append(runtime)
        entry["top1_agreement"] = min(entry["top1_agreement"], float(record.get("top1_agreement", 0.0)))
        entry["max_abs_diff"] = max(entry["max_abs_diff"], float(record.get("max_abs_diff", 0.0)))
        entry["samples"] = max(entry["samples"], int(record.get("samples", 0) or 0))
    return out


def check_verified(
    verification: dict[str, dict[str, Any]], precision: str, name: str, version: int
) -> list[str]:
    """The runtimes ``precision`` was verified on; PrecisionError naming the export option when none
    (a reduced precision is served only where its export checked it; fp32 needs nothing here: every
    float file is verified at export)."""
    if precision == "fp32":
        return verified_runtimes(verification, "fp32")
    found = verified_runtimes(verification, precision)
    if not found:
        have = sorted(precision_summary(verification)) or ["none"]
        raise PrecisionError(
            f"model {name} version {version} was not verified for precision {precision} (verified: "
            f"{', '.join(have)}): export it with `ddrnet export ... --precisions {precision}`"
        )
    return found
