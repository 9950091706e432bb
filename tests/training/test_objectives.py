"""Objectives are pluggable: a class registered in OBJECTIVES with the paper loss's call
signature trains through finetune, the CLI and the log, whatever its terms are called."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile
import torch

from napari_fusionmamba.cli import main
from napari_fusionmamba.errors import PreflightError
from napari_fusionmamba.training import OBJECTIVES, FusionLoss, Pair, TrainSettings, check_settings, finetune
from napari_fusionmamba.training.objectives import make_objective


class MeanAbsolute:
    """A toy objective: L1 to each source, with its own term names."""

    def __call__(self, fused, a, b, weight=None):
        to_a, to_b = (fused - a).abs().mean(), (fused - b).abs().mean()
        return to_a + to_b, {"to_a": to_a, "to_b": to_b}


def _pair(size=64):
    y, x = np.mgrid[:size, :size].astype(np.float32)
    return (np.sin(x / 3) * 0.5 + 0.5).astype(np.float32), (np.cos(y / 4) * 0.5 + 0.5).astype(np.float32)


def test_the_paper_objective_is_the_default_and_follows_the_settings():
    settings = TrainSettings(loss_weights=(1.0, 2.0, 3.0), ssim="ssim")
    objective = make_objective(settings)
    assert settings.objective == "paper" and isinstance(objective, FusionLoss)
    assert (objective.a1, objective.a2, objective.a3, objective.ssim_mode) == (1.0, 2.0, 3.0, "ssim")


def test_an_unknown_objective_is_a_preflight_error():
    with pytest.raises(PreflightError, match="unknown objective 'nope': choose one of paper"):
        check_settings(TrainSettings(objective="nope"))


def test_a_registered_objective_trains_and_logs_its_own_terms(tmp_path, monkeypatch):
    monkeypatch.setitem(OBJECTIVES, "l1", MeanAbsolute)
    seen = []
    settings = TrainSettings(objective="l1", steps=4, crop=32, batch=2, warmup=1, val_every=2, base="tiny")
    result = finetune([Pair(*_pair())], settings, tmp_path / "run", on_step=seen.append)
    assert result.step == 4
    assert set(seen[-1].terms) == {"loss", "to_a", "to_b"} and set(seen[-1].val_terms) == {"loss", "to_a", "to_b"}
    with open(tmp_path / "run" / "log.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == ["step", "lr", "loss", "to_a", "to_b", "val_loss", "val_to_a", "val_to_b", "seconds"]
    assert len(rows) == 4 and rows[1]["val_to_a"] != ""
    total, terms = MeanAbsolute()(*(torch.zeros(1, 1, 4, 4),) * 3)
    assert float(total) == 0 and set(terms) == {"to_a", "to_b"}


def test_the_cli_passes_the_objective(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(OBJECTIVES, "l1", MeanAbsolute)
    a, b = _pair()
    tifffile.imwrite(tmp_path / "a.tif", a)
    tifffile.imwrite(tmp_path / "b.tif", b)
    pair = [
        "--pair",
        str(tmp_path / "a.tif"),
        str(tmp_path / "b.tif"),
        "--crop",
        "32",
        "--steps",
        "2",
        "--from",
        "tiny",
    ]
    assert main(["finetune", *pair, "--objective", "nope", "--out", str(tmp_path / "bad")]) == 2
    assert "unknown objective 'nope'" in capsys.readouterr().err
    assert main(["finetune", *pair, "--objective", "l1", "--out", str(tmp_path / "run")]) == 0
    with open(tmp_path / "run" / "log.csv", newline="") as handle:
        assert "to_a" in next(csv.reader(handle))
