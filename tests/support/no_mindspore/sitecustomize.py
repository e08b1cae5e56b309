"""Makes this interpreter a serving install: ``import mindspore`` (and its lookup by ``find_spec``) fails
as it does where the package is not installed. Put this directory first on PYTHONPATH."""

import sys

BLOCKED = ("mindspore", "sklearn", "matplotlib", "onnx", "onnxconverter_common", "scipy")


class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NotInstalled())
