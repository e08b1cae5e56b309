"""Choosing MindSpore's device once per process (the only place that calls ``mindspore.set_device``).

MindSpore fixes its device when the first kernel runs; a later ``set_device`` raises "The runtime has
been initialized", even when it names the device already in use. A process that runs anything
before it exports or loads a model (the test session, ``ddrnet train`` then export, a benchmark that
trains and serves) would fail on that. :func:`use_device` sets the device, and when the runtime is
already running on exactly that device it leaves it as it is; any other device still raises.

``device_id=None`` leaves the id to MindSpore: 0 for one process, negotiated per worker under msrun
(``mindspore/device_manager.py``: "In a distributed scenario where msrun is started, the framework will
automatically negotiate the available device_id values"). Passing an explicit id defeats that.
"""

from __future__ import annotations


def use_device(target: str, device_id: int | None = None) -> None:
    """``mindspore.set_device(target, device_id)``, a no-op if the process already runs there (with
    ``device_id=None``: on any device of ``target``)."""
    import mindspore as ms

    try:
        ms.set_device(target, device_id)
    except RuntimeError:
        current = (ms.get_context("device_target"), ms.get_context("device_id"))
        if current != (target, current[1] if device_id is None else device_id):
            raise
