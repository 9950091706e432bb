"""``fusionmamba finetune`` given settings or data that would train a broken model: refused
before any step, or stopped with an error, and never registered."""

from __future__ import annotations

import pytest

from conftest import write_pair_files
from napari_fusionmamba.cli import main
from napari_fusionmamba.registry import list_models


@pytest.fixture
def pair_files(tmp_path):
    return write_pair_files(tmp_path, 80)


def _finetune(capsys, pair_files, run, *flags: str) -> tuple[int, str]:
    code = main([
        "finetune", "--pair", *pair_files, "--from", "tiny", "--out", str(run), "--steps", "4", "--crop", "32",
        "--batch", "2", "--name", "broken", *flags,
    ])  # fmt: skip
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lr", "nan"], "learning rate must be a positive finite number"),
        (["--lr", "inf"], "learning rate must be a positive finite number"),
        (["--loss-weights", "nan,1,10"], "loss weights must be three finite"),
        (["--loss-weights", "10,inf,10"], "loss weights must be three finite"),
    ],
)
def test_non_finite_settings_are_refused_before_any_step(tmp_path, capsys, pair_files, flags, message):
    run = tmp_path / "run"
    code, err = _finetune(capsys, pair_files, run, *flags)
    assert code == 2 and message in err.strip().splitlines()[-1]
    assert not run.exists() and "broken" not in [e.name for e in list_models()]


def test_a_loss_that_becomes_non_finite_stops_the_run_unregistered(tmp_path, capsys, pair_files):
    run = tmp_path / "run"
    code, err = _finetune(capsys, pair_files, run, "--lr", "1e30", "--steps", "20")
    last = err.strip().splitlines()[-1]
    assert code == 2 and "loss became" in last and str(run) in last, err
    assert "broken" not in [e.name for e in list_models()]
