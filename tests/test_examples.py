"""Every script in examples/ runs, on tiny inputs, the way its docstring tells a user to run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from conftest import real_looking_pair

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(*args: str, cwd: Path, timeout: int = 600) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    command = ["bash", *args] if args[0].endswith(".sh") else [sys.executable, *args]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture
def tiff_pair(tmp_path) -> tuple[Path, Path]:
    a, b = real_looking_pair(96, 80)
    tifffile.imwrite(tmp_path / "a.tif", a)
    tifffile.imwrite(tmp_path / "b.tif", b)
    return tmp_path / "a.tif", tmp_path / "b.tif"


@pytest.fixture
def tiff_stacks(tmp_path) -> tuple[Path, Path]:
    planes = [real_looking_pair(64, 72, seed=s) for s in range(2)]
    tifffile.imwrite(tmp_path / "a_stack.tif", np.stack([p[0] for p in planes]))
    tifffile.imwrite(tmp_path / "b_stack.tif", np.stack([p[1] for p in planes]))
    return tmp_path / "a_stack.tif", tmp_path / "b_stack.tif"


def test_fuse_pair_with_files_and_with_the_sample(tmp_path, tiff_pair):
    run(str(EXAMPLES / "fuse_pair.py"), *map(str, tiff_pair), "fused.tif", cwd=tmp_path)
    assert tifffile.imread(tmp_path / "fused.tif").shape == (96, 80)
    run(str(EXAMPLES / "fuse_pair.py"), cwd=tmp_path)  # the sample pair, into ./fused.tif
    from napari_fusionmamba.napari.sample_data import load_sample_pair

    assert tifffile.imread(tmp_path / "fused.tif").shape[:2] == load_sample_pair()[1].shape


def test_fuse_stack_from_the_command_line(tmp_path, tiff_stacks):
    run(str(EXAMPLES / "fuse_stack_cli.sh"), *map(str, tiff_stacks), "fused.ome.zarr", cwd=tmp_path)
    fused = zarr.open_group(str(tmp_path / "fused.ome.zarr"), mode="r")["0"]
    assert fused.shape == (2, 64, 72)


@pytest.mark.slow
def test_fuse_stack_on_a_local_cluster(tmp_path, tiff_stacks):
    out = run(
        str(EXAMPLES / "fuse_stack_distributed.py"),
        *map(str, tiff_stacks),
        "fused.ome.zarr",
        "--workers",
        "2",
        "--tile",
        "64",
        "--overlap",
        "16",
        cwd=tmp_path,
    )
    assert "fused.ome.zarr" in out
    assert zarr.open_group(str(tmp_path / "fused.ome.zarr"), mode="r")["0"].shape == (2, 64, 72)


@pytest.mark.slow
def test_finetune_with_a_mask_registers_the_model(tmp_path):
    a, b = real_looking_pair(128, 128)
    mask = np.zeros(a.shape, np.uint8)
    mask[:, :96] = 1
    mask[32:64, 32:64] = 2
    for name, image in (("a.tif", a), ("b.tif", b), ("mask.tif", mask)):
        tifffile.imwrite(tmp_path / name, image)
    out = run(
        str(EXAMPLES / "finetune_with_mask.py"),
        "a.tif",
        "b.tif",
        "mask.tif",
        "--steps",
        "3",
        "--crop",
        "32",
        "--batch",
        "1",
        "--out",
        "run",
        "--name",
        "example-model",
        cwd=tmp_path,
    )
    assert "registered as 'example-model'" in out
    assert (tmp_path / "run" / "best.safetensors").exists()
    from napari_fusionmamba.registry import list_models

    assert "example-model" in [entry.name for entry in list_models()]


def test_open_in_napari(tmp_path, tiff_pair):
    out = run(str(EXAMPLES / "open_in_napari.py"), *map(str, tiff_pair), "--no-block", cwd=tmp_path)
    assert "layers: a, b" in out
    assert "GFP, phase" in run(str(EXAMPLES / "open_in_napari.py"), "--no-block", cwd=tmp_path)


@pytest.mark.slow
def test_demo_writes_the_fusion_the_figure_and_the_table(tmp_path):
    out = run(str(EXAMPLES / "demo.py"), "--out", "demo", cwd=tmp_path)
    fused = tifffile.imread(tmp_path / "demo" / "fused.tif")
    assert fused.dtype == np.float32 and fused.min() >= 0 and fused.max() <= 1
    assert (tmp_path / "demo" / "side_by_side.png").stat().st_size > 10_000
    for key in ("EN", "MI", "VIF", "Qabf", "SCD", "MS-SSIM"):
        assert f"\n{key} " in out
    assert "beats the best classical method on" in out
