"""`ddrnet convert`: the authors' PyTorch checkpoints become MindSpore checkpoints whose
``variant="authors"`` network reproduces the PyTorch forward pass (reference: torch_reference.py)."""

from __future__ import annotations

import json
import re
import sys

import mindspore as ms
import pytest

import cli.main
from model import create_model
from tests.support.ddrnet_testutil import assert_logits_close, images, ms_mode, reference

torch = pytest.importorskip("torch", reason="torch (the [torch] extra) not installed: .pth reading untested")
torch_reference = pytest.importorskip("tests.support.torch_reference")


def _authors_pth(tmp_path, arch: str, seed: int, wrap: bool = False) -> tuple[object, str]:
    net = torch_reference.randomize(torch_reference.build(arch), seed=seed)
    state = net.state_dict()
    if wrap:  # as saved from DataParallel inside a training checkpoint
        state = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 90}
    path = tmp_path / f"{arch}.pth"
    torch.save(state, path)
    return net, str(path)


@pytest.fixture(autouse=True)
def _only_convert(monkeypatch):
    """Drive the real `ddrnet` dispatcher with only this subcommand registered (the others load
    their own packages)."""
    monkeypatch.setattr(cli.main, "SUBCOMMANDS", {"convert": cli.main.SUBCOMMANDS["convert"]})


def _convert(src: str, arch: str, dst: str) -> int:
    return cli.main.main(["convert", src, "--arch", arch, "--output", dst])


@pytest.mark.parametrize("arch", ["ddrnet23_slim", "ddrnet23", "ddrnet39"])
def test_reference_port_has_the_published_layout(arch):
    net = torch_reference.build(arch)
    layout = [(k, tuple(v.shape)) for k, v in net.state_dict().items()]
    assert layout == reference(f"{arch}_authors_pytorch_state_dict.json")


@pytest.mark.parametrize(
    ("arch", "size", "mode", "wrap"),
    [
        pytest.param(  # non-square: H and W kept apart
            "ddrnet23_slim", (64, 96), ms.GRAPH_MODE, True, id="ddrnet23_slim"
        ),
        pytest.param(  # the split layer3 and its two fusions; 40 M parameters written and read twice
            "ddrnet39", (64, 64), ms.PYNATIVE_MODE, False, marks=pytest.mark.slow, id="ddrnet39"
        ),
    ],
)
def test_converted_weights_reproduce_pytorch(tmp_path, capsys, arch, size, mode, wrap):
    torch_net, pth = _authors_pth(tmp_path, arch, seed=7, wrap=wrap)
    dst = tmp_path / "out" / f"{arch}.ckpt"
    assert _convert(pth, arch, str(dst)) == 0
    assert f"wrote {dst}" in capsys.readouterr().out
    x = images((2, 3, *size), seed=11)
    with torch.no_grad():
        expected = torch_net(torch.from_numpy(x)).numpy()
    with ms_mode(mode):
        net = create_model(arch, variant="authors", checkpoint_path=str(dst))
        net.set_train(False)
        ours = net(ms.Tensor(x)).asnumpy()
    assert_logits_close(ours, expected, rel=1e-4)


def test_wrong_arch_is_named_with_a_guess(tmp_path, capsys):
    _, pth = _authors_pth(tmp_path, "ddrnet23_slim", seed=1)
    assert _convert(pth, "ddrnet23", str(tmp_path / "x.ckpt")) == 2
    err = capsys.readouterr().err
    assert "wrong shape: conv1.0.weight (expected (64, 3, 3, 3), found (32, 3, 3, 3))" in err
    assert "is --arch ddrnet23 right? (the file looks like 'ddrnet23_slim')" in err
    assert not (tmp_path / "x.ckpt").exists()


def test_missing_tensor_is_named(tmp_path, capsys):
    net = torch_reference.build("ddrnet23_slim")
    state = net.state_dict()
    del state["layer5_.0.bn3.running_var"]
    torch.save(state, tmp_path / "partial.pth")
    assert _convert(str(tmp_path / "partial.pth"), "ddrnet23_slim", str(tmp_path / "x.ckpt")) == 2
    assert "1 parameter(s) missing: layer5_.0.bn3.moving_variance" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "source checkpoint not found"),
        (b"definitely not a pickle", "cannot read .* as a PyTorch state dict"),
        ("pickled_object", "holds a .*_NotATensor object, which is not unpickled"),
    ],
)
def test_unreadable_sources_are_clear_errors(tmp_path, capsys, content, message):
    src = tmp_path / "src.pth"
    if content == "pickled_object":  # weights_only=True refuses arbitrary objects
        torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": _NotATensor()}, src)
    elif content is not None:
        src.write_bytes(content)
    assert _convert(str(src), "ddrnet23_slim", str(tmp_path / "x.ckpt")) == 2
    err = capsys.readouterr().err
    assert err.startswith("ddrnet convert: error: ")
    assert re.search(message, err), err
    assert "Traceback" not in err


def test_output_must_be_a_ckpt(tmp_path, capsys):
    _, pth = _authors_pth(tmp_path, "ddrnet23_slim", seed=2)
    assert _convert(pth, "ddrnet23_slim", str(tmp_path / "x.bin")) == 2
    assert "output must end in .ckpt" in capsys.readouterr().err


def test_missing_torch_says_what_to_install(tmp_path, capsys, monkeypatch):
    src = tmp_path / "a.pth"
    src.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    assert _convert(str(src), "ddrnet23_slim", str(tmp_path / "x.ckpt")) == 2
    assert "pip install 'ddrnet-serve[torch]'" in capsys.readouterr().err


class _NotATensor:
    pass


def test_convert_prints_the_export_command_that_works_as_printed(tmp_path, capsys, monkeypatch):
    """The converted authors' checkpoint exports with the printed command: no --arch, no --variant, no
    --num-classes (the file says all three); only the repository and a small image size are changed."""
    import shlex

    monkeypatch.setitem(cli.main.SUBCOMMANDS, "export", ("cli.export", "export"))  # beside _only_convert

    _, pth = _authors_pth(tmp_path, "ddrnet23_slim", seed=3)
    dst = tmp_path / "out" / "slim.ckpt"
    assert _convert(pth, "ddrnet23_slim", str(dst)) == 0
    out = capsys.readouterr().out
    line = next(text.strip() for text in out.splitlines() if text.strip().startswith("ddrnet export "))
    argv = shlex.split(line)[1:]
    assert "--arch" not in argv and "--variant" not in argv and "--num-classes" not in argv
    argv[argv.index("--repository") + 1] = str(tmp_path / "models")
    assert cli.main.main([*argv, "--formats", "onnx", "--image-size", "64", "--crop-pct", "1.0"]) == 0
    manifest = json.loads((tmp_path / "models" / "ddrnet23_slim" / "1" / "model.json").read_text())
    facts = (manifest["arch"], manifest["weight_variant"], manifest["num_classes"])
    assert facts == ("ddrnet23_slim", "authors", 1000)
