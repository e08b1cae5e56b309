"""Offline prediction (``ops.predict``, ``ddrnet predict``) on the exported DDRNet-23-slim test model: the
answers equal the runtime's own on the same eval transform, an undecodable file is one error line, the
order follows the sorted input, ``--resume`` skips what was written, bad requests are one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from model import repository as repo
from ops.predict import PredictError, predict
from tests.support import server_fixtures as sf


@pytest.fixture(scope="module")
def photos_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for index, path in enumerate(sf.photo_paths()[:5]):
        sub = folder / ("b" if index % 2 else "a")
        sub.mkdir(exist_ok=True)
        shutil.copy(path, sub / path.name)
    (folder / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    return folder


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_predictions_equal_the_runtime_on_the_eval_transform(slim_repository, photos_dir, tmp_path) -> None:
    from inference.runtimes import create_runtime
    from model.preprocess import EvalTransform
    from server.postprocess import top_k

    out = tmp_path / "pred.jsonl"
    summary = predict(slim_repository, "slim", [photos_dir], out, top_k=3, batch_size=2)
    assert (summary.images, summary.failed, summary.runtime) == (5, 1, "onnxruntime")
    lines = _lines(out)
    paths = [line["path"] for line in lines]
    assert paths == sorted(paths) and len(paths) == 6  # sorted input order, the broken file included
    [broken] = [line for line in lines if "error" in line]
    assert broken["path"].endswith("broken.png") and "ImageDecodeError" in broken["error"]
    vdir = repo.version_dir(slim_repository, "slim", 1)
    manifest = repo.check_version(vdir)
    rt = create_runtime("onnxruntime")
    rt.load(str(vdir), manifest, "cpu", 0, {"threads": 1})
    transform = EvalTransform.for_manifest(manifest)
    for line in lines:
        if "error" in line:
            continue
        logits = rt.infer(transform(Path(line["path"]).read_bytes())[None])
        expected = top_k(logits, 3, manifest.labels)[0]
        assert [p["index"] for p in line["predictions"]] == [p.index for p in expected]
        np.testing.assert_allclose(
            [p["score"] for p in line["predictions"]], [p.score for p in expected], atol=1e-5
        )


def test_resume_skips_what_was_written(slim_repository, photos_dir, tmp_path) -> None:
    out = tmp_path / "pred.jsonl"
    predict(slim_repository, "slim", [photos_dir / "a"], out)
    first = len(_lines(out))
    summary = predict(slim_repository, "slim", [photos_dir], out, resume=True)
    assert summary.skipped == first and summary.images + summary.failed == 6 - first
    assert sorted(line["path"] for line in _lines(out)) == sorted({line["path"] for line in _lines(out)})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model": "nope"}, "has no complete version of 'nope'"),
        ({"inputs": ["/no/such/dir"]}, "input /no/such/dir does not exist"),
        ({"precision": "int8"}, "was not verified for precision int8"),
        ({"runtime": "tensorflow"}, "unknown runtime 'tensorflow'"),
        ({"batch_size": 0}, "must be at least 1"),
    ],
)
def test_bad_requests_are_named(slim_repository, photos_dir, tmp_path, kwargs, message) -> None:
    args = {"model": "slim", "inputs": [photos_dir]} | kwargs
    with pytest.raises(PredictError, match=message):
        predict(slim_repository, args.pop("model"), args.pop("inputs"), tmp_path / "o.jsonl", **args)


def test_cli(slim_repository, photos_dir, tmp_path, capsys) -> None:
    from cli.main import main

    out = tmp_path / "cli.jsonl"
    code = main(
        [
            "predict",
            "--model-repository",
            str(slim_repository),
            "--model",
            "slim",
            str(photos_dir / "b"),
            "--output",
            str(out),
            "--top-k",
            "1",
        ]
    )
    assert code == 0 and "2 classified, 0 failed" in capsys.readouterr().out
    assert all(len(line["predictions"]) == 1 for line in _lines(out))
    assert (
        main(
            [
                "predict",
                "--model-repository",
                str(slim_repository),
                "--model",
                "slim",
                str(photos_dir),
                "--output",
                str(out),
            ]
        )
        == 1
    )  # the broken file: named in the output, exit 1
    assert (
        main(
            [
                "predict",
                "--model-repository",
                str(tmp_path),
                "--model",
                "slim",
                str(photos_dir),
                "--output",
                str(out),
            ]
        )
        == 2
    )
    assert "has no complete version" in capsys.readouterr().err


def test_globs_list_files_model_dir_and_csv(slim_repository, photos_dir, tmp_path) -> None:
    """The other ways to name inputs and the model give the same answers; CSV rows carry them, and
    --resume reads the CSV back."""
    import csv

    reference = tmp_path / "ref.jsonl"
    predict(slim_repository, "slim", [photos_dir], reference, top_k=2)
    expected = {line["path"]: line for line in _lines(reference)}

    listed = tmp_path / "inputs.txt"
    listed.write_text(f"# two ways in one list\n{photos_dir / 'a'}\n\n{photos_dir}/b/*.*\n")
    out = tmp_path / "pred.csv"
    vdir = repo.version_dir(slim_repository, "slim", 1)
    summary = predict(None, None, [], out, model_dir=vdir, list_file=listed, top_k=2, instances=2, threads=1)
    assert (summary.images, summary.failed) == (5, 1)
    rows = list(csv.reader(out.open(newline="")))
    assert rows[0] == ["path", "error", "label_1", "score_1", "label_2", "score_2"]
    assert sorted(row[0] for row in rows[1:]) == sorted(expected)
    for row in rows[1:]:
        want = expected[row[0]]
        if "error" in want:
            assert row[1] == want["error"] and row[2:] == ["", "", "", ""]
        else:
            assert row[2::2] == [p["label"] for p in want["predictions"]]
            np.testing.assert_allclose(
                [float(v) for v in row[3::2]], [p["score"] for p in want["predictions"]], atol=1e-6
            )

    # a cut last row is done again; the header is not written twice
    text = out.read_text()
    out.write_text(text[: text.rindex("\n", 0, len(text) - 1) + 8])
    again = predict(None, None, [photos_dir], out, model_dir=vdir, top_k=2, resume=True)
    assert again.images + again.failed == 1 and again.skipped == 5
    rows = list(csv.reader(out.open(newline="")))
    assert [row[0] for row in rows].count("path") == 1
    glob_out = tmp_path / "glob.jsonl"
    predict(slim_repository, "slim", [f"{photos_dir}/**/*.jpg"], glob_out, top_k=2)
    globbed = _lines(glob_out)
    assert globbed and all(line["path"].endswith(".jpg") for line in globbed)
    assert [line["path"] for line in globbed] == sorted(line["path"] for line in globbed)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"inputs": ["/no/such/*.jpg"]}, "/no/such/*.jpg matches no image"),
        ({"inputs": [], "list_file": Path("/no/list.txt")}, "cannot read the list file /no/list.txt"),
        ({"inputs": []}, "no input: name files, folders or globs, or --list FILE"),
        ({"model_dir": Path("/tmp")}, "give --model-dir, or --model-repository with --model"),
        (
            {"repository": None, "model": None, "model_dir": Path("/tmp")},
            "/tmp is not a model version directory",
        ),
        ({"repository": None}, "name the model: --model-repository DIR --model NAME"),
        ({"instances": 0}, "must be at least 1"),
    ],
)
def test_more_bad_requests_are_named(slim_repository, photos_dir, tmp_path, kwargs, message) -> None:
    args = {"repository": slim_repository, "model": "slim", "inputs": [photos_dir], **kwargs}
    with pytest.raises(PredictError, match=None) as info:
        predict(args.pop("repository"), args.pop("model"), args.pop("inputs"), tmp_path / "o.jsonl", **args)
    assert message in str(info.value)
