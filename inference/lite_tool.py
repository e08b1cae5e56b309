"""MindSpore Lite from another interpreter: finding one, and converting models in it.

MindSpore Lite cannot share a process with MindSpore 2.10 (both ship ``libmindspore_core.so``), and
PyPI's ``mindspore-lite`` 2.0.0 exists for Python 3.7 only, so a process that has MindSpore (the
exporter) uses Lite through a child process running ``python -m inference.lite_tool`` under the Lite
interpreter (e.g. ``.venv-lite37/bin/python``). This module is both sides:

- in the Lite interpreter, two commands, each printing one JSON object on the last line of stdout:
  ``probe`` → ``{"mindspore_lite": "2.0.0", "python": "3.7.16"}`` (exit 3 when mindspore_lite is
  missing); ``convert --model IN --fmk onnx|mindir --output OUT`` → the Lite converter
  (``inference.runtimes.lite_rt.convert_model``, the project's one conversion);
- in the caller: :func:`find_lite` (an explicit interpreter, else this Python when it has
  mindspore_lite, else ``.venv-lite37``) and :func:`convert_with`. Running a converted file is the
  worker process's job (``inference.worker_client`` with the Lite interpreter), as when serving.

Standard library only at import time, Python 3.7 syntax.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

EXIT_NO_LITE = 3
LITE_VENV = ".venv-lite37"
REPO_ROOT = Path(__file__).resolve().parents[1]
PROBE_TIMEOUT_S = 120.0
CONVERT_TIMEOUT_S = 900.0


class LiteToolError(RuntimeError):
    """A Lite interpreter is missing or cannot do what was asked; the message names it and why."""


# -- the caller's side ---------------------------------------------------------------------------------


def _run(python: str, args: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PYTHONHOME", None)
    env["PYTHONPATH"] = str(REPO_ROOT)  # the package only: the interpreter's own site-packages stay its own
    env.setdefault("GLOG_v", "3")
    return subprocess.run(
        [python, "-m", "inference.lite_tool", *args], capture_output=True, text=True, timeout=timeout_s,
        check=False, cwd=str(REPO_ROOT), env=env,
    )


def _last_json(proc: subprocess.CompletedProcess) -> dict[str, Any] | None:
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else None


def probe(python: str) -> dict[str, Any] | None:
    """``{"mindspore_lite": version, "python": version}`` when ``python`` can import mindspore_lite."""
    try:
        proc = _run(python, ["probe"], PROBE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    info = _last_json(proc)
    return info if proc.returncode == 0 and info and "mindspore_lite" in info else None


def candidates() -> list[str]:
    """Interpreters that may have MindSpore Lite: this one (when mindspore_lite is importable here; it
    still runs in its own process), then ``.venv-lite37`` of the repository and of the working directory."""
    out = []
    if importlib.util.find_spec("mindspore_lite") is not None:
        out.append(sys.executable)
    for root in (REPO_ROOT, Path.cwd()):
        candidate = root / LITE_VENV / "bin" / "python"
        if candidate.is_file() and str(candidate) not in out:
            out.append(str(candidate))
    return out


def find_lite(explicit: str | None = None) -> tuple | None:
    """(python, probe info) of the first interpreter with MindSpore Lite, or None; an ``explicit`` one
    must work (LiteToolError otherwise)."""
    if explicit:
        if not Path(explicit).is_file():
            raise LiteToolError(f"Lite interpreter {explicit} does not exist")
        info = probe(explicit)
        if info is None:
            raise LiteToolError(f"Lite interpreter {explicit} cannot import mindspore_lite")
        return explicit, info
    for python in candidates():
        info = probe(python)
        if info is not None:
            return python, info
    return None


def convert_with(python: str, source: Path, fmk: str, output: Path) -> dict[str, Any]:
    """Convert ``source`` into ``output`` with the Lite converter of interpreter ``python``; the converter's
    record (``mindspore_lite``, ``fmk``, ``model_type``, ``seconds``). LiteToolError with the tail of
    its output when it fails."""
    args = ["convert", "--model", str(source), "--fmk", fmk, "--output", str(output)]
    try:
        proc = _run(python, args, CONVERT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LiteToolError(f"MindSpore Lite ({python}) could not convert {source.name}: {exc}") from None
    info = _last_json(proc)
    if proc.returncode != 0 or info is None or not output.is_file():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-10:])
        raise LiteToolError(f"MindSpore Lite ({python}) could not convert {source.name}:\n{tail}")
    return info


# -- the Lite interpreter's side -----------------------------------------------------------------------


def _cmd_probe(_args: argparse.Namespace) -> int:
    try:
        import mindspore_lite
    except ImportError as exc:
        print(json.dumps({"error": f"mindspore_lite is not importable: {exc}"}))
        return EXIT_NO_LITE
    version = getattr(mindspore_lite, "__version__", "unknown")
    print(json.dumps({"mindspore_lite": version, "python": ".".join(str(v) for v in sys.version_info[:3])}))
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from inference.runtimes.lite_rt import convert_model, import_lite

    mslite = import_lite()
    start = time.time()
    convert_model(mslite, args.model, args.fmk, args.output)
    record = {"mindspore_lite": mslite.__version__, "fmk": args.fmk, "model_type": "MINDIR",
              "seconds": round(time.time() - start, 3), "output": args.output}
    print(json.dumps(record))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference.lite_tool",
                                     description="MindSpore Lite steps run in the Lite interpreter")
    sub = parser.add_subparsers(dest="command")
    sub.required = True
    sub.add_parser("probe")
    conv = sub.add_parser("convert")
    conv.add_argument("--model", required=True)
    conv.add_argument("--fmk", choices=("onnx", "mindir"), required=True)
    conv.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    return {"probe": _cmd_probe, "convert": _cmd_convert}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
