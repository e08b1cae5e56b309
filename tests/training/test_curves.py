"""Training curves (``training.curves``, ``ddrnet runs compare``) from ``log.jsonl`` files written the way
the trainer writes them: a resumed epoch keeps its last record, a line cut by a kill is skipped, the
summary reads the best and last val figures, the figure is a PNG holding every run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.curves import CurvesError, draw, format_table, read_log, summary


def _write_run(run_dir: Path, top1: list[float], *, cut: bool = False, resumed: bool = False) -> Path:
    run_dir.mkdir(parents=True)
    lines = [{"type": "start", "time": 1000.0, "steps_per_epoch": 4}]
    for epoch, acc in enumerate(top1, start=1):
        for k in range(1, 5):
            step = (epoch - 1) * 4 + k
            lines.append({"type": "step", "time": 1000.0 + step, "epoch": epoch, "step": step,
                          "loss": 2.0 / step, "lr": 0.1 * step / 8, "img_per_s": 100.0})
        lines.append({"type": "epoch", "time": 1000.0 + 60 * epoch, "epoch": epoch, "step": epoch * 4,
                      "loss": 1.0 / epoch, "lr": 0.05, "img_per_s": 90.0 + epoch,
                      "val": {"top1": acc, "top5": min(100.0, acc + 10), "loss": 1.0, "images": 20}})
    if resumed:  # a resume repeats epoch 1 with a better figure: the last record counts
        lines.append({"type": "start", "time": 2000.0, "steps_per_epoch": 4})
        lines.append({"type": "epoch", "time": 2010.0, "epoch": 1, "step": 4, "loss": 0.9, "lr": 0.05,
                      "img_per_s": 95.0, "val": {"top1": 99.0, "top5": 100.0}})
    text = "\n".join(json.dumps(line) for line in lines) + "\n"
    if cut:
        text += '{"type": "step", "epo'  # killed mid-line
    (run_dir / "log.jsonl").write_text(text)
    return run_dir


def test_read_and_summarise(tmp_path: Path) -> None:
    run = read_log(_write_run(tmp_path / "r1", [50.0, 75.0, 70.0], cut=True))
    assert len(run.steps) == 12 and [e["epoch"] for e in run.epochs] == [1, 2, 3]
    assert run.step_epochs()[:2] == [0.25, 0.5]
    row = summary(run)
    assert (row["epochs"], row["best_top1"], row["best_epoch"], row["last_top1"]) == (3, 75.0, 2, 70.0)
    assert row["img_per_s"] == 92.0 and row["minutes"] == pytest.approx(3.0)
    resumed = read_log(_write_run(tmp_path / "r2", [50.0, 60.0], resumed=True))
    assert [e["val"]["top1"] for e in resumed.epochs] == [99.0, 60.0]
    table = format_table([row, summary(resumed)]).splitlines()
    assert table[0].split()[:2] == ["run", "epochs"] and table[1].split()[:3] == ["r1", "3", "75.00"]


def test_draw_writes_one_png_for_several_runs(tmp_path: Path) -> None:
    runs = [read_log(_write_run(tmp_path / name, [40.0, 80.0])) for name in ("a", "b")]
    out = draw(runs, tmp_path / "out" / "both.png", title="two runs")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert not list((tmp_path / "out").glob("*.partial.png"))


def test_a_directory_without_a_log_is_named(tmp_path: Path) -> None:
    with pytest.raises(CurvesError, match=r"has no log\.jsonl"):
        read_log(tmp_path)


def test_cli_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    a, b = _write_run(tmp_path / "a", [10.0, 20.0]), _write_run(tmp_path / "b", [30.0, 40.0])
    assert main(["runs", "compare", str(a), str(b), "--output", str(tmp_path / "c.png")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[2].split()[:3] == ["b", "2", "40.00"] and (tmp_path / "c.png").is_file()
    assert main(["runs", "compare", str(a), "--output", str(tmp_path / "c.jpg")]) == 2
    assert "--output must be a .png file" in capsys.readouterr().err
    assert main(["runs", "compare", str(tmp_path / "nothing")]) == 2
    assert "has no log.jsonl" in capsys.readouterr().err
