"""The inference server: dynamic batching, worker-process runtimes, HTTP and gRPC front ends, metrics.

Importing this package imports nothing: worker processes (possibly another Python, e.g. 3.7 for
MindSpore Lite) import single modules such as ``server.errors`` without pulling in the server's
dependencies.
"""
