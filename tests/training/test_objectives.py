"""Objectives are pluggable: a class registered in OBJECTIVES with the paper loss's call
signature trains through finetune, the CLI and the log, whatever its terms are called."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile
import torch

from conftest import real_looking_pair
from napari_fusionmamba.cli import main
from napari_fusionmamba.errors import InputError, PreflightError
from napari_fusionmamba.quality import metrics
from napari_fusionmamba.training import OBJECTIVES, FusionLoss, Pair, TrainSettings, check_settings, finetune
from napari_fusionmamba.training.objectives import KeepBothLoss, keep_both_target, make_objective, qabf


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


# --- keep-both ---------------------------------------------------------------------------------


def _dim_fluorescence_pair(size=64):
    """a: dark background (0.02) with one bright square (0.3); b: textured around 0.5."""
    g = torch.Generator().manual_seed(1)
    a = torch.full((1, 1, size, size), 0.02)
    a[..., 20:40, 20:40] = 0.3
    b = 0.5 + 0.1 * torch.rand(1, 1, size, size, generator=g)
    return a, b


def test_keep_both_target_lays_the_fluorescence_on_the_structure():
    a, b = _dim_fluorescence_pair()
    target = keep_both_target(a, b)  # a's signal above 0.035, times 1.1
    assert torch.allclose(target[..., :10, :10], b[..., :10, :10])  # background: b, untouched
    assert torch.allclose(target[..., 25:35, 25:35], (b + 1.1 * (0.3 - 0.035))[..., 25:35, 25:35])
    assert torch.equal(keep_both_target(a, torch.ones_like(b)), torch.ones_like(b))  # clipped to [0, 1]
    # the first model's rule: above the 10th percentile of each image, gain 1
    first = keep_both_target(torch.cat([a, a + 0.1]), torch.cat([b, b]), background=None, gain=1.0)
    assert torch.allclose(first[:, :, 25:35, 25:35], (b + 0.28)[..., 25:35, 25:35].expand(2, -1, -1, -1))


def test_keep_both_prefers_its_target_to_max_and_to_either_source():
    a, b = _dim_fluorescence_pair()
    loss = KeepBothLoss()
    target_total, terms = loss(keep_both_target(a, b), a, b)
    assert terms["intensity"] == 0 and terms["structure"].abs() < 1e-6
    for other in (torch.maximum(a, b), a, b, (a + b) / 2):
        assert loss(other, a, b)[0] > target_total + 0.1


def test_keep_both_weights_and_weight_map_act_as_stated():
    a, b = _dim_fluorescence_pair()
    fused = (a + b) / 2
    total, terms = KeepBothLoss(1.0, 2.0, 3.0)(fused, a, b)
    assert torch.allclose(total, terms["intensity"] + 2 * terms["texture"] + 3 * terms["structure"])
    # a weight map of zeros over the fluorescent square ignores what the fusion does there
    weight = torch.ones_like(a)
    weight[..., 16:44, 16:44] = 0
    changed = fused.clone()
    changed[..., 24:36, 24:36] = 1.0
    loss = KeepBothLoss(1.0, 1.0, 0.0)
    assert torch.allclose(loss(fused, a, b, weight)[0], loss(changed, a, b, weight)[0])
    assert not torch.allclose(loss(fused, a, b)[0], loss(changed, a, b)[0])


def test_keep_both_is_registered_and_takes_the_run_s_weights():
    settings = TrainSettings(
        objective="keep-both", loss_weights=(1.0, 2.0, 3.0), target_background=None, target_gain=1.5
    )
    objective = make_objective(settings)
    assert isinstance(objective, KeepBothLoss) and (objective.a1, objective.a2, objective.a3) == (1.0, 2.0, 3.0)
    assert (objective.background, objective.gain, objective.edge_weight) == (None, 1.5, 0.0)
    assert make_objective(TrainSettings(objective="keep-both", edge_weight=2.0)).edge_weight == 2.0


def test_the_edge_term_is_the_qabf_metric_and_training_on_it_keeps_more_edges():
    a, b = (metrics.fusion_input(x).astype(np.float64) for x in real_looking_pair(96))  # 8-bit levels / 255
    ta, tb = (torch.from_numpy(x.astype(np.float32))[None, None] for x in (a, b))
    target = keep_both_target(ta, tb)
    fused = torch.round(target * 255) / 255
    expected = metrics.qabf(fused[0, 0].double().numpy() * 255, a * 255, b * 255)
    assert float(qabf(fused, ta, tb)) == pytest.approx(expected, abs=2e-3)
    # the term is off by default, and with a weight it adds weight * (1 - Qabf)
    plain, terms = KeepBothLoss()(target, ta, tb)
    with_edges, edge_terms = KeepBothLoss(edge_weight=2.0)(target, ta, tb)
    assert "edges" not in terms and torch.allclose(with_edges, plain + 2 * edge_terms["edges"])
    # descending the loss from the target keeps more of the sources' edges with the term than without
    kept = {}
    for weight in (0.0, 2.0):
        image = target.clone().requires_grad_(True)
        optimiser = torch.optim.Adam([image], lr=3e-3)
        loss = KeepBothLoss(edge_weight=weight)
        for _ in range(30):
            optimiser.zero_grad()
            loss(image, ta, tb)[0].backward()
            optimiser.step()
        kept[weight] = metrics.qabf(np.clip(image.detach()[0, 0].double().numpy(), 0, 1) * 255, a * 255, b * 255)
    assert kept[2.0] > kept[0.0] + 0.02


@pytest.mark.parametrize(
    "field, value",
    [
        ("edge_weight", -1.0),
        ("edge_weight", float("inf")),
        ("target_background", 1.5),
        ("target_background", float("nan")),
        ("target_gain", 0.0),
    ],
)
def test_keep_both_target_settings_out_of_range_are_refused(field, value):
    with pytest.raises(PreflightError, match=field.replace("_", " ")):
        check_settings(TrainSettings(objective="keep-both", **{field: value}))


@pytest.mark.slow
def test_keep_both_trains_a_network_towards_its_target(tmp_path):
    """From max(a, b) (the untrained network's output), a few steps on a dim-fluorescence pair
    lower the keep-both validation loss: the objective reaches the network's weights."""
    a, b = (x[0, 0].numpy() for x in _dim_fluorescence_pair(96))
    settings = TrainSettings(objective="keep-both", steps=20, crop=48, batch=2, lr=2e-3, warmup=2,
                             val_every=10, base="scratch", val_split="band", val_fraction=0.3)  # fmt: skip
    seen = []
    finetune([Pair(a, b)], settings, tmp_path / "run", on_step=seen.append)
    validations = [info.val_terms["loss"] for info in seen if info.val_terms]
    assert validations[-1] < validations[0]


def test_keep_both_checks_its_inputs_like_the_paper_loss():
    a, b = _dim_fluorescence_pair()
    with pytest.raises(InputError, match="three \\(B, C, H, W\\) tensors of one shape"):
        KeepBothLoss()(a[..., :32], a, b)
    with pytest.raises(InputError, match="zero everywhere"):
        KeepBothLoss()(a, a, b, torch.zeros_like(a))
