"""The runtime layer: the code that loads and runs an exported model file, shared by export
verification (``training.export``) and serving (``server``), so the file that was verified is run by
the same code that serves it.

- ``runtimes``: the :class:`~inference.runtimes.base.Runtime` interface and its adapters (MindSpore
  Lite, ONNX Runtime, MindSpore), and the choice between them;
- ``worker_main`` / ``worker_client`` / ``worker_protocol`` / ``shm``: one model instance in its own
  worker process (possibly another interpreter, e.g. Python 3.7 for PyPI's MindSpore Lite), driven
  over a pipe with batches in shared memory, restarted when it dies;
- ``lite_tool``: MindSpore Lite from another interpreter (find it, convert models in it);
- ``placement``: instances × threads derived from the cores this process may use;
- ``errors``: the protocol-free error kinds the worker protocol carries.

Imports ``model`` only (the typed manifest). The worker side is Python 3.7 compatible.
"""
