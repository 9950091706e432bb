"""The training engine: real training steps on small synthetic pairs (tiny config, 32-px crops)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_fusionmamba.engine.sources import PERCENTILES
from napari_fusionmamba.errors import PreflightError
from napari_fusionmamba.model.residuals import keep_both_target
from napari_fusionmamba.registry import load_checkpoint
from napari_fusionmamba.training import (
    CropSampler,
    Pair,
    TrainSettings,
    check_settings,
    finetune,
    learning_rate,
    prepare_pairs,
)


def _pair(size=96, seed=0):
    """Two sources that differ: stripes in a (upper part only), rings in b."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size].astype(np.float32)
    a = (np.sin(x / 3) * 0.5 + 0.5) * (y < size * 0.6) + 0.05 * rng.random((size, size))
    b = np.cos(np.hypot(y - size / 2, x - size / 3) / 4) * 0.5 + 0.5
    return np.clip(a, 0, 1).astype(np.float32), b.astype(np.float32)


def _settings(**kw):
    values = dict(steps=30, crop=32, batch=2, lr=1e-3, warmup=3, val_every=10, base="tiny")
    values.update(kw)
    return TrainSettings(**values)


def _log(run):
    with open(run / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def _textured_pair(size=96):
    """Stripes across a and bands along b over the whole image, so every crop poses the same
    problem and the loss varies little from crop to crop."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:size, :size].astype(np.float32)
    a = np.clip(np.sin(x / 3) * 0.5 + 0.5 + 0.05 * rng.random((size, size)), 0, 1)
    b = np.cos(y / 4) * 0.5 + 0.5
    return a.astype(np.float32), b.astype(np.float32)


@pytest.mark.slow
def test_thirty_steps_lower_the_loss_and_write_the_run(tmp_path):
    run = tmp_path / "run"
    seen = []
    # The untrained network already returns max(a, b) (its head starts at zero), so the loss
    # starts low; a higher learning rate shows the drop within 30 steps.
    result = finetune([Pair(*_textured_pair())], _settings(lr=3e-3), run, on_step=seen.append)
    losses = [info.terms["loss"] for info in seen]
    assert len(losses) == 30 and result.step == 30 and not result.cancelled
    assert np.mean(losses[-5:]) < 0.985 * np.mean(losses[:5])
    assert max(losses[-5:]) < min(losses[:5])
    assert sorted(p.name for p in run.iterdir()) == [
        "best.safetensors", "config.json", "last.safetensors", "last.state.safetensors", "log.csv"
    ]  # fmt: skip
    rows = _log(run)
    assert [int(r["step"]) for r in rows] == list(range(1, 31))
    assert all(r["loss"] and r["intensity"] and r["texture"] and r["structure"] for r in rows)
    assert [int(r["step"]) for r in rows if r["val_loss"]] == [10, 20, 30]
    config = json.loads((run / "config.json").read_text())
    assert config["settings"]["crop"] == 32 and config["model_config"]["name"] == "tiny"
    last, meta = load_checkpoint(run / "last.safetensors")
    assert meta["step"] == 30 and meta["normalisation"]["percentiles"] == list(PERCENTILES)
    _, best_meta = load_checkpoint(run / "best.safetensors")
    val = {int(r["step"]): float(r["val_loss"]) for r in rows if r["val_loss"]}
    assert best_meta["step"] == min(val, key=val.get)
    assert result.best_val_loss == pytest.approx(min(val.values()))
    assert val[30] < val[20] < val[10]
    # Validation steps hand a preview of the fused validation crop to the caller.
    previews = [info for info in seen if info.preview is not None]
    assert [info.step for info in previews] == [10, 20, 30]
    assert previews[0].preview.shape == (32, 32) and previews[0].preview_origin[0] == 0


def test_crops_come_only_from_the_masked_quadrant():
    size = 128
    # Every pixel of a carries a unique value, so a crop's values tell where it came from.
    a = np.arange(size * size, dtype=np.float32).reshape(size, size) / (size * size)
    b = np.random.default_rng(1).random((size, size)).astype(np.float32)
    mask = np.zeros((size, size), np.uint8)
    mask[64:, :64] = 1  # the lower-left quadrant
    settings = _settings(crop=32, normalise="none", val_fraction=0.2)
    [data] = prepare_pairs([Pair(a, b, mask)], settings)
    sampler = CropSampler([data], 32, np.random.default_rng(0))
    allowed = set(a[64:, :64].ravel().tolist())
    train_cols = set()
    for _ in range(40):
        crops_a, _, weights, origins = sampler.sample(4)
        assert set(crops_a.ravel().tolist()) <= allowed
        assert (weights == 1).all()
        for _, y, x in origins:
            assert 64 <= y <= 96 and x <= 32
            train_cols.update(range(x, x + 32))
    # The validation crops lie in the held-out block of the same quadrant, away from training crops.
    assert data.val_positions
    for y, x in data.val_positions:
        assert y >= 64 and x + 32 <= 64
        assert not train_cols & set(range(x, x + 32))


def test_many_pairs_hold_out_whole_pairs_for_validation():
    pairs = [Pair(*_pair(64, seed)) for seed in range(6)]
    data = prepare_pairs(pairs, _settings(val_fraction=0.2))
    held_out = [d for d in data if d.val_positions]
    assert len(held_out) == 1 and held_out[0].train_positions.size == 0
    assert all(d.train_positions.size and not d.val_positions for d in data if d is not held_out[0])


def test_whole_pair_split_holds_out_a_share_of_each_kind():
    pairs = [Pair(*_pair(64, i), name=f"big/{i}") for i in range(10)]
    pairs += [Pair(*_pair(64, 20 + i), name=f"rare/{i}") for i in range(3)]
    data = prepare_pairs(pairs, _settings(val_fraction=0.15))
    held = [d.name for d in data if d.val_positions]
    assert len(held) == 2 and all(name.startswith("big/") for name in held)  # 3 x 0.15 rounds to 0


def test_region_weight_applies_to_label_two():
    a, b = _pair(64)
    mask = np.ones((64, 64), np.uint8)
    mask[:, 32:] = 2
    [data] = prepare_pairs([Pair(a, b, mask)], _settings(region_weight=3.0))
    assert set(np.unique(data.weight)) == {1.0, 3.0}
    assert (data.weight[:, 32:] == 3.0).all()


@pytest.mark.slow
def test_stop_then_resume_continues_step_and_schedule(tmp_path):
    settings = _settings(steps=12, val_every=4)
    straight = finetune([Pair(*_pair())], settings, tmp_path / "straight")

    stop = {"now": False}

    def on_step(info):
        stop["now"] = info.step >= 5

    run = tmp_path / "stopped"
    first = finetune([Pair(*_pair())], settings, run, on_step=on_step, cancel=lambda: stop["now"])
    assert first.cancelled and first.step == 5
    assert load_checkpoint(run / "last.safetensors")[1]["step"] == 5
    assert len(_log(run)) == 5

    resumed_steps = []
    second = finetune([Pair(*_pair())], None, run, resume=True, on_step=lambda i: resumed_steps.append((i.step, i.lr)))
    assert second.step == 12 and not second.cancelled
    assert [s for s, _ in resumed_steps] == list(range(6, 13))
    assert [lr for _, lr in resumed_steps] == [learning_rate(s - 1, settings) for s in range(6, 13)]
    rows, reference = _log(run), _log(tmp_path / "straight")
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    assert [float(r["lr"]) for r in rows] == [float(r["lr"]) for r in reference]
    # Optimizer moments and random states come back too: the resumed run is the straight run.
    assert [float(r["loss"]) for r in rows] == pytest.approx([float(r["loss"]) for r in reference], rel=1e-4)
    assert straight.step == 12


def test_ctrl_c_saves_last_and_leaves_no_partial_files(tmp_path):
    run = tmp_path / "run"

    def interrupt(info):
        if info.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune([Pair(*_pair())], _settings(), run, on_step=interrupt)
    assert load_checkpoint(run / "last.safetensors")[1]["step"] == 3
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(PreflightError, match="in-memory arrays"):  # arrays must be given again
        finetune(None, None, run, resume=True)


def test_learning_rate_warms_up_then_decays_by_cosine():
    s = TrainSettings(steps=100, lr=1e-3, warmup=10, min_lr_fraction=0.1)
    lrs = [learning_rate(i, s) for i in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(x > y for x, y in zip(lrs[10:], lrs[11:]))
    assert learning_rate(100, s) == pytest.approx(1e-4)


def _thin_strip_mask(shape=(64, 160)):
    mask = np.zeros(shape, np.uint8)
    mask[:, :64] = 1
    mask[:, 150:] = 1  # too thin for a validation crop at the far end
    return mask


@pytest.mark.parametrize(
    "make, settings, message",
    [
        (lambda a, b: Pair(a, b[:80]), {}, r"pair 1.*differ in shape"),
        (lambda a, b: Pair(a, b), {"crop": 128}, r"crop 128 is larger than the image"),
        (lambda a, b: Pair(a, b, np.zeros(a.shape)), {}, r"mask is empty"),
        (
            lambda a, b: Pair(a, b, np.pad(np.ones((20, 20)), ((0, 76), (0, 76)))),
            {},
            r"only 400 pixels are marked, fewer than one 32 x 32",
        ),
        (
            lambda a, b: Pair(a, b, np.pad(np.ones((96, 16)), ((0, 0), (0, 80)))),
            {},
            r"no 32 x 32 crop fits inside the marked region",
        ),
        (lambda a, b: Pair(a, b, np.ones((50, 50))), {}, r"mask has shape \(50, 50\)"),
        (
            lambda a, b: Pair(a * 255, b),
            {"normalise": "none"},
            r"image a spans .* outside \[0, 1\]; turn normalisation on",
        ),
        (lambda a, b: Pair(a, b * 0.1), {"normalise": "none"}, r"intensity ranges differ .*x.*turn normalisation on"),
        (lambda a, b: Pair(np.full_like(a, 3.0), b), {}, r"image a is flat"),
        (
            lambda a, b: Pair(
                np.zeros((64, 160)) + np.arange(160) / 160,
                np.ones((64, 160)) * np.arange(64)[:, None] / 64,
                _thin_strip_mask(),
            ),
            {},
            r"validation region is empty",
        ),
        (lambda a, b: Pair(a, b), {"base": "no-such-model"}, r"base model: unknown model 'no-such-model'"),
        (lambda a, b: Pair(a, b), {"steps": 0, "crop": 8}, r"steps must be at least 1.*crop must be at least 16"),
        (lambda a, b: Pair(a, b), {"loss_weights": (0, 0, 0)}, r"loss weights"),
        (lambda a, b: Pair(a, b), {"residual": "min"}, r"unknown residual 'min': choose one of max, keep-both"),
        (lambda a, b: Pair("/nonexistent/a.tif", b), {}, r"/nonexistent/a.tif: no such file"),
    ],
)
def test_preflight_errors_come_before_any_step(tmp_path, make, settings, message):
    a, b = _pair()
    steps = []
    run = tmp_path / "run"
    with pytest.raises(PreflightError, match=message):
        finetune([make(a, b)], _settings(**settings), run, on_step=steps.append)
    assert steps == [] and not run.exists()


def test_run_folder_rules(tmp_path):
    with pytest.raises(PreflightError, match="no run to resume"):
        finetune([Pair(*_pair())], None, tmp_path / "empty", resume=True)
    run = tmp_path / "run"
    finetune([Pair(*_pair())], _settings(steps=2), run)
    with pytest.raises(PreflightError, match="already holds a run"):
        finetune([Pair(*_pair())], _settings(steps=2), run)
    with pytest.raises(PreflightError, match="no training pairs"):
        finetune([], _settings(), tmp_path / "other")


def test_colour_source_is_trained_on_its_luminance_and_runs_default_to_the_data_dir(home):
    a, b = _pair(64)
    rgb = np.stack([a * 0.2, a, a * 0.1], axis=-1)
    result = finetune([Pair(rgb, b)], _settings(steps=2), None)
    assert result.run_dir.parent == home / "runs"
    assert result.last.exists()


def test_training_from_scratch_uses_the_named_config(tmp_path):
    torch.manual_seed(123)
    result = finetune([Pair(*_pair(64))], _settings(steps=2, base="scratch", config="tiny", seed=5), tmp_path / "r")
    model, meta = load_checkpoint(result.last)
    assert meta["provenance"]["base"] == "scratch (tiny)" and model.config.name == "tiny"


def test_a_trained_model_given_a_new_residual_keeps_its_features_and_starts_at_that_residual(tmp_path):
    a, b = _pair(64)
    trained = finetune([Pair(a, b)], _settings(steps=3, lr=1e-2), tmp_path / "max").last
    before, _ = load_checkpoint(trained)
    assert before.config.residual == "max" and before.head.weight.abs().sum() > 0
    run = finetune([Pair(a, b)], _settings(steps=1, base=str(trained), residual="keep-both", lr=1e-9), tmp_path / "kb")
    after, meta = load_checkpoint(run.last)
    assert after.config.residual == "keep-both" and meta["provenance"]["settings"]["residual"] == "keep-both"
    # the features are the trained model's; the head restarted at zero (one step of lr 1e-9 since)
    assert torch.allclose(after.embed_a.proj.weight, before.embed_a.proj.weight, atol=1e-6)
    assert after.head.weight.abs().max() < 1e-6
    ta, tb = (torch.from_numpy(x)[None, None] for x in (a, b))
    with torch.no_grad():
        assert torch.allclose(after.eval()(ta, tb), keep_both_target(ta, tb), atol=1e-5)


@pytest.mark.parametrize(
    "recipe", sorted((Path(__file__).resolve().parents[2] / "recipes").rglob("*.json")), ids=lambda p: p.stem
)
def test_shipped_recipes_hold_valid_settings(recipe):
    """The recipes behind the shipped weights and the model card's runs: a typo in a setting's
    name or value would only show when someone reruns them with the data beside the repo."""
    values = json.loads(recipe.read_text())
    check_settings(TrainSettings.from_dict(values["settings"]))
    assert all(set(item) <= {"folder", "weight"} for item in values["pairs"])
    assert set(values.get("validation", {"folder": "", "names": []})) == {"folder", "names"}


def test_range_normalisation_keeps_each_source_s_own_brightness():
    """8-bit sources over 255, as fusion papers feed their methods: a dim fluorescence channel
    stays dim (percentile normalisation would stretch it to full range)."""
    a, b = _pair(64)
    dim = np.rint(a * 60).astype(np.uint8)  # a dim channel: 0..60 of 255
    phase = np.rint(b * 255).astype(np.uint8)
    data = prepare_pairs([Pair(dim, phase)], _settings(normalise="range", val_split="band"))
    assert np.allclose(data[0].a, dim / np.float32(255)) and np.allclose(data[0].b, phase / np.float32(255))
    stretched = prepare_pairs([Pair(dim, phase)], _settings(val_split="band"))
    assert stretched[0].a.max() == pytest.approx(1.0) and data[0].a.max() < 0.25


def test_intensity_jitter_scales_each_source_of_each_crop_by_its_own_gain():
    a, b = _textured_pair(64)
    data = prepare_pairs([Pair(a * 0.5, b * 0.5)], _settings(val_split="band"))
    plain = CropSampler(data, 32, np.random.default_rng(3)).sample(8)
    jittered = CropSampler(data, 32, np.random.default_rng(3), jitter=0.25).sample(8)
    assert [o for o in plain[3]] == [o for o in jittered[3]]  # the same crops, in the same order
    for source in (0, 1):
        gains = (jittered[source] / np.maximum(plain[source], 1e-6)).reshape(8, -1)
        inside = plain[source].reshape(8, -1) > 0.05
        per_crop = np.array([np.median(g[m]) for g, m in zip(gains, inside)])
        assert np.all((per_crop >= 0.75 - 1e-4) & (per_crop <= 1.25 + 1e-4)) and np.ptp(per_crop) > 0.05
    assert not np.allclose(jittered[0] / np.maximum(plain[0], 1e-6), jittered[1] / np.maximum(plain[1], 1e-6))
    with pytest.raises(PreflightError, match="intensity jitter must be in"):
        check_settings(_settings(intensity_jitter=1.5))


def test_settings_saved_before_range_normalisation_still_load():
    assert TrainSettings.from_dict({"normalise": True}).normalise == "percentile"
    assert TrainSettings.from_dict({"normalise": False}).normalise == "none"
    with pytest.raises(PreflightError, match="normalise must be one of percentile, range, none"):
        check_settings(_settings(normalise="sometimes"))


def test_a_recipe_never_trains_on_its_validation_pairs(tmp_path):
    import imageio.v3 as iio

    from napari_fusionmamba.training import load_recipe

    for side in "AB":
        (tmp_path / "data" / side).mkdir(parents=True)
        for name in ("w1.png", "w2.png", "w3.png"):
            iio.imwrite(tmp_path / "data" / side / name, np.zeros((8, 8), np.uint8))
    recipe = tmp_path / "recipes" / "r.json"
    recipe.parent.mkdir()
    recipe.write_text(json.dumps({
        "pairs": [{"folder": "../data"}], "validation": {"folder": "../data", "names": ["w2.png"]},
        "settings": {"steps": 3},
    }))  # fmt: skip
    pairs, settings, others = load_recipe(recipe)
    assert [Path(p.a).name for p in pairs] == ["w1.png", "w3.png"] and settings == {"steps": 3}
    assert "validation" not in others
    recipe.write_text(json.dumps({"pairs": [{"folder": "../data"}], "validation": ["w2.png"]}))
    with pytest.raises(PreflightError, match='"validation" must be'):
        load_recipe(recipe)
