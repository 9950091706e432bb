"""benchmarks/quality.py on a tiny folder of pairs made here, run as a user runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from scipy import ndimage

from conftest import load_script
from napari_fusionmamba.quality.baselines import BASELINES
from napari_fusionmamba.quality.metrics import METRICS, evaluate

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "quality.py"


def gray(seed, shape=(40, 48)):
    x = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), 1.5)
    return np.rint((x - x.min()) / np.ptp(x) * 255).astype(np.uint8)


@pytest.fixture()
def folder(tmp_path):
    data = tmp_path / "pairs"
    (data / "A").mkdir(parents=True)
    (data / "B").mkdir()
    colour = np.zeros((40, 48, 3), np.uint8)
    colour[..., 1] = gray(1)  # a green (GFP-like) source: its Y is used
    iio.imwrite(data / "A" / "p1.png", colour)
    iio.imwrite(data / "B" / "p1.png", gray(2))
    iio.imwrite(data / "A" / "p2.png", gray(3))
    iio.imwrite(data / "B" / "p2.png", gray(4))
    iio.imwrite(data / "A" / "only_here.png", gray(5))  # unpaired: skipped
    return data


def run(*args):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    return result


def test_benchmark_json_and_table(folder, tmp_path):
    out = tmp_path / "out" / "q.json"
    result = run("--data", str(folder), "--methods", "average", "max", "--model", "none", "--json", str(out))
    report = json.loads(out.read_text())
    assert report["model"] is None and report["pairs"] == 2
    assert report["metrics"] == list(METRICS)
    assert set(report["results"]) == {"average", "max"} == set(report["std"])
    # the mean really is the mean over the pairs of evaluate() on what the method fused
    a1 = iio.imread(folder / "A" / "p1.png")[..., 1] * 0.587
    pairs = [(np.rint(a1) / 255, gray(2) / 255), (gray(3) / 255, gray(4) / 255)]
    per_pair = [evaluate(BASELINES["max"](a, b), a, b) for a, b in pairs]
    for key in ("MI", "Qabf", "SSIM"):
        expected = np.mean([scores[key] for scores in per_pair])
        assert report["results"]["max"][key] == pytest.approx(expected, rel=1e-6)
        assert report["std"]["max"][key] == pytest.approx(np.std([s[key] for s in per_pair], ddof=1), rel=1e-6)
        assert report["per_image"]["max"][key] == pytest.approx([scores[key] for scores in per_pair], rel=1e-9)
    assert report["names"] == ["p1.png", "p2.png"]
    assert "comparisons" not in report  # no model, nothing to compare
    assert "| metric | average | max |" in result.stdout
    assert "unpaired" in result.stderr


def test_limit_and_every_baseline_by_default(folder, tmp_path):
    out = tmp_path / "q.json"
    run("--data", str(folder), "--limit", "1", "--model", "none", "--json", str(out))
    report = json.loads(out.read_text())
    assert report["pairs"] == 1
    assert set(report["results"]) == {"average", "max", "laplacian", "dwt", "gff"}


def test_bad_folders_are_clear_errors(folder, tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--data", str(tmp_path), "--model", "none"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "expected DIR/A and DIR/B" in result.stderr
    iio.imwrite(folder / "A" / "p3.png", gray(6, (30, 30)))
    iio.imwrite(folder / "B" / "p3.png", gray(7))
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--data", str(folder), "--model", "none", "--methods", "max"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "B/p3.png has shape (40, 48) but A/p3.png has (30, 30)" in result.stderr


@pytest.mark.slow
def test_the_network_is_benchmarked_and_scored_against_the_best_baseline(folder, tmp_path):
    import torch

    from napari_fusionmamba.model import build_model
    from napari_fusionmamba.registry import save_checkpoint

    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "tinynet.safetensors", build_model("tiny"))
    out = tmp_path / "q.json"
    result = run(
        "--data",
        str(folder),
        "--methods",
        "average",
        "max",
        "--model",
        str(checkpoint),
        "--limit",
        "1",
        "--json",
        str(out),
    )
    report = json.loads(out.read_text())
    assert report["model"] == "tinynet"
    assert list(report["results"]) == ["average", "max", "tinynet"]
    assert all(v is not None for v in report["results"]["tinynet"].values())
    assert set(report["comparisons"]) == {"average", "max"}
    for outcome in report["comparisons"].values():
        # one pair: no paired test can be significant, every scored metric is a tie
        assert outcome["wins"] == outcome["losses"] == [] and len(outcome["ties"]) == 10
    # the untrained network is max(a, b) exactly (zero head): max is at least as good everywhere
    assert report["comparisons"]["max"]["dominated"] is True
    assert "| against | wins | ties | losses | dominated |" in result.stdout


def _quality():
    """benchmarks/quality.py as a module, for its statistics."""
    return load_script(SCRIPT)


def test_paired_outcomes_need_a_consistent_difference_over_images():
    quality = _quality()
    rng = np.random.default_rng(0)
    base = rng.random(15)
    assert quality.paired_outcome(base + 0.1 + 0.01 * rng.random(15), base) == "win"
    assert quality.paired_outcome(base - 0.1, base) == "loss"
    assert quality.paired_outcome(base, base) == "tie"
    assert quality.paired_outcome([*(base + 0.1), None], [*base, 1.0]) == "win"  # an image without a value is left out
    assert quality.paired_outcome(base + rng.normal(0, 0.1, 15), base) == "tie"  # noise
    # a large mean gain from a few images is not a win: 12 of 15 images are slightly worse
    lopsided = base - 0.01
    lopsided[:3] += 5.0
    assert lopsided.mean() > base.mean() and quality.paired_outcome(lopsided, base) != "win"


def test_comparisons_count_wins_ties_losses_and_pareto_dominance():
    quality = _quality()
    rng = np.random.default_rng(1)
    keys = quality.SCORED_METRICS
    theirs = {key: list(rng.random(12)) for key in keys}
    ours = {key: list(np.array(theirs[key]) + 0.2) for key in keys[:6]}  # better on six
    ours.update({key: list(np.array(theirs[key]) - 0.2) for key in keys[6:8]})  # worse on two
    ours.update({key: theirs[key] for key in keys[8:]})  # the same on two
    means = lambda table: {k: float(np.mean(v)) for k, v in table.items()}
    report = {"per_image": {"net": ours, "gff": theirs}, "results": {"net": means(ours), "gff": means(theirs)}}
    outcome = quality.compare(report, "net", "gff")
    assert outcome == {"wins": list(keys[:6]), "ties": list(keys[8:]), "losses": list(keys[6:8]), "dominated": False}
    report["results"]["gff"] = {k: v + 1 for k, v in report["results"]["gff"].items()}
    assert quality.compare(report, "net", "gff")["dominated"] is True


def test_validation_restricts_the_pairs_to_a_recipe_s_held_out_ones(folder, tmp_path):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"pairs": [], "validation": {"folder": str(folder), "names": ["p2.png"]}}))
    out = tmp_path / "q.json"
    run("--data", str(folder), "--methods", "max", "--model", "none", "--validation", str(recipe), "--json", str(out))
    report = json.loads(out.read_text())
    assert report["names"] == ["p2.png"] and report["pairs"] == 1


def test_loss_rows_score_each_output_with_the_training_objective(folder, tmp_path):
    import torch

    from napari_fusionmamba.training.objectives import FusionLoss

    out = tmp_path / "q.json"
    result = run("--data", str(folder), "--methods", "average", "max", "--model", "none", "--loss", "--json", str(out))
    report = json.loads(out.read_text())
    a1 = np.rint(iio.imread(folder / "A" / "p1.png")[..., 1] * 0.587) / 255
    pairs = [(a1, gray(2) / 255), (gray(3) / 255, gray(4) / 255)]
    as_tensor = lambda x: torch.from_numpy(np.asarray(x, np.float32))[None, None]
    for method in ("average", "max"):
        direct = [float(FusionLoss()(*(as_tensor(x) for x in (BASELINES[method](a, b), a, b)))[0]) for a, b in pairs]
        assert report["loss"][method]["loss"] == pytest.approx(np.mean(direct), rel=1e-5)
    assert report["loss"]["max"]["intensity"] == 0  # max(a, b) is the intensity target itself
    assert "| paper loss (lower is better) |" in result.stdout
    assert "| loss: texture term |" in result.stdout


LOSS_OPTIMUM = SCRIPT.with_name("loss_optimum.py")


def test_loss_optimum_is_max_for_intensity_alone_and_beats_max_on_the_paper_loss(folder, tmp_path):
    import torch

    from napari_fusionmamba.training.objectives import FusionLoss

    out = tmp_path / "optimum.json"
    result = subprocess.run(
        [
            sys.executable,
            str(LOSS_OPTIMUM),
            "--data",
            str(folder),
            "--weights",
            "1,0,0",
            "--weights",
            "10,1,10",
            "--steps",
            "40",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    intensity_only, paper = "optimum 1,0,0,0.5,0.5", "optimum 10,1,10,0.5,0.5"
    # max(a, b) is the intensity term's own minimum: the optimiser must find exactly it
    assert report["minimum_loss"][intensity_only] == 0
    assert report["results"][intensity_only] == report["results"]["max"]
    # under the paper's loss, the optimiser improves on both of its starting points
    a1 = np.rint(iio.imread(folder / "A" / "p1.png")[..., 1] * 0.587) / 255
    pairs = [(a1, gray(2) / 255), (gray(3) / 255, gray(4) / 255)]
    as_tensor = lambda x: torch.from_numpy(np.asarray(x, np.float32))[None, None]
    for start in ("max", "average"):
        start_loss = np.mean(
            [
                float(FusionLoss(ssim="ssim")(*(as_tensor(x) for x in (BASELINES[start](a, b), a, b)))[0])
                for a, b in pairs
            ]
        )
        assert report["minimum_loss"][paper] < start_loss - 1e-3
    assert set(report["wins"]) == {intensity_only, paper}
    assert f"{paper} (loss " in result.stdout and "| MS-SSIM |" in result.stdout


def test_model_cost_times_two_models_side_by_side(tmp_path):
    import torch

    from napari_fusionmamba.model import build_model
    from napari_fusionmamba.registry import save_checkpoint

    torch.manual_seed(0)
    first = save_checkpoint(tmp_path / "one.safetensors", build_model("tiny"))
    second = save_checkpoint(tmp_path / "two.safetensors", build_model("tiny"))
    result = subprocess.run(
        [sys.executable, str(SCRIPT.with_name("model_cost.py")), "--models", str(first), str(second),
         "--size", "64", "--repeats", "2"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "for a 64 x 64 pair" in result.stdout
    ratio = float(result.stdout.strip().splitlines()[-1].rsplit(":", 1)[1])
    assert 0.1 < ratio < 10  # two networks of one size: the same cost within noise


def test_model_card_figure_shows_sources_model_and_max_per_pair(folder, tmp_path):
    script = SCRIPT.parents[1] / "scripts" / "model_card_figure.py"
    out = tmp_path / "figure.png"
    result = subprocess.run(
        [sys.executable, str(script), "--data", str(folder), "--pairs", "p1.png", "p2.png", "--model", "tiny",
         "--out", str(out)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    image = iio.imread(out)
    assert 0.4 < image.shape[0] / image.shape[1] < 0.7  # two rows of four panels (one row: 0.26)
