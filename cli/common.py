"""Options and set-up shared by the client command lines (``ddrnet classify``, ``ddrnet bench``,
``ddrnet eval --server``): where the server is, which protocol, auth and TLS, and building the
asyncio client from them. Light at import time (no grpc/httpx until a client is built).
"""

from __future__ import annotations

import argparse
from typing import Any

from cli.errors import CliError

DEFAULT_PORTS = {"http": 8000, "grpc": 8001}


def transport(protocol: str) -> str:
    """``http`` or ``grpc``: the transport behind a protocol name (``oip-http`` is HTTP)."""
    return "grpc" if protocol.endswith("grpc") else "http"


def add_connection_arguments(parser: argparse.ArgumentParser, *, with_server: bool = True) -> None:
    """``--server``, ``--model``, ``--model-version``, ``--timeout``, ``--token`` and the TLS options."""
    if with_server:
        parser.add_argument("--server", metavar="HOST:PORT",
                            help="server address (default 127.0.0.1:8000 for HTTP, 127.0.0.1:8001 for gRPC); "
                                 "http(s):// URLs work for HTTP")
    parser.add_argument("--model", metavar="NAME",
                        help="model name (default: the only model the server serves, asked over HTTP)")
    parser.add_argument("--model-version", metavar="V", help="model version (default: the newest served)")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                        help="deadline per request, retries included (default: 30)")
    parser.add_argument("--token", metavar="TOKEN", help="bearer token when the server requires one")
    tls = parser.add_argument_group("TLS")
    tls.add_argument("--tls", action="store_true", help="use TLS (https / gRPC TLS) with the system roots")
    tls.add_argument("--ca-cert", metavar="PEM", help="CA certificate(s) to trust (implies --tls)")
    tls.add_argument("--client-cert", metavar="PEM", help="client certificate for mutual TLS")
    tls.add_argument("--client-key", metavar="PEM", help="client private key for mutual TLS")
    tls.add_argument("--server-name", metavar="NAME", help="gRPC: name expected in the server certificate")


def server_address(args: argparse.Namespace, protocol: str) -> str:
    server = getattr(args, "server", None)
    if server:
        return server
    return f"127.0.0.1:{DEFAULT_PORTS[transport(protocol)]}"


def make_async_client(
    args: argparse.Namespace, protocol: str, *, server: str | None = None, model: str | None = None,
    retry: Any = None,
) -> Any:
    """An AsyncHttpClient or AsyncGrpcClient for ``protocol`` from the parsed options."""
    address = server or server_address(args, protocol)
    common = {
        "model": model if model is not None else getattr(args, "model", None),
        "version": getattr(args, "model_version", None),
        "timeout": getattr(args, "timeout", 30.0),
        "token": getattr(args, "token", None),
        "retry": retry,
    }
    ca_cert = getattr(args, "ca_cert", None)
    client_cert = getattr(args, "client_cert", None)
    client_key = getattr(args, "client_key", None)
    if (client_cert is None) != (client_key is None):
        raise CliError("--client-cert and --client-key must be given together")
    tls = bool(getattr(args, "tls", False) or ca_cert or client_cert)
    try:
        if transport(protocol) == "grpc":
            from clients.grpc_client import AsyncGrpcClient

            return AsyncGrpcClient(
                address, tls=tls, root_certificates=ca_cert, private_key=client_key,
                certificate_chain=client_cert, server_name=getattr(args, "server_name", None), **common,
            )
        from clients.http_client import AsyncHttpClient

        if tls and "://" not in address:
            address = f"https://{address}"
        return AsyncHttpClient(
            address, ca_cert=ca_cert, client_cert=client_cert, client_key=client_key, **common
        )
    except (ValueError, OSError) as exc:
        raise CliError(f"cannot set up the {transport(protocol)} client for {address}: {exc}") from None


async def resolve_model(client: Any, args: argparse.Namespace, protocol: str, address: str) -> str:
    """The model to use: ``--model``, else the only model served (HTTP only: the gRPC API lists none).
    Checks the server answers and knows the model; CliError naming the problem otherwise."""
    from clients.errors import ClientError, NotFoundError, UnavailableError

    name = getattr(args, "model", None)
    try:
        if not name:
            if transport(protocol) == "grpc":
                raise CliError("--model is required with gRPC (the gRPC API has no model list)")
            models = await client.models()
            if len(models) != 1:
                names = ", ".join(m["name"] for m in models) or "none"
                raise CliError(
                    f"the server at {address} serves {len(models)} models ({names}): pick one with --model"
                )
            name = models[0]["name"]
        await client.model_metadata(name)
    except NotFoundError:
        raise CliError(f"the server at {address} does not serve a model named {name!r}") from None
    except UnavailableError as exc:
        raise CliError(f"cannot reach the server at {address} over {transport(protocol)}: {exc}") from None
    except ClientError as exc:
        raise CliError(f"the server at {address} refused the model check: {exc.kind}: {exc}") from None
    return name
