"""Every command README.md shows is one that a test runs (or parses with the real parser).

README blocks carry markers (``readme_blocks.py``): ``run`` blocks run for real; ``server`` blocks run
for real against a live ``ddrnet serve`` on a small ONNX model named ``digits`` (addresses rewritten
to the test server's free ports, the digits data set written first); ``parse`` blocks are parsed by
the real parser of each program (``ddrnet``'s argparse parsers plus config and settings validation,
``scripts/train_distributed.sh`` run for real with ``msrun`` replaced by a recorder whose argv goes
through msrun's own parser, ``make`` targets, Dockerfile ARGs, pip requirements and extras), and every
repository path a command names must exist. A command block without a marker fails the suite, and so
does a program no checker knows. The generated tables (``readme_tables.py``) must equal the code.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.support.client_testutil import ServerProcess, build_onnx_repository
from tests.support.readme_blocks import (
    COMMAND_LANGS,
    COMMAND_WORDS,
    MODES_BY_LANG,
    README,
    REPO,
    blocks,
    commands,
    dangling_markers,
    marked,
)
from tests.support.readme_tables import TABLES, readme_table

VENV_BIN = Path(sys.executable).parent
HTTP_DEFAULT = "127.0.0.1:8000"
GRPC_DEFAULT = "127.0.0.1:8001"
DIGITS_CONFIG = REPO / "training" / "configs" / "digits_demo.yaml"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DDRNET_")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _ids(items: list[tuple[object, str]]) -> list[str]:
    return [f"{block.where}:{cmd[:60]}" for block, cmd in items]  # type: ignore[attr-defined]


def _block_commands(mode: str, lang: str = "bash") -> list[tuple[object, str]]:
    return [(b, c) for b in marked(mode) if b.lang == lang for c in commands(b)]


# -- structure -------------------------------------------------------------------------------------------


def test_every_command_block_is_marked() -> None:
    problems = []
    all_blocks = blocks()
    assert all_blocks and all_blocks[0].lang == "bash" and all_blocks[0].mode is None, \
        "the README must open with its unmarked install + quickstart block"
    for block in all_blocks[1:]:
        if not block.lang:
            problems.append(f"{block.where}: a code block needs a language (bash, python, text, json, ...)")
        elif block.lang in COMMAND_LANGS and block.mode is None:
            problems.append(f"{block.where}: {block.lang} block without a <!-- test: MODE --> marker")
        if block.mode is not None and block.mode not in MODES_BY_LANG.get(block.lang, set()):
            valid = sorted(MODES_BY_LANG.get(block.lang, set()))
            problems.append(f"{block.where}: marker 'test: {block.mode}' is not valid for a {block.lang} "
                            f"block (valid: {valid})")
        if block.lang in ("sh", "shell", "console", "py"):
            problems.append(f"{block.where}: write ```bash or ```python (the test knows those names)")
        if block.lang not in COMMAND_LANGS and block.mode != "quickstart-output":
            for n, line in enumerate(block.text.splitlines(), start=block.line + 1):
                if line.strip().startswith(COMMAND_WORDS):
                    problems.append(f"README.md:{n}: a command in a {block.lang or 'plain'} block: show "
                                    "commands in a marked bash block")
    problems += [f"README.md:{n}: marker not followed by a code block" for n in dangling_markers()]
    assert not problems, "\n".join(problems)


def test_every_marked_block_has_commands() -> None:
    for block in blocks()[1:]:
        if block.mode in ("run", "parse", "server") and block.lang == "bash":
            assert commands(block), f"{block.where}: marked block holds no command"


def test_generated_tables_match_the_code() -> None:
    text = README.read_text()
    for name, build in TABLES.items():
        table = readme_table(text, name)
        assert table is not None, f"README.md lacks the <!-- generated:{name} --> block"
        assert table == build(), (
            f"README.md's {name} table is stale: run `python tests/docs/readme_tables.py --write`"
        )


def test_every_subcommand_and_config_is_shown() -> None:
    """Each `ddrnet` subcommand appears in a tested command, each training config in the README."""
    from cli.main import SUBCOMMANDS

    shown = " ".join(c for mode in ("run", "parse", "server") for _b, c in _block_commands(mode))
    missing = [name for name in SUBCOMMANDS if f"ddrnet {name} " not in shown + " "]
    assert not missing, f"README shows no tested command for: {missing}"
    text = README.read_text()
    configs = [p.name for p in (REPO / "training" / "configs").glob("*.yaml") if p.name not in text]
    assert not configs, f"README does not mention the training configs {configs}"


def test_quickstart_output_sample() -> None:
    """The README's sample of the ready message is what `ddrnet quickstart` prints (image path shortened)."""
    from cli.quickstart import print_try_lines

    (sample,) = marked("quickstart-output")
    image = re.search(r"@(\S+\.jpg)", sample.text)
    assert image, "the sample shows the curl line with an image"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_try_lines("127.0.0.1", 8000, 8001, Path(image.group(1)))
    assert sample.text.strip() == out.getvalue().strip()


