"""Classical fusion methods: any size, no shift, X fused with itself is X, detail is kept."""

import numpy as np
import pytest
from scipy import ndimage

from napari_fusionmamba.quality.baselines import BASELINES

METHODS = ["average", "max", "laplacian", "dwt", "gff"]
SIZES = [(1, 1), (2, 3), (5, 7), (31, 47), (64, 64), (67, 129)]


def texture(seed, shape, sigma=1.5):
    x = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), sigma)
    return ((x - x.min()) / (x.max() - x.min() + 1e-12)).astype(np.float32)


def test_registry_names():
    assert set(METHODS) <= set(BASELINES)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_fusing_an_image_with_itself_returns_it(method, shape):
    x = texture(0, shape)
    fused = BASELINES[method](x, x)
    assert fused.shape == shape and fused.dtype == np.float32
    assert np.abs(fused - x).max() <= 1 / 255  # within one gray level


@pytest.mark.parametrize("method", METHODS)
def test_two_different_sources_give_a_valid_plane_without_shift(method):
    shape = (67, 129)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    blob = np.exp(-((yy - 30.0) ** 2 + (xx - 71.0) ** 2) / (2 * 4.0**2)).astype(np.float32)
    background = np.full(shape, 0.05, np.float32)
    fused = BASELINES[method](blob * 0.9 + 0.05, background)
    assert fused.shape == shape and np.isfinite(fused).all()
    assert fused.min() >= 0.0 and fused.max() <= 1.0
    weight = np.clip(fused - np.median(fused), 0, None)
    centre = np.array(ndimage.center_of_mass(weight))
    assert np.abs(centre - [30.0, 71.0]).max() < 0.5  # the blob stays where it was


@pytest.mark.parametrize("method", ["laplacian", "dwt", "gff"])
def test_multiscale_methods_keep_the_detail_of_whichever_source_has_it(method):
    shape = (96, 128)
    detail = texture(1, shape)
    flat = np.full(shape, 0.5, np.float32)
    left = np.zeros(shape, bool)
    left[:, :64] = True
    a = np.where(left, detail, flat)  # A has the detail on the left, B on the right
    b = np.where(left, flat, detail)
    fused = BASELINES[method](a, b)
    inner = np.s_[8:-8]
    for half, source in ((np.s_[:, 8:56], a), (np.s_[:, 72:120], b)):
        kept = np.std(fused[half][inner]) / np.std(source[half][inner])
        assert kept > 0.8, kept  # averaging would keep only half of it
        assert np.corrcoef(fused[half].ravel(), source[half].ravel())[0, 1] > 0.9


def test_average_and_max_by_definition_and_shape_errors():
    a, b = texture(2, (9, 11)), texture(3, (9, 11))
    np.testing.assert_allclose(BASELINES["average"](a, b), (a + b) / 2, atol=1e-7)
    np.testing.assert_array_equal(BASELINES["max"](a, b), np.maximum(a, b))
    for method in METHODS:
        with pytest.raises(ValueError, match="same shape"):
            BASELINES[method](a, b[:-1])


@pytest.mark.parametrize("method", ["average", "laplacian", "dwt", "gff"])
def test_two_flat_images_fuse_to_their_mean_with_no_rim_at_the_borders(method):
    a = np.full((37, 53), 0.2, np.float32)
    b = np.full((37, 53), 0.6, np.float32)
    np.testing.assert_allclose(BASELINES[method](a, b), 0.4, atol=1e-5)
