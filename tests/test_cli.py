"""One command-line convention for every command (sdetalk_jax.cli): argparse `main(argv) -> int`,
usage mistakes exit 2, failures the user can fix print one `error:` line and return 1, and the
trainer takes `--config FILE` with `--config.FIELD=VALUE` overrides."""

from __future__ import annotations

import importlib

import pytest

from sdetalk_jax import train
from sdetalk_jax.data.biwi import DataError

COMMANDS = (
    "sdetalk_jax.train",
    "sdetalk_jax.evaluate",
    "sdetalk_jax.animate",
    "sdetalk_jax.data.__main__",
    "sdetalk_jax.data.synthetic",
    "sdetalk_jax.data.import_biwi",
    "sdetalk_jax.models.wav2vec2.__main__",
)


@pytest.mark.parametrize("module_name", COMMANDS)
def test_every_command_has_the_same_help(module_name, capsys):
    module = importlib.import_module(module_name)
    with pytest.raises(SystemExit) as stopped:
        module.main(["--help"])
    assert stopped.value.code == 0
    out = capsys.readouterr().out
    program = module_name.removesuffix(".__main__")
    assert out.startswith(f"usage: python -m {program} ")
    assert "-h, --help" in out


@pytest.mark.parametrize("module_name", COMMANDS)
def test_every_command_exits_2_on_an_unknown_argument(module_name, capsys):
    module = importlib.import_module(module_name)
    with pytest.raises(SystemExit) as stopped:
        module.main(["--no-such-option"])
    assert stopped.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_train_applies_config_overrides(monkeypatch, tmp_path):
    seen = {}

    def fake_train(config, workdir):
        seen.update(config=config, workdir=workdir)
        return {}

    monkeypatch.setattr(train, "train", fake_train)
    code = train.main(
        [
            "--config", "configs/synthetic.py", "--workdir", str(tmp_path),
            "--config.train.epochs=3", "--config.data.root", "elsewhere",
        ]
    )  # fmt: skip
    assert code == 0
    assert seen["workdir"] == str(tmp_path)
    assert seen["config"].train.epochs == 3 and seen["config"].data.root == "elsewhere"
    assert seen["config"].train.seed == 0  # the rest comes from the file


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("--config.train.epoch=3", "has no field 'epoch'"),
        ("--config.train.epochs=three", "--config.train.epochs=three"),
    ],
)
def test_train_refuses_a_bad_override(argument, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        train.main(["--config", "configs/synthetic.py", "--workdir", str(tmp_path), argument])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_train_refuses_a_missing_config_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        train.main(["--config", str(tmp_path / "none.py"), "--workdir", str(tmp_path)])
    assert stopped.value.code == 2
    assert "none.py: no such file" in capsys.readouterr().err


def test_train_reports_a_data_error_in_one_line(monkeypatch, tmp_path, capsys):
    def failing_train(config, workdir):
        raise DataError("corpus/F2_e01.npy: 3 frames, expected 120")

    monkeypatch.setattr(train, "train", failing_train)
    code = train.main(["--config", "configs/synthetic.py", "--workdir", str(tmp_path)])
    assert code == 1
    assert capsys.readouterr().err == "error: corpus/F2_e01.npy: 3 frames, expected 120\n"
