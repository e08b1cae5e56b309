"""`ddrnet classify` against a real server: table and JSON-lines output, folders and globs, per-file
errors with a non-zero exit, and one-line errors for bad options or an unreachable server."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

from cli.main import main
from tests.support.client_testutil import (
    LABELS,
    ServerProcess,
    build_onnx_repository,
    reference_logits,
    sample_images,
)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    version_dir = build_onnx_repository(root)
    with ServerProcess(root) as proc:
        yield proc, version_dir


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """a/china.jpg, a/b/flower.jpg, c/chelsea.png, notes.txt"""
    root = tmp_path_factory.mktemp("images")
    photos = {p.name: p for p in sample_images()}
    (root / "a" / "b").mkdir(parents=True)
    (root / "c").mkdir()
    shutil.copy(photos["china.jpg"], root / "a" / "china.jpg")
    shutil.copy(photos["flower.jpg"], root / "a" / "b" / "flower.jpg")
    shutil.copy(photos["chelsea.png"], root / "c" / "chelsea.png")
    (root / "notes.txt").write_text("not an image")
    return root


def _expected(version_dir: Path, paths: list[Path]) -> list[int]:
    return reference_logits(version_dir, paths).argmax(axis=1).tolist()


def test_table_output_over_http(served, tree, capsys):
    server, version_dir = served
    rc = main(["classify", str(tree / "a"), str(tree / "c" / "chelsea.png"), "--server", server.http,
               "--top-k", "2"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    files = [tree / "a" / "china.jpg", tree / "a" / "b" / "flower.jpg", tree / "c" / "chelsea.png"]
    lines = out.strip().splitlines()
    assert lines[0].split() == ["FILE", "RANK", "LABEL", "INDEX", "SCORE"]
    assert len(lines) == 1 + 2 * len(files)  # two predictions per file
    firsts = [line for line in lines[1:] if line.startswith(str(tree))]
    assert [line.split()[0] for line in firsts] == [str(f) for f in files]
    for line, index in zip(firsts, _expected(version_dir, files), strict=True):
        assert f"  {LABELS[index]}  " in line and line.rstrip().split()[-2] == str(index)
    assert "3 classified, 0 failed (model tiny v1" in err


def test_json_lines_over_grpc_with_glob(served, tree, capsys):
    server, version_dir = served
    rc = main(["classify", str(tree / "**" / "*.jpg"), "--server", server.grpc, "--protocol", "grpc",
               "--model", "tiny", "--json", "--top-k", "3", "--concurrency", "2"])
    out, _ = capsys.readouterr()
    assert rc == 0
    records = [json.loads(line) for line in out.splitlines()]
    files = [tree / "a" / "b" / "flower.jpg", tree / "a" / "china.jpg"]
    assert [r["file"] for r in records] == [str(f) for f in files]
    logits = reference_logits(version_dir, files)
    for record, row in zip(records, logits, strict=True):
        assert record["model_name"] == "tiny" and record["model_version"] == "1"
        assert [p["index"] for p in record["predictions"]] == np.argsort(-row)[:3].tolist()


def test_failed_files_are_reported_and_exit_non_zero(served, tree, capsys):
    server, version_dir = served
    rc = main(["classify", str(tree / "notes.txt"), str(tree / "missing.jpg"), str(tree / "c"),
               "--server", server.http, "--json"])
    out, err = capsys.readouterr()
    assert rc == 1
    records = {Path(r["file"]).name: r for r in map(json.loads, out.splitlines())}
    assert records["missing.jpg"]["error"]["kind"] == "no_such_file"
    assert records["notes.txt"]["error"]["kind"] == "invalid_input"
    assert "decode" in records["notes.txt"]["error"]["message"]
    expected = _expected(version_dir, [tree / "c" / "chelsea.png"])[0]
    assert records["chelsea.png"]["predictions"][0]["index"] == expected
    assert "1 classified, 2 failed" in err

    rc = main(["classify", str(tree / "notes.txt"), "--server", server.http])
    out, _ = capsys.readouterr()
    assert rc == 1 and "ERROR invalid_input: cannot decode image" in out


def test_many_files_show_a_progress_bar(served, tree, tmp_path, capsys):
    server, _ = served
    for i in range(9):
        shutil.copy(tree / "a" / "china.jpg", tmp_path / f"copy{i}.jpg")
    rc = main(["classify", str(tmp_path), "--server", server.grpc, "--protocol", "grpc", "--model", "tiny",
               "--json"])
    out, err = capsys.readouterr()
    assert rc == 0 and len(out.splitlines()) == 9
    assert "classify:" in err and "/9 [" in err  # tqdm's bar on stderr


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "nope"], "does not serve a model named 'nope'"),
        (["--protocol", "grpc"], "--model is required with gRPC"),
        (["--top-k", "0"], "--top-k must be >= 1"),
        (["--concurrency", "0"], "--concurrency must be >= 1"),
    ],
)
def test_option_errors_are_one_line(served, tree, capsys, extra, message):
    server, _ = served
    address = server.grpc if "grpc" in extra else server.http
    rc = main(["classify", str(tree / "a"), "--server", address, *extra])
    _, err = capsys.readouterr()
    assert rc == 2 and message in err and "Traceback" not in err


def test_unreachable_server_and_no_files(tree, capsys):
    rc = main(["classify", str(tree / "a"), "--server", f"127.0.0.1:{_free_port()}"])
    _, err = capsys.readouterr()
    assert rc == 2 and "cannot reach the server" in err
    rc = main(["classify", str(tree / "nothing-*.jpg")])
    _, err = capsys.readouterr()
    assert rc == 2 and "no image files found" in err
