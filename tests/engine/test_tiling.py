"""The tile grid and the blending, driven through the public tiling functions."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from napari_fusionmamba.engine.tiling import (
    BatchRunner,
    TileGrid,
    TilingAdjusted,
    axis_starts,
    blend_region,
    check_tiling,
    taper,
    tiled_fuse,
)
from napari_fusionmamba.errors import FusionCancelled


def tile_means(a, b):
    """A non-local predictor: each tile becomes the mean of its two inputs (constant-preserving)."""
    return np.broadcast_to(((a + b) / 2).mean(axis=(1, 2), keepdims=True), a.shape).copy()


@pytest.mark.parametrize("length", [1, 63, 64, 65, 200, 257, 1000])
@pytest.mark.parametrize("tile,stride", [(64, 48), (64, 64), (128, 96)])
def test_grid_covers_the_axis_and_stays_inside(length, tile, stride):
    starts = axis_starts(length, tile, stride)
    size = min(tile, length)
    assert starts[0] == 0 and starts[-1] + size == length  # edge tile against the border
    assert starts == sorted(set(starts))
    assert all(s + size <= length for s in starts)
    assert all(b - a <= stride for a, b in zip(starts, starts[1:]))  # no gaps


def test_taper_cross_fades_to_one_at_the_regular_stride():
    tile, overlap = 64, 16
    w = taper(tile, overlap, floor=0)
    total = np.zeros(tile * 4)
    for start in range(0, len(total) - tile + 1, tile - overlap):
        total[start : start + tile] += w
    assert np.allclose(total[overlap : 3 * (tile - overlap) + overlap], 1.0, atol=1e-6)
    assert taper(tile, overlap).min() > 0  # the floor keeps border pixels weighted


def test_identity_predictor_reproduces_the_input_exactly():
    rng = np.random.default_rng(1)
    a = rng.random((150, 230)).astype(np.float32)
    out, used = tiled_fuse(lambda x, y: x, a, a.copy(), tile=64, overlap=16, batch=3)
    assert used == {"tile": 64, "overlap": 16, "batch": 3}
    assert np.abs(out - a).max() < 1e-6


def test_constant_pair_has_no_seams():
    """Tiles that all agree (a constant pair through a constant-preserving, non-local
    predictor) blend into the same constant: nothing appears at tile borders or edges."""
    a = np.full((300, 421), 0.3, np.float32)
    b = np.full((300, 421), 0.8, np.float32)
    out, _ = tiled_fuse(tile_means, a, b, tile=96, overlap=32, batch=4)
    assert np.abs(out - 0.55).max() <= 1e-5


def test_any_region_equals_the_same_crop_of_the_whole_plane():
    rng = np.random.default_rng(2)
    a, b = rng.random((2, 200, 260)).astype(np.float32)
    grid = TileGrid(200, 260, 64, 24)
    runner = BatchRunner(tile_means, 5)
    whole = blend_region(runner, a, b, grid)
    for region in [(0, 37, 0, 260), (50, 130, 61, 199), (199, 200, 259, 260)]:
        y0, y1, x0, x1 = region
        ry0, ry1, rx0, rx1 = grid.reach(*region)
        part = blend_region(runner, a[ry0:ry1, rx0:rx1], b[ry0:ry1, rx0:rx1], grid, region, origin=(ry0, rx0))
        assert np.abs(part - whole[y0:y1, x0:x1]).max() < 1e-6


def test_image_smaller_than_a_tile_gets_one_tile_of_its_size():
    seen = []

    def predictor(a, b):
        seen.append(a.shape)
        return a

    a = np.random.default_rng(3).random((40, 300)).astype(np.float32)
    out, _ = tiled_fuse(predictor, a, a, tile=128, overlap=32)
    assert {shape[1:] for shape in seen} == {(40, 128)}
    assert np.abs(out - a).max() < 1e-6


def test_out_of_memory_halves_the_batch_then_the_tile_and_says_so():
    calls = []

    def picky(a, b):
        calls.append(a.shape)
        if a.shape[0] > 2 or a.shape[1] > 64:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return tile_means(a, b)

    a = np.random.default_rng(4).random((160, 160)).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, used = tiled_fuse(picky, a, a, tile=128, overlap=32, batch=8)
    assert used == {"tile": 64, "overlap": 16, "batch": 1}
    messages = [str(w.message) for w in caught if issubclass(w.category, TilingAdjusted)]
    assert any("batch reduced" in m for m in messages) and any("tile reduced to 64" in m for m in messages)
    reference, _ = tiled_fuse(tile_means, a, a, tile=64, overlap=16, batch=1)
    assert np.array_equal(out, reference)


def test_other_errors_are_not_mistaken_for_out_of_memory():
    def broken(a, b):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        tiled_fuse(broken, np.zeros((64, 64), np.float32), np.zeros((64, 64), np.float32), tile=32, overlap=8)


def test_progress_counts_tiles_and_cancel_stops():
    a = np.zeros((200, 200), np.float32)
    steps = []
    tiled_fuse(tile_means, a, a, tile=64, overlap=16, batch=4, progress=lambda d, t: steps.append((d, t)))
    total = len(TileGrid(200, 200, 64, 16))
    assert steps[0] == (0, total) and steps[-1] == (total, total)
    assert [d for d, _ in steps] == sorted(d for d, _ in steps)

    calls = []
    with pytest.raises(FusionCancelled):
        tiled_fuse(
            lambda x, y: calls.append(1) or x, a, a, tile=64, overlap=16, batch=2, cancel=lambda: len(calls) >= 2
        )
    assert len(calls) == 2


@pytest.mark.parametrize(
    "tile,overlap,multiple,message",
    [
        (64, 64, 1, "larger than the overlap"),
        (64, 80, 1, "larger than the overlap"),
        (100, 16, 32, "multiple of the network stride 32"),
        (0, 0, 1, "positive"),
        (64, -1, 1, "non-negative"),
    ],
)
def test_bad_tiling_is_refused(tile, overlap, multiple, message):
    with pytest.raises(ValueError, match=message):
        check_tiling(tile, overlap, multiple)
