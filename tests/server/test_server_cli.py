"""`ddrnet serve` options: one per ServerSettings field (derived, so they cannot drift), values reach the
settings with the documented precedence, and a bad value is one line naming the option, exit 2."""

from __future__ import annotations

import argparse

import pytest

from cli import serve as cli
from cli.main import main as ddrnet
from server.settings import ServerSettings


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_every_settings_field_is_an_option() -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    options = {opt for action in parser._actions for opt in action.option_strings}
    for name in ServerSettings.model_fields:
        assert "--" + name.replace("_", "-") in options, name
    assert "--config" in options


def test_values_reach_the_settings(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DDRNET_MAX_QUEUE_SIZE", "77")
    monkeypatch.setenv("DDRNET_HTTP_PORT", "9999")
    config = tmp_path / "serve.yaml"
    config.write_text("max_batch_size: 16\nrequest_timeout_ms: 1500\nhttp_port: 1234\n")
    args = parse("--model-repository", str(tmp_path), "--config", str(config),
                 "--preferred-batch-sizes", "8,1", "4", "--models", "a,b", "--log-json",
                 "--runtime", "onnxruntime", "--http-port", "0")
    settings = cli.settings_from_args(args)
    assert settings.preferred_batch_sizes == [1, 4, 8]
    assert settings.models == ["a", "b"]
    assert settings.log_json is True and settings.runtime == "onnxruntime"
    assert settings.http_port == 0  # option over environment over file
    assert settings.max_queue_size == 77  # environment over file
    assert settings.max_batch_size == 16 and settings.request_timeout_ms == 1500  # file over defaults


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-batch-size", "0"], "--max-batch-size (or DDRNET_MAX_BATCH_SIZE): Input should be greater"),
        (["--max-queue-delay-ms", "soon"], "--max-queue-delay-ms"),
        (["--http-port", "70000"], "--http-port"),
        (["--preferred-batch-sizes", "4,16"], "preferred batch size 16 exceeds max_batch_size 8"),
        (["--tls-cert", "/nonexistent.pem"], "tls_cert and tls_key must be given together"),
        (["--runtime-python", "/no/python"], "--runtime-python"),
    ],
)
def test_bad_values_are_one_line_naming_the_option(tmp_path, capsys, argv, message) -> None:
    assert ddrnet(["serve", "--model-repository", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ddrnet serve: error: ")
    assert message in err[0]


def test_missing_repository_and_bad_config(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("DDRNET_MODEL_REPOSITORY", raising=False)
    assert ddrnet(["serve"]) == 2
    assert "--model-repository (or DDRNET_MODEL_REPOSITORY) is required" in capsys.readouterr().err
    assert ddrnet(["serve", "--model-repository", str(tmp_path / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    config = tmp_path / "bad.yaml"
    config.write_text("max_batch: 3\n")
    assert ddrnet(["serve", "--model-repository", str(tmp_path), "--config", str(config)]) == 2
    assert "config key 'max_batch'" in capsys.readouterr().err
    missing = tmp_path / "none.yaml"
    assert ddrnet(["serve", "--model-repository", str(tmp_path), "--config", str(missing)]) == 2
    assert "--config" in capsys.readouterr().err
