"""`fusionmamba finetune` driven as a user would: image files, masks, recipes, resume, --name."""

import json

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch

from napari_fusionmamba.cli import main
from napari_fusionmamba.registry import list_models, load_checkpoint, load_model
from napari_fusionmamba.training import Pair, TrainSettings, finetune


def _images(size=80, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    a = ((np.sin(x / 3) * 0.5 + 0.5) * (y < size * 0.6) * 200 + rng.integers(0, 30, (size, size))).astype(np.uint8)
    b = ((np.cos(np.hypot(y - size / 2, x - size / 3) / 4) * 0.5 + 0.5) * 4000).astype(np.uint16)
    return a, b


def _write_pair(folder, name="p.png", size=80, seed=0, colour=False):
    a, b = _images(size, seed)
    (folder / "A").mkdir(parents=True, exist_ok=True)
    (folder / "B").mkdir(parents=True, exist_ok=True)
    iio.imwrite(folder / "A" / name, np.stack([a // 5, a, a // 9], -1) if colour else a)
    iio.imwrite(folder / "B" / name, (b // 16).astype(np.uint8))
    return folder / "A" / name, folder / "B" / name


@pytest.mark.slow
def test_finetune_files_with_mask_and_register_by_name(tmp_path, capsys):
    a, b = _images()
    tifffile.imwrite(tmp_path / "a.tif", a)
    tifffile.imwrite(tmp_path / "b.tif", b)
    mask = np.zeros(a.shape, np.uint8)
    mask[:, :72] = 1
    mask[10:30, 10:30] = 2
    tifffile.imwrite(tmp_path / "mask.tif", mask)
    run = tmp_path / "run"
    code = main([
        "finetune", "--pair", str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), "--mask", str(tmp_path / "mask.tif"),
        "--from", "tiny", "--out", str(run), "--steps", "6", "--crop", "32", "--batch", "2", "--lr", "5e-4",
        "--loss-weights", "10,2,10", "--name", "my-lab",
    ])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "6/6" in captured.err and "loss" in captured.err  # the progress bar
    assert "registered as model 'my-lab'" in captured.out
    config = json.loads((run / "config.json").read_text())
    assert config["settings"]["loss_weights"] == [10.0, 2.0, 10.0] and config["settings"]["lr"] == 5e-4
    assert config["pairs"][0]["mask"].endswith("mask.tif")
    assert "my-lab" in [e.name for e in list_models()]
    fused = load_model("my-lab")(*torch.rand(2, 1, 1, 40, 40))
    assert fused.shape == (1, 1, 40, 40)


def test_recipe_with_folders_relative_paths_and_flag_overrides(tmp_path, capsys):
    data = tmp_path / "data" / "kind"
    for i in range(2):
        _write_pair(data, f"{i}.png", seed=i, colour=i == 0)
    (data / "mask").mkdir()
    mask = np.ones((80, 80), np.uint8)
    iio.imwrite(data / "mask" / "0.png", mask)
    extra_a, extra_b = _write_pair(tmp_path / "extra", "x.png", seed=5)
    recipe = {
        "pairs": ["data/kind", ["extra/A/x.png", "extra/B/x.png"]],
        "settings": {"steps": 50, "crop": 32, "batch": 2, "base": "scratch", "config": "tiny", "val_every": 2},
        "out": "runs/r1",
    }
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    assert main(["finetune", "--recipe", str(tmp_path / "recipe.json"), "--steps", "3"]) == 0
    run = tmp_path / "runs" / "r1"
    config = json.loads((run / "config.json").read_text())
    assert config["settings"]["steps"] == 3 and config["settings"]["base"] == "scratch"
    assert [p["name"] for p in config["pairs"]] == ["kind/0.png", "kind/1.png", ""]
    assert config["pairs"][0]["mask"].endswith("mask/0.png") and config["pairs"][1]["mask"] is None
    assert config["pairs"][2]["a"] == str(extra_a.resolve())
    assert load_checkpoint(run / "last.safetensors")[1]["step"] == 3


def test_resume_from_the_command_line_continues_a_stopped_run(tmp_path, capsys):
    a, b = _write_pair(tmp_path, size=72)
    run = tmp_path / "run"
    settings = TrainSettings(steps=8, crop=32, batch=2, base="tiny", val_every=4)
    done = []
    stopped = finetune([Pair(a, b)], settings, run, on_step=done.append, cancel=lambda: len(done) >= 3)
    assert stopped.cancelled and stopped.step == 3
    assert main(["finetune", "--resume", "--out", str(run)]) == 0
    assert load_checkpoint(run / "last.safetensors")[1]["step"] == 8
    assert main(["finetune", "--resume", "--out", str(run), "--steps", "20"]) == 2
    assert "give only --out" in capsys.readouterr().err


def test_preflight_errors_are_one_line_naming_the_files(tmp_path, capsys):
    a, b = _images()
    tifffile.imwrite(tmp_path / "a.tif", a)
    tifffile.imwrite(tmp_path / "b.tif", b[:60])
    code = main(["finetune", "--pair", str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert "a.tif" in err and "b.tif" in err and "differ in shape" in err
    assert not (tmp_path / "r").exists()
    assert main(["finetune", "--pair", "x.tif", "y.tif", "--mask", "m1", "--mask", "m2"]) == 2
    assert "one mask per pair" in capsys.readouterr().err
    assert main(["finetune", "--pair", "x.tif", "y.tif", "--loss-weights", "1,2"]) == 2
    assert main(["finetune", "--pair", "x.tif", "y.tif", "--name", "tiny"]) == 2
    assert "taken by a shipped model" in capsys.readouterr().err


def test_checkpoint_cadence_is_set_from_the_command_line(tmp_path, capsys):
    a_path, b_path = _write_pair(tmp_path / "data")
    common = ["finetune", "--pair", str(a_path), str(b_path), "--crop", "32", "--steps", "2", "--from", "tiny"]
    assert main([*common, "--checkpoint-steps", "0", "--out", str(tmp_path / "bad")]) == 2
    assert "checkpoint_every_steps must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "last.safetensors").exists()
    run = tmp_path / "run"
    assert main([*common, "--checkpoint-steps", "1", "--checkpoint-minutes", "2.5", "--out", str(run)]) == 0
    settings = json.loads((run / "config.json").read_text())["settings"]
    assert (settings["checkpoint_every_steps"], settings["checkpoint_every_minutes"]) == (1, 2.5)


def test_keep_both_target_is_set_from_the_command_line(tmp_path, capsys):
    a_path, b_path = _write_pair(tmp_path / "data")
    common = ["finetune", "--pair", str(a_path), str(b_path), "--crop", "32", "--steps", "1", "--from", "tiny"]
    common += ["--objective", "keep-both"]
    assert main([*common, "--target-gain", "-1", "--out", str(tmp_path / "bad")]) == 2
    assert "target gain must be a positive" in capsys.readouterr().err
    run = tmp_path / "run"
    flags = ["--target-background", "0.1", "--target-gain", "1.3", "--edge-weight", "2", "--residual", "keep-both"]
    assert main([*common, *flags, "--out", str(run)]) == 0
    record = json.loads((run / "config.json").read_text())
    settings = record["settings"]
    assert (settings["target_background"], settings["target_gain"], settings["edge_weight"]) == (0.1, 1.3, 2.0)
    assert settings["residual"] == record["model_config"]["residual"] == "keep-both"
