"""How file fusion cuts a chunk's tiles into tasks: whole rows, and the rows beyond a multiple of
the workers in pieces, so that no core waits alone on the last row; the result is the same."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import tifffile

from conftest import real_looking_pair
from napari_fusionmamba.engine import fuse_files
from napari_fusionmamba.engine.files import BALANCE_ENV, tile_groups
from napari_fusionmamba.engine.tiling import TileGrid
from napari_fusionmamba.io import open_image


def sizes(groups):
    return [len(corners) for corners in groups.values()]


def test_a_one_chunk_image_is_shared_evenly_by_two_workers():
    """The default tiling of a 1024 px image: 5 rows of 5 tiles in one chunk. Two workers get
    4 rows and the last row in a piece of 3 and one of 2 (13 and 12 tiles, not 15 and 10)."""
    grid = TileGrid(1024, 1024, 256, 64)
    groups = tile_groups(grid, 1152, workers=2)
    assert sizes(groups) == [5, 5, 5, 5, 3, 2]
    corners = [corner for group in groups.values() for corner in group]
    assert sorted(corners) == sorted(grid.touching(0, 1024, 0, 1024))  # every tile once
    assert all(len({y for y, _ in group}) == 1 for group in groups.values())  # each within a row
    assert sizes(tile_groups(grid, 1152, workers=1)) == [5] * 5
    assert sizes(tile_groups(grid, 1152, workers=5)) == [5] * 5  # already a multiple


def test_rows_beyond_a_multiple_of_the_workers_are_cut_in_every_chunk(monkeypatch):
    grid = TileGrid(300, 260, 64, 16)  # 6 x 6 tiles
    assert sizes(tile_groups(grid, 1000, workers=4)) == [6] * 4 + [3] * 4  # 2 rows left, 2 pieces each
    assert sizes(tile_groups(grid, 100, workers=2))[:4] == [3, 3, 2, 1]  # chunk (0, 0): 3 rows of 3
    monkeypatch.setenv(BALANCE_ENV, "0")
    assert sizes(tile_groups(grid, 1000, workers=4)) == [6] * 6


@pytest.mark.slow
@pytest.mark.parametrize("balanced", ["1", "0"])
def test_cut_rows_fuse_the_same_image(tmp_path, network, monkeypatch, balanced):
    """Four threads on a 6-row chunk: the last two rows run as pieces of 3 tiles (the progress
    moves by 3), and the output equals a synchronous run of whole rows in batches of 2 (the
    default batch runs a row of 6 in one forward pass: the batch does not change the result)."""
    files = [str(tmp_path / name) for name in ("a.tif", "b.tif")]
    for path, image in zip(files, real_looking_pair(300, 260, seed=5)):
        tifffile.imwrite(path, image)
    options = dict(model=network[1], tile=64, overlap=16, chunk=1000)
    reference = str(tmp_path / "rows.zarr")
    fuse_files(*files, reference, **options, batch=2, scheduler="synchronous")
    monkeypatch.setenv(BALANCE_ENV, balanced)
    seen: list[tuple[int, int]] = []
    with dask.config.set(num_workers=4):
        report = fuse_files(*files, str(tmp_path / "out.zarr"), **options, progress=lambda *p: seen.append(p))
    steps = sorted(np.diff([done for done, _ in seen]).tolist())
    assert report.tiles_computed == 36 and steps == ([3] * 4 + [6] * 4 if balanced == "1" else [6] * 6)
    fused, rows = (open_image(path).data.compute() for path in (str(tmp_path / "out.zarr"), reference))
    assert np.abs(fused - rows).max() <= 1e-5