def test_links_point_at_files() -> None:
    text = README.read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        assert (REPO / target).exists(), f"README links to {target}, which does not exist"


def test_opening_commands() -> None:
    """Command 1 ends in `ddrnet quickstart` (test_quickstart.py runs it); command 2 is what .ci/run runs."""
    first, second = commands(blocks()[0])
    steps1 = [s.strip() for s in first.split("&&")]
    steps2 = [s.strip() for s in second.split("&&")]
    assert steps1[0] == steps2[0] == "python3.11 -m venv .venv"
    assert steps1[1] == ".venv/bin/pip install -e '.[train]'"
    assert steps1[2] == "PATH=$PWD/.venv/bin:$PATH ddrnet quickstart"
    assert steps2[1] == ".venv/bin/pip install -e '.[dev]'"
    assert steps2[2] == "PATH=$PWD/.venv/bin:$PATH python -m pytest"
    ci = (REPO / ".ci" / "run").read_text().replace(" --quiet", "")
    for step in steps2:
        assert step in ci, f".ci/run does not run the README's step {step!r}"
    assert "ddrnet quickstart" in (REPO / "tests" / "docs" / "test_quickstart.py").read_text()
    _parse_ddrnet(["quickstart"])


# -- run blocks --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A working directory with the repository's tracked top-level entries linked in (configs, scripts)
    and nothing else, so commands that write (demo/, runs/) write here."""
    root = tmp_path_factory.mktemp("readme_run")
    for name in _tracked_top_level():
        if (REPO / name).exists():
            (root / name).symlink_to(REPO / name)
    return root


RUN_COMMANDS = _block_commands("run")


@pytest.mark.parametrize(("block", "command"), RUN_COMMANDS, ids=_ids(RUN_COMMANDS))
def test_run_command(block, command, scratch) -> None:
    proc = subprocess.run(["bash", "-c", command], cwd=scratch, env=_env(), capture_output=True, text=True,
                          timeout=300)
    why = f"{block.where}: `{command}` exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, why


# -- server blocks -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A `ddrnet serve` on a tiny ONNX model named `digits` (10 classes), and a working directory holding
    demo/data/digits as the quickstart writes it."""
    repository = tmp_path_factory.mktemp("readme_repository")
    build_onnx_repository(repository, name="digits")
    cwd = tmp_path_factory.mktemp("readme_server")
    proc = subprocess.run([sys.executable, "-m", "cli.main", "data", "digits", "demo/data/digits"], cwd=cwd,
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with ServerProcess(repository) as server:
        yield server, cwd


def _rewrite_addresses(text: str, server) -> str:
    assert HTTP_DEFAULT in text or GRPC_DEFAULT in text, (
        f"a server example must name the server address ({HTTP_DEFAULT} or {GRPC_DEFAULT}) so the test "
        "can point it at its own server"
    )
    return text.replace(HTTP_DEFAULT, server.http).replace(GRPC_DEFAULT, server.grpc)


SERVER_COMMANDS = _block_commands("server")


@pytest.mark.parametrize(("block", "command"), SERVER_COMMANDS, ids=_ids(SERVER_COMMANDS))
def test_server_command(block, command, live) -> None:
    server, cwd = live
    command = _rewrite_addresses(command, server)
    if command.startswith("curl "):
        if shutil.which("curl") is None:
            pytest.skip("curl is not installed")
        command = "curl --fail-with-body " + command[len("curl ") :]
    proc = subprocess.run(["bash", "-c", command], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, (
        f"{block.where}: `{command}` exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    )
    out = proc.stdout.strip()
    assert out, f"{block.where}: `{command}` printed nothing"
    if out.startswith("{"):
        for line in out.splitlines():
            json.loads(line)  # JSON answers (and JSON lines) parse


SERVER_PYTHON = [b for b in marked("server") if b.lang == "python"]


@pytest.mark.parametrize("block", SERVER_PYTHON, ids=[b.where for b in SERVER_PYTHON])
def test_server_python(block, live) -> None:
    server, cwd = live
    script = cwd / f"readme_{block.line}.py"
    script.write_text(_rewrite_addresses(block.text, server))
    proc = subprocess.run([sys.executable, str(script)], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"{block.where}: the example failed:\n{proc.stderr[-3000:]}"
    assert proc.stdout.strip(), f"{block.where}: the example printed nothing"


# -- settings YAML -----------------------------------------------------------------------------------------


SETTINGS_FILES = marked("settings-yaml")


def _settings_file_name(block) -> str:
    first = block.text.splitlines()[0]
    match = re.match(r"#\s*(\S+\.ya?ml)\s*$", first)
    assert match, f"{block.where}: a settings file block starts with a '# NAME.yaml' comment"
    return match.group(1)


@pytest.mark.parametrize("block", SETTINGS_FILES, ids=[b.where for b in SETTINGS_FILES])
def test_settings_yaml(block, tmp_path) -> None:
    from server.settings import ServerSettings

    _settings_file_name(block)
    data = yaml.safe_load(block.text)
    assert isinstance(data, dict) and "model_repository" in data
    unknown = set(data) - set(ServerSettings.model_fields)
    assert not unknown, f"{block.where}: not server settings: {sorted(unknown)}"
    settings_file = tmp_path / "serve.yaml"
    settings_file.write_text(yaml.safe_dump({**data, "model_repository": str(tmp_path)}))
    from server.settings import load_settings

    load_settings(settings_file)  # raises on any invalid value


# -- parse blocks ------------------------------------------------------------------------------------------


def _tracked_top_level() -> set[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, timeout=60,
                             check=True)
        names = {line.split("/", 1)[0] for line in out.stdout.splitlines() if line}
    except (OSError, subprocess.SubprocessError):
        names = set()
    if not names:  # not a git checkout: everything but the usual untracked outputs
        names = {p.name for p in REPO.iterdir()} - {".venv", ".venv-lite37", "demo", "runs", ".git", ".cache"}
    return names


TRACKED = _tracked_top_level()


def _path_tokens(argv: list[str]) -> list[str]:
    out = []
    for token in argv:
        for part in (token, token.split("=", 1)[-1], token.lstrip("@")):
            out.append(part)
    return out


def _check_repo_paths(argv: list[str]) -> None:
    for token in _path_tokens(argv):
        head = token.split("/", 1)[0]
        if "/" in token and head in TRACKED and not any(c in token for c in "*?$"):
            path = token.split(":", 1)[0]
            assert (REPO / path).exists(), f"the command names {path}, which is not in the repository"


def _split_env(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    env: dict[str, str] = {}
    while argv and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", argv[0]):
        key, value = argv[0].split("=", 1)
        env[key] = value
        argv = argv[1:]
    return env, argv


def _parse_ddrnet(argv: list[str]):
    from cli.main import _requested_command, build_parser

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            return build_parser(_requested_command(argv)).parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"`ddrnet {shlex.join(argv)}` does not parse (exit {exc.code}): {stderr.getvalue()}")


def _check_config(config: str, overrides: list[str]) -> None:
    from training.config import load_config

    path = REPO / config if not Path(config).is_absolute() else Path(config)
    if path.is_file():
        load_config(path, overrides)  # ConfigError names a bad key or value
    else:
        assert config.split("/", 1)[0] not in TRACKED, f"config {config} is not in the repository"


def _check_ddrnet(argv: list[str], env: dict[str, str], monkeypatch, tmp_path) -> None:
    args = _parse_ddrnet(argv)
    if args.command in ("train", "eval") and getattr(args, "config", None):
        _check_config(args.config, args.overrides)
    if args.command == "quickstart":
        _check_config(str(DIGITS_CONFIG), ["data_url=demo/data/digits", *args.overrides])
    if args.command == "serve":
        _check_serve(args, env, monkeypatch, tmp_path)
    # OTEL_* are OpenTelemetry's own variables: the server reads the endpoint and protocol ones
    # (server.tracing), the SDK the others; they must at least be ones the spec defines.
    unknown_env = [k for k in env if not k.startswith("DDRNET_") and k not in OTEL_VARIABLES]
    assert not unknown_env, f"environment {unknown_env} means nothing to ddrnet"
    if any(k.startswith("OTEL_") for k in env):
        from server.tracing import tracing_config

        assert tracing_config(None, None, environ=env) is not None, "the OTEL_* variables turn nothing on"


def _check_serve(args, env: dict[str, str], monkeypatch, tmp_path) -> None:
    """The options and DDRNET_* variables validate as ServerSettings (paths replaced by existing ones)."""
    from cli.serve import _overrides
    from server.settings import ServerSettings, load_settings

    for key in list(os.environ):
        if key.startswith("DDRNET_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        if key in OTEL_VARIABLES:
            continue  # OpenTelemetry's, checked in _check_ddrnet
        field = key.removeprefix("DDRNET_").lower()
        assert field in ServerSettings.model_fields, f"{key} is not a server setting"
        monkeypatch.setenv(key, str(tmp_path) if field == "model_repository" else value)
    overrides = _overrides(args)
    if "runtime_python" in overrides:
        overrides["runtime_python"] = sys.executable  # only its existence is checked at start
    if args.config is not None:
        declared = {Path(b.text.splitlines()[0].lstrip("# ").strip()).name for b in SETTINGS_FILES}
        assert args.config.name in declared or (REPO / args.config).is_file(), (
            f"--config {args.config}: neither a repository file nor a settings file shown in the README"
        )
        return  # test_settings_yaml validates the file's content
    overrides["model_repository"] = tmp_path
    load_settings(None, **overrides)


def _check_make(argv: list[str]) -> None:
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z_][\w-]*):", makefile, flags=re.M))
    for word in argv[1:]:
        if "=" in word:
            name = word.split("=", 1)[0]
            assert f"$({name})" in makefile, f"make variable {name} is not used by the Makefile"
        else:
            assert word in targets, f"make target {word!r} does not exist (targets: {sorted(targets)})"


def _check_pip(argv: list[str]) -> None:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = set(pyproject.get("optional-dependencies", {}))
    dependencies = {canonicalize_name(Requirement(d).name) for d in pyproject["dependencies"]}
    assert argv[0].endswith("pip") and argv[1] in ("install", "uninstall"), f"unexpected pip command {argv}"
    words = [w for w in argv[2:] if w not in ("-e", "--yes", "-y", "--quiet", "-q", "--upgrade", "-U")]
    assert words, "pip with nothing to install"
    for word in words:
        assert not word.startswith("-"), f"pip option {word} is not known to this test"
        if word == "." or word.startswith(".["):
            wanted = set(re.findall(r"[\w-]+", word[2:-1])) if word.startswith(".[") else set()
            assert wanted <= extras, f"extras {sorted(wanted - extras)} are not in pyproject.toml"
        elif word.endswith(".whl"):
            name, *_ = parse_wheel_filename(Path(word).name)
            assert name == canonicalize_name("mindspore-lite"), f"unexpected wheel {word}"
        elif argv[1] == "uninstall":
            assert canonicalize_name(word) in dependencies, f"{word} is not a dependency to swap out"
        else:
            Requirement(word)  # a valid requirement specifier


def _check_docker(argv: list[str], built: dict[str, str | None]) -> None:
    """``built`` maps each tag a README `docker build -t` made to its ``--target`` (None: the default,
    last stage); a `docker run` of it is parsed with that stage's entrypoint."""
    from tests.support.deploy_facts import dockerfile_stages

    stages = dockerfile_stages()
    declared_args = {a.value.split("=", 1)[0].strip() for s in stages for a in s.all("ARG")}
    if argv[1] == "build":
        assert argv[-1] == ".", "docker build's context is the repository root"
        words = argv[2:-1]
        tag, target = None, None
        while words:
            option = words.pop(0)
            assert option in ("-t", "--build-arg", "--target"), f"docker build option {option} is not known"
            value = words.pop(0)
            if option == "-t":
                tag = value
            elif option == "--target":
                assert value in {s.alias for s in stages}, f"--target {value}: no such stage"
                target = value
            else:
                name = value.split("=", 1)[0]
                assert name in declared_args, f"--build-arg {name} is not an ARG of the Dockerfile"
        assert tag, "docker build without -t"
        built[tag] = target
        return
    assert argv[1] == "run", f"docker {argv[1]} is not known to this test"
    words = argv[2:]
    while words and words[0].startswith("-"):
        option = words.pop(0)
        if option in ("-p", "-v", "-e", "--name"):
            words.pop(0)
        else:
            assert option in ("--rm", "-d", "-it"), f"docker run option {option} is not known to this test"
    assert words, "docker run without an image"
    image, rest = words[0], words[1:]
    assert image in built, f"image {image} is not built by a `docker build -t` shown in the README"
    stage = {s.alias: s for s in stages}[built[image]] if built[image] else stages[-1]
    entry = json.loads(stage.last("ENTRYPOINT").value)
    assert entry[:3] == ["tini", "--", "ddrnet"], entry
    _parse_ddrnet([*entry[3:], *rest])


# The OpenTelemetry SDK's environment variables a README command may set (the specification's names).
OTEL_VARIABLES = frozenset({
    "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_HEADERS", "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_SDK_DISABLED",
})


def _check_curl(argv: list[str]) -> None:
    """A curl line shown without running it: its method and path are a route of the HTTP server."""
    from urllib.parse import urlsplit

    from starlette.routing import Route

    from server.http_api import create_app

    words, method = argv[1:], "GET"
    urls = [w for w in words if w.startswith("http://")]
    assert len(urls) == 1, f"curl needs one http:// URL: {argv}"
    if "-X" in words:
        method = words[words.index("-X") + 1]
    path = urlsplit(urls[0]).path
    app = create_app(_FakeCore())
    routes = [r for r in app.routes if isinstance(r, Route)]
    matches = [r for r in routes if r.path_regex.match(path) and method in r.methods]
    assert matches, f"{method} {path} is not a route of the server"


class _FakeCore:
    """Just enough of a DataPlane for create_app to build its routes."""

    version = "0"
    metrics = None
    tracing = None
    settings = type("Settings", (), {"web_ui": True})()


def _check_kubectl(argv: list[str]) -> None:
    assert argv[1] == "apply", f"kubectl {argv[1]} is not known to this test"
    words = argv[2:]
    assert words, "kubectl apply needs -f or -k"
    while words:
        option, path = words.pop(0), words.pop(0)
        assert option in ("-f", "-k"), f"kubectl apply option {option} is not known to this test"
        target = REPO / path
        if option == "-k":
            assert (target / "kustomization.yaml").is_file(), f"{path} has no kustomization.yaml"
        else:
            assert target.is_file(), f"{path} does not exist"


PARSE_COMMANDS = _block_commands("parse")
# msrun-based commands are checked together (one process imports msrun's parser for all of them)
MSRUN_PROGRAMS = ("scripts/train_distributed.sh", "msrun")
MSRUN_COMMANDS = [(b, c) for b, c in PARSE_COMMANDS if c.split()[0] in MSRUN_PROGRAMS]
OTHER_COMMANDS = [item for item in PARSE_COMMANDS if item not in MSRUN_COMMANDS]
DOCKER_BUILT: dict[str, str | None] = {}


@pytest.mark.parametrize(("block", "command"), OTHER_COMMANDS, ids=_ids(OTHER_COMMANDS))
def test_parse_command(block, command, monkeypatch, tmp_path) -> None:
    assert "$(" not in command or command.startswith("docker"), "command substitution in a parse block"
    env, argv = _split_env(shlex.split(command))
    _check_repo_paths(argv)
    program = argv[0]
    if program == "ddrnet":
        _check_ddrnet(argv[1:], env, monkeypatch, tmp_path)
    elif program == "make":
        _check_make(argv)
    elif program.endswith("/pip"):
        _check_pip(argv)
    elif program == "docker":
        _check_docker(argv, DOCKER_BUILT)
    elif program == "kubectl":
        _check_kubectl(argv)
    elif program == "curl":
        _check_curl(argv)
    elif program == "scripts/setup_lite_py37.sh":
        script = REPO / program
        assert os.access(script, os.X_OK), f"{program} is not executable"
        assert len(argv) <= 2, f"{program} takes at most one argument (the venv directory)"
        assert subprocess.run(["bash", "-n", str(script)], timeout=30).returncode == 0
    else:
        pytest.fail(f"{block.where}: no checker for `{program}`: teach tests/docs/test_readme.py to parse it "
                    "or show it in a run block")
    assert not env or program == "ddrnet", f"environment assignments before {program} are not checked"


# -- msrun -------------------------------------------------------------------------------------------------

RECORDER = """#!/bin/sh
# stands in for msrun: records its argv (NUL-separated) and exits 0
printf '%s\\0' "$@" >> "$MSRUN_RECORD"
printf '\\n\\0' >> "$MSRUN_RECORD"
"""

MSRUN_PARSE = """
import json, sys
from mindspore.parallel.cluster.run import get_args
out = []
for argv in json.load(sys.stdin):
    sys.argv = ["msrun", *argv]
    try:
        args = get_args()
    except SystemExit as exc:
        out.append({"error": f"msrun rejects {argv} (exit {exc.code})"})
        continue
    out.append({k: v for k, v in vars(args).items() if isinstance(v, (int, str, list, bool))})
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def msrun_calls(tmp_path_factory) -> dict[str, dict]:
    """For each msrun-based README command: the argv msrun got (train_distributed.sh run for real with
    msrun replaced by a recorder), parsed by msrun's own argument parser."""
    tmp = tmp_path_factory.mktemp("msrun")
    fake_bin = tmp / "bin"
    fake_bin.mkdir()
    (fake_bin / "msrun").write_text(RECORDER)
    (fake_bin / "msrun").chmod(0o755)
    argvs: list[list[str]] = []
    for _block, command in MSRUN_COMMANDS:
        argv = shlex.split(command)
        if argv[0] == "msrun":
            argvs.append(argv[1:])
            continue
        record = tmp / f"record{len(argvs)}"
        env = {**_env(), "MSRUN_RECORD": str(record), "VENV": str(tmp / "no-venv")}
        env["PATH"] = f"{fake_bin}{os.pathsep}{env['PATH']}"
        proc = subprocess.run(["bash", str(REPO / argv[0]), *argv[1:]], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"`{command}` failed:\n{proc.stderr}"
        recorded = record.read_bytes().split(b"\0")
        argvs.append([w.decode() for w in recorded if w and w != b"\n"])
    proc = subprocess.run([sys.executable, "-c", MSRUN_PARSE], input=json.dumps(argvs), capture_output=True,
                          text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    parsed = json.loads(proc.stdout.strip().splitlines()[-1])
    return {command: {"argv": argv, **result}
            for (_b, command), argv, result in zip(MSRUN_COMMANDS, argvs, parsed, strict=True)}


@pytest.mark.parametrize(("block", "command"), MSRUN_COMMANDS, ids=_ids(MSRUN_COMMANDS))
def test_msrun_command(block, command, msrun_calls) -> None:
    call = msrun_calls[command]
    assert "error" not in call, call.get("error")
    argv = shlex.split(command)
    _check_repo_paths(argv)
    if argv[0] == "scripts/train_distributed.sh":
        assert call["worker_num"] == int(argv[1])
        assert "--join=True" in call["argv"]
    assert 1 <= call["local_worker_num"] <= call["worker_num"]
    if call["worker_num"] > call["local_worker_num"]:  # several machines: each names its rank and the master
        assert call["node_rank"] >= 0 and call["master_addr"] != "127.0.0.1", call
    assert Path(call["task_script"]).name == "ddrnet", call["task_script"]
    args = _parse_ddrnet(call["task_script_args"])
    assert args.command == "train"
    _check_config(args.config, args.overrides)


def test_train_distributed_usage() -> None:
    """The script's usage text names the form the README documents, and a bad call exits 2."""
    proc = subprocess.run(["bash", str(REPO / "scripts" / "train_distributed.sh")], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2
    usage = "scripts/train_distributed.sh NUM_WORKERS CONFIG [msrun options] [-- ddrnet train options]"
    assert usage in proc.stdout
    for word in ("--node_rank", "--master_addr", "--local_worker_num"):
        assert word in proc.stdout
