"""The region-fidelity metric: copying one source, max(a, b) or the average cannot win it."""

import numpy as np
import pytest
from scipy import ndimage

from napari_fusionmamba.quality.metrics import METRICS, evaluate, region_fidelity, to_gray8


def dim_fluorescence_over_phase(seed: int = 0):
    """A GFP-like source dimmer than its phase-contrast partner, as on real GFP-PC pairs: a few
    blobs up to 0.4 on a dark background, over a textured phase image around 0.5."""
    rng = np.random.default_rng(seed)
    texture = ndimage.gaussian_filter(rng.standard_normal((128, 128)), 1.5)
    phase = 0.5 + 0.08 * texture / texture.std()
    blobs = np.zeros((128, 128))
    for y, x in rng.integers(16, 112, size=(6, 2)):
        blobs[y, x] = 1.0
    gfp = ndimage.gaussian_filter(blobs, 5.0)
    gfp = 0.02 + 0.38 * gfp / gfp.max()
    return np.clip(gfp, 0, 1).astype(np.float32), np.clip(phase, 0, 1).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_fusion_keeping_both_beats_copies_max_and_average(seed):
    a, b = dim_fluorescence_over_phase(seed)
    keep_both = np.clip(b + np.maximum(a - np.percentile(a, 10), 0), 0, 1)
    score = lambda fused: region_fidelity(*(to_gray8(x) for x in (fused, a, b)))
    best = score(keep_both)
    for name, fused in {"max": np.maximum(a, b), "a": a, "b": b, "average": (a + b) / 2}.items():
        assert score(fused) < best - 0.05, name


def test_bounds_and_the_metric_table():
    a, b = dim_fluorescence_over_phase()
    ga, gb = to_gray8(a), to_gray8(b)
    assert region_fidelity(gb, ga, gb) < 0.3  # b alone: a's foreground is lost
    assert 0.0 <= region_fidelity(ga, ga, gb) < 0.3  # a alone: b's structure is lost
    assert "Fidelity" in METRICS
    assert evaluate(np.maximum(a, b), a, b, ["Fidelity"])["Fidelity"] == pytest.approx(
        region_fidelity(to_gray8(np.maximum(a, b)), ga, gb)
    )


def test_a_constant_fluorescence_source_scores_the_structure_part_only():
    _, b = dim_fluorescence_over_phase()
    flat = np.full_like(b, 0.2)
    gb = to_gray8(b)
    assert region_fidelity(gb, to_gray8(flat), gb) == pytest.approx(1.0)
