"""How file fusion cuts a chunk's tiles into tasks: whole rows, and the last row of a chunk with
an odd number of rows in two pieces, so that no core waits alone on the last row; the result is
the same."""

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
    """The default tiling of a 1024 px image: 5 rows of 5 tiles in one chunk, run as 4 rows and
    the last row in a piece of 3 and one of 2 (13 and 12 tiles for two workers, not 15 and 10)."""
    grid = TileGrid(1024, 1024, 256, 64)
    groups = tile_groups(grid, 1152)
    assert sizes(groups) == [5, 5, 5, 5, 3, 2]
    corners = [corner for group in groups.values() for corner in group]
    assert sorted(corners) == sorted(grid.touching(0, 1024, 0, 1024))  # every tile once
    assert all(len({y for y, _ in group}) == 1 for group in groups.values())  # each within a row


def test_only_chunks_with_an_odd_number_of_rows_are_cut(monkeypatch):
    grid = TileGrid(300, 260, 64, 16)  # 6 x 6 tiles
    assert sizes(tile_groups(grid, 1000)) == [6] * 6
    chunked = tile_groups(grid, 100)  # chunk (0, 0): 3 rows of 3 tiles; chunk (200, 0): 1 row of 3
    assert [len(chunked[0, 0, i]) for i in range(4)] == [3, 3, 2, 1]
    assert [len(chunked[200, 0, i]) for i in range(2)] == [2, 1] and (200, 0, 2) not in chunked
    assert sorted(c for group in chunked.values() for c in group) == sorted(grid.touching(0, 300, 0, 260))
    monkeypatch.setenv(BALANCE_ENV, "0")
    assert sizes(tile_groups(TileGrid(1024, 1024, 256, 64), 1152)) == [5] * 5


@pytest.mark.slow
@pytest.mark.parametrize("balanced", ["1", "0"])
def test_a_cut_row_fuses_the_same_image(tmp_path, network, monkeypatch, balanced):
    """A one-chunk image of 5 rows of 5 tiles on two threads: the last row runs as pieces of 3
    and 2 tiles (the progress moves by them), and the output equals a run of whole rows in
    batches of 2 (the default batch runs a row in one forward pass: the batch does not change the
    result)."""
    files = [str(tmp_path / name) for name in ("a.tif", "b.tif")]
    for path, image in zip(files, real_looking_pair(256, 256, seed=5)):
        tifffile.imwrite(path, image)
    options = dict(model=network[1], tile=64, overlap=16, chunk=1000)
    reference = str(tmp_path / "rows.zarr")
    monkeypatch.setenv(BALANCE_ENV, "0")
    fuse_files(*files, reference, **options, batch=2, scheduler="synchronous")
    monkeypatch.setenv(BALANCE_ENV, balanced)
    seen: list[tuple[int, int]] = []
    with dask.config.set(num_workers=2):
        report = fuse_files(*files, str(tmp_path / "out.zarr"), **options, progress=lambda *p: seen.append(p))
    steps = sorted(np.diff([done for done, _ in seen]).tolist())
    assert report.tiles_computed == 25 and steps == ([2, 3] + [5] * 4 if balanced == "1" else [5] * 5)
    fused, rows = (open_image(path).data.compute() for path in (str(tmp_path / "out.zarr"), reference))
    assert np.abs(fused - rows).max() <= 1e-5
