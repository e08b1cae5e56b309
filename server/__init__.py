"""The inference server: settings, the protocol-free service core, dynamic batching, the model manager
(repository → served versions, hot swap, drain), HTTP and gRPC front ends, metrics.

Model instances run in worker processes of the runtime layer (``inference``); this package decides
what runs where and answers the protocols. Importing the package imports nothing.
"""
