"""MindSpore Lite steps of ``ddrnet export``, run as a script in the Lite interpreter.

MindSpore Lite cannot share a process with MindSpore 2.10 (both ship ``libmindspore_core.so``), and
PyPI's ``mindspore-lite`` 2.0.0 exists for Python 3.7 only, so the exporter runs this file by path
under the Lite Python (e.g. ``.venv-lite37/bin/python``). It imports only the standard library,
numpy, ``mindspore_lite`` and — for ``verify`` — the project's Python-3.7-safe modules
(``server.runtimes`` Lite adapter, ``model.repository``). Python 3.7 syntax throughout.

Commands (each prints one JSON object on the last line of stdout):

``probe``
    ``{"mindspore_lite": "2.0.0", "python": "3.7.16"}``, or exit 3 when mindspore_lite is missing.
``convert --model IN --fmk onnx|mindir --output OUT``
    ``mindspore_lite.Converter`` (save type MINDIR: the model type the Lite ``Model`` API loads) from
    ONNX (Lite 2.0 cannot read MindIR written by MindSpore 2.10) or MindIR (newer Lite releases).
``verify --version-dir DIR --input X.npy --output Y.npz [--options JSON]``
    load the version through the server's Lite runtime adapter and write its logits for ``X``
    (``full``), then ``X[:1]`` (``single``: a second batch size), then ``X`` again (``full_again``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

EXIT_NO_LITE = 3


def _lite_version():
    import mindspore_lite

    return getattr(mindspore_lite, "__version__", "unknown")


def cmd_probe(_args):
    try:
        version = _lite_version()
    except ImportError as exc:
        print(json.dumps({"error": f"mindspore_lite is not importable: {exc}"}))
        return EXIT_NO_LITE
    print(json.dumps({"mindspore_lite": version, "python": ".".join(str(v) for v in sys.version_info[:3])}))
    return 0


def cmd_convert(args):
    import mindspore_lite as mslite

    fmk = {"onnx": mslite.FmkType.ONNX, "mindir": mslite.FmkType.MINDIR}[args.fmk]
    out_dir = os.path.dirname(os.path.abspath(args.output))
    base = os.path.join(out_dir, f".lite-convert-{os.getpid()}")
    start = time.time()
    converter = mslite.Converter()
    converter.save_type = mslite.ModelType.MINDIR
    converter.optimize = "general"
    converter.convert(fmk, os.path.abspath(args.model), base)
    produced = [base + ext for ext in (".mindir", ".ms", "") if os.path.isfile(base + ext)]
    if not produced:
        raise RuntimeError(f"the Lite converter reported success but wrote no file next to {base}")
    os.replace(produced[0], args.output)
    os.chmod(args.output, 0o644)  # the converter writes 0400; server workers may run as another user
    print(
        json.dumps(
            {
                "mindspore_lite": _lite_version(),
                "fmk": args.fmk,
                "model_type": "MINDIR",
                "seconds": round(time.time() - start, 3),
                "output": args.output,
            }
        )
    )
    return 0


def cmd_verify(args):
    import importlib

    import numpy as np

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)
    module = importlib.import_module(args.runtime_module)
    runtime_cls = getattr(module, args.runtime_class)
    with open(os.path.join(args.version_dir, "model.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    runtime = runtime_cls()
    start = time.time()
    options = json.loads(args.options)
    options["threads"] = args.threads
    runtime.load(args.version_dir, manifest, "cpu", 0, options)
    load_s = time.time() - start
    batch = np.load(args.input)
    # Copies: Lite's get_data_to_numpy() returns a view of its output buffer, which the next
    # predict overwrites. The dynamic batch must also work at another size than the first one it
    # saw, and again at the first size after that (state kept across resizes).
    outputs = {"full": np.array(runtime.infer(batch), copy=True)}
    outputs["single"] = np.array(runtime.infer(np.ascontiguousarray(batch[:1])), copy=True)
    outputs["full_again"] = np.array(runtime.infer(batch), copy=True)
    np.savez(args.output, **outputs)
    info = runtime.describe() if hasattr(runtime, "describe") else {}
    runtime.close()
    print(json.dumps({"load_s": round(load_s, 3), "describe": info}, default=str))
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description="MindSpore Lite steps of ddrnet export")
    sub = parser.add_subparsers(dest="command")
    sub.required = True
    sub.add_parser("probe")
    p = sub.add_parser("convert")
    p.add_argument("--model", required=True)
    p.add_argument("--fmk", choices=("onnx", "mindir"), required=True)
    p.add_argument("--output", required=True)
    p = sub.add_parser("verify")
    p.add_argument("--version-dir", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--runtime-module", default="server.runtimes.lite_rt")
    p.add_argument("--runtime-class", default="LiteRuntime")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--options", default="{}", help="runtime options as a JSON object")
    args = parser.parse_args(argv)
    return {"probe": cmd_probe, "convert": cmd_convert, "verify": cmd_verify}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
