"""Resume keyed on content, and ``fusionmamba verify``: a source edited between an interrupted
run and its resume is fused again where it changed (never mixed with the old chunks); a chunk
deleted, damaged or cut short in an output is found by ``verify`` and fused again by a resume."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from conftest import real_looking_pair
from napari_fusionmamba.cli import main
from napari_fusionmamba.engine import fuse, fuse_files
from napari_fusionmamba.engine.resume import PARTIAL_SUFFIX
from napari_fusionmamba.errors import FusionCancelled, InputError
from napari_fusionmamba.io import open_image

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "src")

#: Small tiles and chunks, so a chunk's sources are a part of the image (tile 64, stride 48).
SETTINGS = {"method": "average", "tile": 64, "overlap": 16, "chunk": 64, "scheduler": "synchronous"}


def _interrupt(a, b, out, after=4):
    """Start fusing and cancel once ``after`` chunks are done; returns the finished chunks' (y0, x0)."""
    marks = out + PARTIAL_SUFFIX + "/done"
    with pytest.raises(FusionCancelled):
        fuse_files(a, b, out, cancel=lambda: os.path.isdir(marks) and len(os.listdir(marks)) >= after, **SETTINGS)
    done = os.listdir(marks)
    assert 0 < len(done) < 16
    return sorted(tuple(int(v) for v in name.split("_")[-2:]) for name in done)


def _read(out):
    return np.asarray(open_image(out).data)


def _sources(kind, tmp_path, a, b):
    """The pair as two TIFF files, two zarr stores, or two arrays, and a function that writes
    an edited A in the same place."""
    if kind == "tiff":
        paths = str(tmp_path / "a.tif"), str(tmp_path / "b.tif")
        tifffile.imwrite(paths[0], a)
        tifffile.imwrite(paths[1], b)
        return paths, lambda edited: tifffile.imwrite(paths[0], edited)
    if kind == "zarr":
        stores = []
        for name, image in (("a", a), ("b", b)):
            store = zarr.open_array(
                str(tmp_path / f"{name}.zarr"), mode="w", shape=image.shape, chunks=(32, 32), dtype=image.dtype
            )
            store[:] = image
            stores.append(str(tmp_path / f"{name}.zarr"))

        def edit_zarr(edited):
            zarr.open_array(stores[0], mode="r+")[:] = edited  # only the edited chunk's file changes

        return tuple(stores), edit_zarr
    arrays = a.copy(), b

    def edit_array(edited):
        arrays[0][:] = edited

    return arrays, edit_array


@pytest.mark.parametrize("kind", ["tiff", "zarr", "array"])
def test_a_source_edited_before_the_resume_is_fused_again_where_it_changed(tmp_path, kind):
    a, b = real_looking_pair(256, 256, seed=3)
    (sa, sb), edit = _sources(kind, tmp_path, a, b)
    out = str(tmp_path / "out.zarr")
    y0, x0 = _interrupt(sa, sb, out)[0]
    # Flip a 16 x 16 block inside a finished chunk: its pixels change, the image's percentiles
    # (so its normalisation and the run's arguments) do not.
    edited = a.copy()
    edited[y0 + 8 : y0 + 24, x0 + 8 : x0 + 24] = a[y0 + 8 : y0 + 24, x0 + 8 : x0 + 24][::-1, ::-1]
    assert not np.array_equal(fuse(a, b, method="average"), fuse(edited, b, method="average"))
    edit(edited)

    report = fuse_files(sa, sb, out, **SETTINGS)
    fresh = fuse_files(edited, b, str(tmp_path / "fresh.zarr"), **SETTINGS)
    assert report.chunks_redone >= 1 and report.chunks_skipped >= 1, report.summary()
    assert report.chunks_skipped + report.chunks_computed == 16
    assert "fused again" in report.summary()
    assert fresh.chunks_computed == 16
    np.testing.assert_array_equal(_read(out), _read(str(tmp_path / "fresh.zarr")))


