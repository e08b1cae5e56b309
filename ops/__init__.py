"""Operator tools: what measures and checks a model from outside, needing both the client library and
the runtime layer.

- ``bench`` / ``bench_metrics`` / ``bench_report``: the load generator behind ``ddrnet bench``, the
  server-side split read from ``/metrics``, and the report and plot;
- ``bench_raw``: the machine's limit L for a model version (``ddrnet bench --raw``), measured with the
  server's own runtime adapters and worker processes;
- ``eval_server``: accuracy through a running server (``ddrnet eval --server``), scored as offline eval.

May import ``clients``, ``inference``, ``model`` and ``training``; only ``cli`` imports it.
"""
