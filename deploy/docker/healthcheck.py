"""Container health check: exit 0 when the server answers 200 on the OIP v2 ready endpoint.

Used by the Dockerfile's HEALTHCHECK (slim images have no curl). Ready means every model is loaded
and warmed, so an unhealthy container is one that cannot serve. The address follows the server's
own configuration: ``--http-host``/``--http-port``/``--tls-cert`` on the command line of PID 1 (``tini
-- ddrnet serve ...``, the entry point), else ``DDRNET_HTTP_HOST``/``DDRNET_HTTP_PORT``/``DDRNET_TLS_CERT``,
else the defaults (port 8000, plain HTTP). Standard library only: it runs in the server's venv but
must not import the server.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence

READY_PATH = "/v2/health/ready"
DEFAULT_PORT = 8000
TIMEOUT_S = 4.0


def option_value(argv: Sequence[str], name: str) -> str | None:
    """Value of ``--name VALUE`` or ``--name=VALUE`` in argv (the last one wins, as with argparse)."""
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg[len(name) + 1 :]
    return value


def pid1_argv() -> list[str]:
    """Command line of PID 1 (the container's entry point); empty when unreadable."""
    try:
        with open("/proc/1/cmdline", "rb") as handle:
            raw = handle.read()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def ready_url(argv: Sequence[str], env: Mapping[str, str]) -> str:
    """The ready endpoint URL for a server started with argv under env."""
    host = option_value(argv, "--http-host") or env.get("DDRNET_HTTP_HOST") or "127.0.0.1"
    port = option_value(argv, "--http-port") or env.get("DDRNET_HTTP_PORT") or str(DEFAULT_PORT)
    tls = option_value(argv, "--tls-cert") or env.get("DDRNET_TLS_CERT")
    if host in ("0.0.0.0", ""):  # bound to every interface: loopback reaches it
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    scheme = "https" if tls else "http"
    return f"{scheme}://{host}:{int(port)}{READY_PATH}"


def check(url: str, timeout: float = TIMEOUT_S) -> tuple[bool, str]:
    """(healthy, reason) for one GET of url."""
    context = None
    if url.startswith("https:"):
        # Talking to ourselves on loopback: the certificate names the service, not 127.0.0.1.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
            return response.status == 200, f"{url}: HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url}: HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return False, f"{url}: {exc}"


def main(argv: Sequence[str] | None = None) -> int:
    try:
        url = ready_url(pid1_argv() if argv is None else argv, os.environ)
    except ValueError as exc:  # a non-numeric port
        print(f"bad HTTP port setting: {exc}", file=sys.stderr)
        return 1
    healthy, reason = check(url)
    print(reason, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
