"""`fusionmamba evaluate FUSED A B [--json]` on real files, as a user runs it."""

import json
import os
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from scipy import ndimage

from napari_fusionmamba.cli import main
from napari_fusionmamba.quality.metrics import METRICS, evaluate


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(0)
    a = ndimage.gaussian_filter(rng.random((48, 40)), 1.5)
    b = ndimage.gaussian_filter(rng.random((48, 40)), 1.5)
    a8 = np.rint((a - a.min()) / np.ptp(a) * 255).astype(np.uint8)
    b8 = np.rint((b - b.min()) / np.ptp(b) * 255).astype(np.uint8)
    green = np.zeros((48, 40, 3), np.uint8)
    green[..., 1] = a8  # a GFP-like colour source
    fused = np.maximum(a8 * 0.587, b8).astype(np.float32) / 255  # the pipeline's float output
    paths = {"fused": tmp_path / "fused.tif", "a": tmp_path / "gfp.png", "b": tmp_path / "phase.png"}
    tifffile.imwrite(paths["fused"], fused)
    iio.imwrite(paths["a"], green)
    iio.imwrite(paths["b"], b8)
    return {k: str(v) for k, v in paths.items()}, (fused, green, b8)


def test_json_output_is_every_metric_of_the_files(files, capsys):
    paths, arrays = files
    assert main(["evaluate", paths["fused"], paths["a"], paths["b"], "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert list(scores) == list(METRICS)
    expected = evaluate(*arrays)
    for key, value in expected.items():
        assert scores[key] == pytest.approx(value, rel=1e-9), key


def test_an_image_scored_against_itself_gives_strict_json(files, capsys):
    paths, _ = files
    assert main(["evaluate", paths["b"], paths["b"], paths["b"], "--json", "--metrics", "SSIM", "PSNR"]) == 0
    text = capsys.readouterr().out
    assert json.loads(text) == {"SSIM": pytest.approx(1.0), "PSNR": None}  # infinite PSNR -> null
    assert "Infinity" not in text


def test_table_output_and_a_metric_subset(files, capsys):
    paths, _ = files
    assert main(["evaluate", paths["fused"], paths["a"], paths["b"], "--metrics", "SSIM", "Qabf"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["SSIM", "Qabf"]
    assert all(0 < float(line.split()[1]) <= 1 for line in lines)


def test_errors_name_the_file(files, tmp_path, capsys):
    paths, _ = files
    assert main(["evaluate", paths["fused"], paths["a"], str(tmp_path / "missing.png")]) == 2
    assert "missing.png" in capsys.readouterr().err
    small = tmp_path / "small.png"
    iio.imwrite(small, np.zeros((20, 20), np.uint8))
    assert main(["evaluate", paths["fused"], paths["a"], str(small)]) == 2
    assert "small.png has shape (20, 20)" in capsys.readouterr().err
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((2, 48, 40), np.uint8))
    assert main(["evaluate", str(stack), paths["a"], paths["b"]]) == 2
    assert "stack.tif: expected one 2-D" in capsys.readouterr().err


def test_the_command_line_entry_point(files):
    paths, _ = files
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_fusionmamba.cli",
            "evaluate",
            paths["fused"],
            paths["a"],
            paths["b"],
            "--json",
            "--metrics",
            "EN",
            "PSNR",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)) == {"EN", "PSNR"}


def test_fuse_then_evaluate_matches_the_methods_comparison(tmp_path, capsys):
    """`fusionmamba fuse --method max` then `fusionmamba evaluate` scores what compare_methods does."""
    from napari_fusionmamba.quality.metrics import compare_methods

    rng = np.random.default_rng(3)
    sources = []
    for name in ("ct.png", "mri.png"):
        x = ndimage.gaussian_filter(rng.random((48, 40)), 1.2)
        x8 = np.rint((x - x.min()) / np.ptp(x) * 255).astype(np.uint8)
        iio.imwrite(tmp_path / name, x8)
        sources.append(x8)
    out = str(tmp_path / "fused.tif")
    a, b = str(tmp_path / "ct.png"), str(tmp_path / "mri.png")
    assert main(["fuse", a, b, "-o", out, "--method", "max", "--normalise", "range", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", out, a, b, "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    expected = compare_methods(*sources, ["max"])["max"]
    for key, value in expected.items():
        assert scores[key] == pytest.approx(value, rel=1e-6), key
