"""``fusionmamba fuse`` given bad inputs and outputs: each is refused with one line naming the
file and what to do, exit code 2, and nothing written or destroyed."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from conftest import decompression_bomb
from napari_fusionmamba.cli import main

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "src")


def _fuse(capsys, *args: str) -> tuple[int, str]:
    code = main(["fuse", *args, "--method", "max", "--no-progress"])
    err = capsys.readouterr().err.strip()
    return code, err


def _one_line_error(err: str, *words: str) -> None:
    assert err.startswith("fusionmamba fuse: error:") and "\n" not in err, err
    for word in words:
        assert word in err, err


@pytest.fixture
def files(tmp_path, pair):
    a, b = pair
    tifffile.imwrite(tmp_path / "a.tif", a)
    tifffile.imwrite(tmp_path / "b.tif", b)
    return str(tmp_path / "a.tif"), str(tmp_path / "b.tif")


@pytest.mark.parametrize("dtype", [np.int32, np.uint32])
def test_source_dtype_int32_and_uint32_do_not_wrap_around(tmp_path, capsys, pair, dtype):
    a, b = (np.asarray(x, dtype=np.float64) for x in pair)
    info = np.iinfo(dtype)
    for name, x in (("a.tif", a), ("b.tif", b)):  # spread over the whole range of the dtype
        tifffile.imwrite(
            tmp_path / name, (info.min + (x - x.min()) / np.ptp(x) * (float(info.max) - info.min)).astype(dtype)
        )
    out = str(tmp_path / "out.tif")
    code, err = _fuse(capsys, str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), "-o", out, "--dtype", "source")
    assert code == 0, err
    fused = tifffile.imread(out)
    assert fused.dtype == dtype
    assert fused.min() >= 0 and fused.max() == info.max  # [0, 1] scaled to [0, max], clipped


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess, with a timeout: a hang fails the test instead of blocking it."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "napari_fusionmamba.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.parametrize("role", ["source", "model", "recipe"])
def test_a_named_pipe_is_refused_at_once_instead_of_hanging(tmp_path, files, role):
    pipe = str(tmp_path / {"source": "pipe.tif", "model": "pipe.safetensors", "recipe": "pipe.json"}[role])
    os.mkfifo(pipe)
    out = str(tmp_path / "out.zarr")
    args = {
        "source": ["fuse", pipe, files[1], "-o", out, "--method", "max"],
        "model": ["fuse", *files, "-o", out, "--model", pipe],
        "recipe": ["finetune", "--recipe", pipe, "--out", str(tmp_path / "run")],
    }[role]
    done = _cli(*args)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and "error:" in last and pipe in last and "not a regular file" in last, done.stderr
    assert not os.path.exists(out) and not (tmp_path / "run").exists()


def test_a_corrupt_zarr_chunk_is_one_line_naming_the_store(tmp_path, capsys, files):
    import zarr

    store = str(tmp_path / "a.zarr")
    array = zarr.open_array(store, mode="w", shape=(128, 160), chunks=(64, 64), dtype="uint16", zarr_format=2)
    array[:] = tifffile.imread(files[0])
    chunk = next(p for p in (tmp_path / "a.zarr").iterdir() if p.name == "1.1")
    chunk.write_bytes(b"garbage" * 10)
    out = str(tmp_path / "out.zarr")
    code, err = _fuse(capsys, store, files[1], "-o", out)
    assert code == 2
    _one_line_error(err, "a.zarr", "cannot read")
    assert not os.path.exists(out)


def test_a_truncated_tiff_is_one_line_naming_the_file(tmp_path, capsys, files, pair):
    big = tmp_path / "big.tif"
    tifffile.imwrite(big, np.tile(pair[0], (4, 4)), tile=(64, 64))
    data = big.read_bytes()
    big.write_bytes(data[: len(data) // 2])
    tifffile.imwrite(tmp_path / "b4.tif", np.tile(pair[1], (4, 4)))
    code, err = _fuse(capsys, str(big), str(tmp_path / "b4.tif"), "-o", str(tmp_path / "out.zarr"))
    assert code == 2
    _one_line_error(err, "big.tif")
    assert not os.path.exists(tmp_path / "out.zarr")


def test_a_decompression_bomb_is_one_line_naming_the_file_and_the_setting(tmp_path, capsys, files):
    bomb = decompression_bomb(tmp_path / "bomb.tif", 200_000, 200_000)
    code, err = _fuse(capsys, str(bomb), files[1], "-o", str(tmp_path / "out.zarr"))
    assert code == 2
    _one_line_error(err, "bomb.tif", "200000x200000", "FUSIONMAMBA_MAX_PIXELS")
    assert not os.path.exists(tmp_path / "out.zarr")


def test_a_single_strip_tiff_is_decoded_once_not_once_per_chunk(tmp_path, capsys, pair, monkeypatch):
    from napari_fusionmamba.io import readers

    a, b = (np.tile(x, (3, 3)) for x in pair)  # 384 x 480 in 20 chunks of 96, one zlib strip each
    for name, x in (("a.tif", a), ("b.tif", b)):
        tifffile.imwrite(tmp_path / name, x, compression="zlib", rowsperstrip=x.shape[0])
    monkeypatch.setattr(readers, "STRIP_BYTES", 1024)  # so that these strips count as large
    strips = []
    cached = tifffile.TiffPage.decode

    def counted(page):
        decode = cached.__get__(page, type(page))
        return lambda *args, **kw: strips.append(args[1]) or decode(*args, **kw)

    monkeypatch.setattr(tifffile.TiffPage, "decode", property(counted))
    out = str(tmp_path / "out.zarr")
    code, err = _fuse(capsys, str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), "-o", out, "--chunk", "96")
    assert code == 0, err
    assert strips == [0, 0]  # the one strip of each file, decoded once


@pytest.mark.parametrize("bad", [float("nan"), 0.0, -1.0])
def test_nan_zero_or_negative_pixel_sizes_are_not_written(tmp_path, capsys, pair, bad):
    meta = {"axes": "YX", "PhysicalSizeX": bad, "PhysicalSizeY": bad}
    tifffile.imwrite(tmp_path / "a.ome.tif", pair[0], metadata=meta)
    tifffile.imwrite(tmp_path / "b.ome.tif", pair[1], metadata=meta)
    out = str(tmp_path / "out.ome.zarr")
    code, err = _fuse(capsys, str(tmp_path / "a.ome.tif"), str(tmp_path / "b.ome.tif"), "-o", out)
    assert code == 0, err
    import zarr

    scale = zarr.open_group(out, mode="r").attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]
    assert all(np.isfinite(scale["scale"])) and min(scale["scale"]) > 0
