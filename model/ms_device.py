"""Choosing MindSpore's device once per process (the only place that calls ``mindspore.set_device``).

MindSpore fixes its device when the first kernel runs; a later ``set_device`` raises "The runtime has
been initialized", even when it names the device already in use. A process that runs anything
before it exports or loads a model (the test session, ``ddrnet train`` then export, a benchmark that
trains and serves) would fail on that. :func:`use_device` sets the device, and when the runtime is
already running on exactly that device it leaves it as it is; any other device still raises.
"""

from __future__ import annotations


def use_device(target: str, device_id: int = 0) -> None:
    """``mindspore.set_device(target, device_id)``, a no-op if the process already runs there."""
    import mindspore as ms

    try:
        ms.set_device(target, device_id)
    except RuntimeError:
        if (ms.get_context("device_target"), ms.get_context("device_id")) != (target, device_id):
            raise