@pytest.mark.slow
def test_a_killed_cli_run_resumed_after_its_tiff_is_rewritten_equals_a_fresh_run(tmp_path, capsys, network):
    """As a user meets it: ``fusionmamba fuse`` killed, a source edited and saved, the same
    command again. With a network whose output depends on context, every chunk that a changed
    tile touches must be fused again."""
    a, b = real_looking_pair(256, 256, seed=3)
    (sa, sb), edit = _sources("tiff", tmp_path, a, b)
    out = str(tmp_path / "out.zarr")
    options = ["--model", network[1], "--tile", "64", "--overlap", "16", "--chunk", "64", "--scheduler", "synchronous"]
    command = [sys.executable, "-m", "napari_fusionmamba.cli", "fuse", sa, sb, "-o", out, *options, "--no-progress"]
    done = out + PARTIAL_SUFFIX + "/done"
    process = subprocess.Popen(command, env=dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1"))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not (os.path.isdir(done) and len(os.listdir(done)) >= 3):
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    y0, x0 = sorted(tuple(int(v) for v in name.split("_")) for name in os.listdir(done))[0]
    edited = a.copy()
    edited[y0 + 8 : y0 + 24, x0 + 8 : x0 + 24] = a[y0 + 8 : y0 + 24, x0 + 8 : x0 + 24][::-1, ::-1]
    edit(edited)

    assert main(["fuse", sa, sb, "-o", out, *options, "--no-progress"]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert "already done" in summary and "fused again" in summary, summary
    model = {"model": network[0], "tile": 64, "overlap": 16}
    before, after = fuse(a, b, **model), fuse(edited, b, **model)
    assert np.abs(before - after).max() > 1e-2  # the edit shows in the fused image
    assert np.abs(_read(out) - after).max() <= 1e-5


def test_a_source_whose_percentiles_changed_is_refused_naming_them(tmp_path):
    a, b = real_looking_pair(256, 256, seed=3)
    out = str(tmp_path / "out.zarr")
    source = a.copy()
    _interrupt(source, b, out)
    source[:64, :64] = source.max()  # a bright square: the upper percentile moves
    with pytest.raises(InputError, match="unfinished run with other arguments.*the sources' percentiles differ"):
        fuse_files(source, b, out, **SETTINGS)


@pytest.mark.parametrize("fault", ["deleted", "damaged"])
def test_a_resume_fuses_again_chunks_missing_or_damaged_in_the_partial_output(tmp_path, fault):
    a, b = real_looking_pair(256, 256, seed=4)
    out = str(tmp_path / "out.zarr")
    finished = _interrupt(a, b, out, after=6)
    chunk = os.path.join(out + PARTIAL_SUFFIX, "out.zarr", "0", f"{finished[0][0] // 64}.{finished[0][1] // 64}")
    if fault == "deleted":
        os.remove(chunk)
    else:  # another valid chunk in its place: it reads, but it is not what was written there
        other = os.path.join(os.path.dirname(chunk), f"{finished[1][0] // 64}.{finished[1][1] // 64}")
        shutil.copyfile(other, chunk)

    report = fuse_files(a, b, out, **SETTINGS)
    assert report.chunks_redone == 1 and report.chunks_skipped == len(finished) - 1, report.summary()
    # files add their tiles' weighted sums in per-task parts: the same as in memory up to rounding
    np.testing.assert_allclose(_read(out), fuse(a, b, method="average", tile=64, overlap=16), rtol=0, atol=1e-6)
    assert main(["verify", out]) == 0


def _fused(tmp_path, suffix, size=256):
    a, b = real_looking_pair(size, size, seed=5)
    out = str(tmp_path / f"fused{suffix}")
    fuse_files(a, b, out, method="average", chunk=128)
    return out


@pytest.mark.parametrize("suffix", [".ome.zarr", ".ome.tif"])
def test_verify_passes_a_sound_output(tmp_path, capsys, suffix):
    out = _fused(tmp_path, suffix, size=640)  # a zarr output gets a pyramid level
    assert main(["verify", out]) == 0
    line = capsys.readouterr().out.strip()
    chunks = 25 + 9 if suffix == ".ome.zarr" else 25  # level 0: 5 x 5 chunks; level 1 (320 px): 3 x 3
    assert line == f"{out}: all {chunks} chunks present and as written"


@pytest.mark.parametrize("suffix", [".ome.zarr", ".ome.tif"])
@pytest.mark.parametrize("shape", [(3, 96, 80), (96, 80, 3)], ids=["stack", "colour"])
def test_stacks_and_colour_verify_and_resume_chunk_by_chunk(tmp_path, capsys, suffix, shape):
    rng = np.random.default_rng(7)
    a, b = (rng.integers(0, 4000, shape).astype(np.uint16) for _ in range(2))
    out = str(tmp_path / f"out{suffix}")
    finished = _interrupt(a, b, out, after=3)
    report = fuse_files(a, b, out, **SETTINGS)
    assert report.chunks_skipped == len(finished) and report.chunks_redone == 0, report.summary()
    chunks = (3 if len(shape) == 3 and shape[0] == 3 else 1) * 2 * 2  # planes x 2 x 2 chunks of 64
    assert main(["verify", out]) == 0
    assert capsys.readouterr().out.strip() == f"{out}: all {chunks} chunks present and as written"


def _flip(path):
    """Flip eight bytes in the middle of a file."""
    data = bytearray(Path(path).read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 8):
        data[i] ^= 0xFF
    Path(path).write_bytes(bytes(data))


def _truncate(path):
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("fault", ["deleted", "flipped", "truncated", "swapped"])
def test_verify_names_a_missing_or_damaged_zarr_chunk(tmp_path, capsys, fault):
    out = _fused(tmp_path, ".ome.zarr")
    chunk = os.path.join(out, "0", "1.0")
    if fault == "deleted":
        os.remove(chunk)
    elif fault == "flipped":
        _flip(chunk)
    elif fault == "truncated":
        _truncate(chunk)
    else:
        shutil.copyfile(os.path.join(out, "0", "0.1"), chunk)
    assert main(["verify", out]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert (
        len(lines) == 2
        and lines[-1] == f"{out}: damaged (1 of 4 chunks missing or damaged); fuse it again with --overwrite"
    )
    reason = {"deleted": "missing", "swapped": "damaged: its data differs from what was written"}
    assert lines[0].startswith(f"{out}/0/1.0: " + reason.get(fault, "")), lines
    if fault in ("flipped", "truncated"):
        assert lines[0].split(": ", 1)[1].startswith(("damaged", "cannot read")), lines


@pytest.mark.parametrize("fault", ["flipped", "truncated"])
def test_verify_names_a_damaged_block_of_a_tiff_output(tmp_path, capsys, fault):
    out = _fused(tmp_path, ".ome.tif")
    if fault == "flipped":  # the float32 pixel (200, 40) of the one uncompressed 256 x 256 tile
        with tifffile.TiffFile(out) as tif:
            offset = tif.pages[0].dataoffsets[0] + (200 * 256 + 40) * 4
        data = bytearray(Path(out).read_bytes())
        data[offset : offset + 4] = bytes(255 - v for v in data[offset : offset + 4])
        Path(out).write_bytes(bytes(data))
    else:
        _truncate(out)
    assert main(["verify", out]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    if fault == "flipped":  # block (128-256, 0-128), named as the chunk it was written from
        assert lines == [
            f"{out}/0/1.0: damaged: its data differs from what was written",
            f"{out}: damaged (1 of 4 chunks missing or damaged); fuse it again with --overwrite",
        ]
    else:
        assert len(lines) == 2 and lines[0].startswith(f"{out}: cut short: ") and "bytes of its image data" in lines[0]
        assert lines[1] == f"{out}: damaged; fuse it again with --overwrite"


def test_verify_refuses_what_is_not_a_finished_output(tmp_path, capsys):
    a, b = real_looking_pair(64, 64)
    tifffile.imwrite(tmp_path / "a.tif", a)
    assert main(["verify", str(tmp_path / "a.tif")]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"fusionmamba verify: error: {tmp_path / 'a.tif'}: not a finished output of fusionmamba fuse"
    )
    assert main(["verify", str(tmp_path / "gone.zarr")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "garbage.tif").write_bytes(b"not a TIFF at all")
    assert main(["verify", str(tmp_path / "garbage.tif")]) == 2
    assert "garbage.tif: cannot read it as a fused output" in capsys.readouterr().err
