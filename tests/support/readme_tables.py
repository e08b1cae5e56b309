"""The README's generated tables: server options, metrics and the error mapping, built from the code.

Each table sits in README.md between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``;
``test_readme.py`` fails when the README's copy differs from what this module builds, and

    python -m tests.support.readme_tables --write

rewrites them in place. Sources: ``server.settings.ServerSettings`` (options, environment variables,
defaults, help texts), ``server.metrics.ServerMetrics`` (names, types, labels, help texts) and
``server.errors`` (HTTP status and gRPC code per error kind).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"

# Defaults that ``server.settings.derive_defaults`` fills from the machine (the field default is None).
DERIVED_DEFAULTS = {
    "instances": "1 per 8 cores (cores, at most 8, under `--runtime-python`; 1 on gpu/ascend)",
    "threads_per_instance": "cores ÷ instances",
    "preprocess_workers": "cores",
}

# What each error kind means to a user; a kind missing here fails the README test.
ERROR_MEANINGS = {
    "INVALID_ARGUMENT": "malformed body, undecodable image, bad field, `top_k` or tensor",
    "PAYLOAD_TOO_LARGE": "body over `--max-request-bytes`, image over `--max-image-pixels`, "
    "too many images",
    "UNSUPPORTED_MEDIA": "unsupported Content-Type, Content-Encoding or image format",
    "UNPROCESSABLE": "JSON body that does not follow the schema",
    "NOT_FOUND": "unknown model or version",
    "QUEUE_FULL": "the model's queue is full (`Retry-After` / `grpc-retry-pushback-ms`)",
    "DEADLINE_EXCEEDED": "the request's deadline passed while it waited",
    "UNAVAILABLE": "not ready, shutting down, or the batch lost its worker twice (once is run again)",
    "INTERNAL": "the runtime failed on the batch holding this request (that batch only)",
    "UNAUTHENTICATED": "missing or wrong bearer token (`--auth-token`)",
    "CANCELLED": "the client went away (an upload cut off, a cancelled call): counted, never answered",
}


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell (GitHub would drop ``<repo>`` as an unknown HTML tag)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def server_options_table() -> str:
    """One row per ServerSettings field: option (as `ddrnet serve` builds it), variable, default, help."""
    from cli.serve import _METAVARS, _metavar, _option, _unwrap_optional
    from server.settings import ServerSettings

    prefix = ServerSettings.model_config.get("env_prefix", "")
    rows = ["| option | environment | default | meaning |", "|---|---|---|---|"]
    for name, field in ServerSettings.model_fields.items():
        annotation = _unwrap_optional(field.annotation)
        if annotation is bool:
            option = f"`{_option(name)}` / `--no-{_option(name)[2:]}`"
        elif getattr(annotation, "__origin__", None) is list:
            metavar = _METAVARS.get(name, "VALUE")
            option = f"`{_option(name)} {metavar} [{metavar} ...]`"
        elif str(annotation).startswith("typing.Literal"):
            option = f"`{_option(name)} {{{','.join(annotation.__args__)}}}`"
        else:
            option = f"`{_option(name)} {_metavar(name, annotation)}`"
        if field.is_required():
            default = "required"
        elif name in DERIVED_DEFAULTS:
            default = DERIVED_DEFAULTS[name]
        else:
            value = field.get_default(call_default_factory=True)
            default = "—" if value in (None, []) else f"`{value}`"
        env = f"`{prefix}{name.upper()}`"
        rows.append(f"| {option} | {env} | {default} | {_cell(field.description or '')} |")
    return "\n".join(rows)


def metrics_table() -> str:
    """One row per metric of ServerMetrics: exposed name, type, labels, help."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics import MetricWrapperBase

    from server.metrics import ServerMetrics

    metrics = ServerMetrics(CollectorRegistry())
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        kind = value._type  # prometheus-client keeps name, type and labels only on private attributes
        name = value._name + ("_total" if kind == "counter" else "")
        labels = ", ".join(f"`{label}`" for label in value._labelnames)
        rows.append(f"| `{name}` | {kind} | {labels} | {_cell(value._documentation)} |")
    return "\n".join(rows)


def errors_table() -> str:
    """One row per ErrorKind: its HTTP status and gRPC code (server.errors) and what it means."""
    from server.errors import GRPC_STATUS_NAME, HTTP_STATUS, ErrorKind

    rows = ["| condition | HTTP | gRPC |", "|---|---|---|"]
    for kind in ErrorKind:
        meaning = ERROR_MEANINGS.get(kind.name)
        if meaning is None:
            raise KeyError(f"ErrorKind.{kind.name} has no meaning in tests/support/readme_tables.py")
        rows.append(f"| {meaning} | {HTTP_STATUS[kind]} | `{GRPC_STATUS_NAME[kind]}` |")
    return "\n".join(rows)


TABLES: dict[str, Callable[[], str]] = {
    "server-options": server_options_table,
    "metrics": metrics_table,
    "errors": errors_table,
}


def _pattern(name: str) -> re.Pattern[str]:
    tag = re.escape(name)
    return re.compile(rf"(<!-- generated:{tag} -->\n)(.*?)(<!-- /generated:{tag} -->)", re.DOTALL)


def readme_table(text: str, name: str) -> str | None:
    """The README's copy of table ``name`` (without the markers), or None when the markers are missing."""
    match = _pattern(name).search(text)
    return None if match is None else match.group(2).rstrip("\n")


def rewrite(text: str) -> str:
    """``text`` with every generated table rebuilt."""
    for name, build in TABLES.items():
        pattern = _pattern(name)
        if pattern.search(text) is None:
            raise ValueError(f"README.md has no <!-- generated:{name} --> ... <!-- /generated:{name} -->")
        text = pattern.sub(lambda m, table=build(): m.group(1) + table + "\n" + m.group(3), text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="rebuild the generated tables of README.md")
    parser.add_argument("--write", action="store_true", help="rewrite README.md (default: print the tables)")
    args = parser.parse_args(argv)
    if args.write:
        README.write_text(rewrite(README.read_text()))
        return 0
    for name, build in TABLES.items():
        print(f"<!-- generated:{name} -->\n{build()}\n<!-- /generated:{name} -->\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
