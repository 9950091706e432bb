"""Fusion metrics: properties every definition must have, small cases worked out by hand, and
cross-checks against independent implementations (scikit-image's SSIM, a loop-by-loop
transcription of the Fast-FMI reference)."""

import math

import numpy as np
import pytest
from _fmi_reference import fmi as reference_fmi
from scipy import ndimage
from skimage.metrics import structural_similarity as skimage_ssim

from napari_fusionmamba.quality import metrics as M
from napari_fusionmamba.quality.metrics import METRICS, evaluate, to_gray8

KEYS = ["EN", "SD", "SF", "AG", "MI", "FMI", "VIF", "Qabf", "SCD", "SSIM", "MS-SSIM", "CC", "PSNR"]


def smooth_image(seed, shape=(64, 64), sigma=2.0):
    """Blurred noise stretched to 0-255 integer levels: texture at several scales, like a photo."""
    noise = np.random.default_rng(seed).normal(size=shape)
    x = ndimage.gaussian_filter(noise, sigma)
    x = (x - x.min()) / (x.max() - x.min())
    return np.rint(x * 255.0)


@pytest.fixture(scope="module")
def triple():
    a, b = smooth_image(1), smooth_image(2)
    return np.rint((a + b) / 2), a, b


# --- input conventions ----------------------------------------------------------------------


def test_to_gray8_conventions():
    u8 = np.array([[0, 7], [128, 255]], np.uint8)
    np.testing.assert_array_equal(to_gray8(u8), u8.astype(float))
    np.testing.assert_array_equal(to_gray8(u8.astype(np.float32) / 255), u8.astype(float))
    np.testing.assert_array_equal(to_gray8(u8.astype(np.float64)), u8.astype(float))  # 0-255
    np.testing.assert_array_equal(to_gray8(u8.astype(np.uint16)), u8.astype(float))
    u16 = np.array([[1000, 1500], [2000, 3000]], np.uint16)  # stretched min..max -> 0..255
    np.testing.assert_array_equal(to_gray8(u16), [[0, 64], [128, 255]])
    rgb = np.zeros((1, 3, 3), np.uint8)
    rgb[0, 0, 0], rgb[0, 1, 1], rgb[0, 2, 2] = 255, 255, 255  # red, green, blue -> BT.601 Y
    np.testing.assert_array_equal(to_gray8(rgb), [[76, 150, 29]])
    np.testing.assert_array_equal(to_gray8(np.array([[True, False]])), [[255, 0]])


def test_to_gray8_rejects_bad_planes_naming_them():
    with pytest.raises(ValueError, match="left.tif"):
        to_gray8(np.zeros((2, 5, 6)), "left.tif")
    with pytest.raises(ValueError, match="NaN"):
        to_gray8(np.array([[0.0, np.nan]]), "x")


# --- fused-image-only metrics ---------------------------------------------------------------


def test_entropy_extremes_and_a_hand_case():
    assert M.entropy(np.full((8, 8), 77.0)) == 0.0
    every_level = np.arange(256, dtype=float).reshape(16, 16)
    assert M.entropy(every_level) == pytest.approx(8.0)
    quarter = np.array([[0, 0, 0, 255]], float)  # p = 3/4, 1/4
    assert M.entropy(quarter) == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))


def test_sd_sf_ag_by_hand():
    assert M.standard_deviation(np.array([[0.0, 255.0]])) == pytest.approx(127.5)
    ramp = np.array([[0.0, 10.0], [0.0, 10.0]])
    # rows differ by 10 along x, nothing along y
    assert M.spatial_frequency(ramp) == pytest.approx(10.0)
    assert M.average_gradient(ramp) == pytest.approx(math.sqrt(100 / 2))
    flat = np.full((9, 7), 42.0)
    assert M.spatial_frequency(flat) == 0.0 and M.average_gradient(flat) == 0.0


# --- information metrics --------------------------------------------------------------------


def test_mutual_information_of_an_image_with_itself_is_its_entropy(triple):
    x = triple[1]
    assert M.mutual_information(x, x) == pytest.approx(M.entropy(x))


def test_mutual_information_by_hand():
    x = np.array([[0, 0, 255, 255]], float)
    y = np.array([[0, 255, 0, 255]], float)  # independent of x: 0 bits
    assert M.mutual_information(x, y) == pytest.approx(0.0, abs=1e-12)
    assert M.mutual_information(x, x) == pytest.approx(1.0)


@pytest.mark.parametrize("feature", ["pixel", "gradient"])
def test_fmi_matches_the_reference_algorithm(feature):
    a, b = smooth_image(3, (12, 14), 1.0), smooth_image(4, (12, 14), 1.0)
    patchy = a.copy()
    patchy[2:7, 3:9] = 40.0  # flat windows, one-hot pdfs and windows equal to a source's
    patchy[8:, :5] = b[8:, :5]
    for fused in (np.maximum(a, b), np.rint((a + b) / 2), 255 - a, patchy):  # 255 - a: c < 0 windows
        expected = reference_fmi(fused, a, b, feature)
        assert M.feature_mutual_information(fused, a, b, feature) == pytest.approx(expected, abs=1e-9)
    off_grid = (a + b) / 2.7  # not whole or half gray levels: the logarithms are computed
    expected = reference_fmi(off_grid, a / 1.3, b, feature)
    assert M.feature_mutual_information(off_grid, a / 1.3, b, feature) == pytest.approx(expected, abs=1e-9)


def test_fmi_is_one_for_identical_images_and_stays_in_0_1(triple):
    fused, a, b = triple
    assert M.feature_mutual_information(a, a, a) == 1.0
    for feature in ("pixel", "gradient"):
        value = M.feature_mutual_information(fused, a, b, feature)
        assert 0.0 < value < 1.0
    with pytest.raises(ValueError, match="feature"):
        M.feature_mutual_information(a, a, a, "dct")


# --- structural metrics ---------------------------------------------------------------------


def test_vif_of_a_copy_is_one_per_source_and_a_flat_image_carries_nothing(triple):
    _, a, b = triple
    assert M.vif(a, a, a) == pytest.approx(2.0)
    assert M.vif(np.full_like(a, 128.0), a, b) == pytest.approx(0.0, abs=1e-12)


def test_qabf_rewards_kept_edges(triple):
    fused, a, b = triple
    flat = np.full_like(a, 128.0)
    assert M.qabf(a, a, b) > M.qabf(flat, a, b)
    assert M.qabf(fused, a, b) > M.qabf(flat, a, b)


def test_qabf_of_strong_edges_copied_exactly_is_the_product_of_the_sigmoid_ceilings():
    steps = np.zeros((16, 16))
    steps[:, 8:] = 200.0
    steps[8:, :] += 50.0
    # every edge kept with its strength and orientation: Q = Tg/(1+e^(kg*(big-0.5))) *
    # Ta/(1+e^(ka*(1-0.8))) and the strength term is saturated at Tg
    expected = 0.9994 * 0.9879 / (1 + math.exp(-22 * 0.2))
    assert M.qabf(steps, steps, steps) == pytest.approx(expected, rel=1e-6)


def test_scd_cc_psnr_by_hand(triple):
    _, a, b = triple
    # F = A + B: F - B = A and F - A = B, each perfectly correlated with the other source
    assert M.scd(a + b, a, b) == pytest.approx(2.0)
    assert M.cc(a, a, a) == pytest.approx(1.0)
    assert M.cc(255 - a, a, a) == pytest.approx(-1.0)
    # MSE(F, A) = 0 and MSE(F, B) = 100: PSNR = 10 log10(255^2 / 50)
    assert M.psnr(a, a, a + 10) == pytest.approx(10 * math.log10(255**2 / 50))
    assert M.psnr(a, a, a) == math.inf


def test_ssim_matches_scikit_image_and_is_one_on_a_copy(triple):
    fused, a, _ = triple
    expected = skimage_ssim(fused, a, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert M.structural_similarity(fused, a) == pytest.approx(expected, abs=1e-9)
    assert M.ssim(a, a, a) == pytest.approx(1.0)


def test_ssim_and_ms_ssim_of_two_flat_images_by_hand():
    x, y = np.full((64, 64), 100.0), np.full((64, 64), 110.0)
    c1 = (0.01 * 255) ** 2
    luminance = (2 * 100 * 110 + c1) / (100**2 + 110**2 + c1)  # contrast-structure term is 1
    assert M.structural_similarity(x, y) == pytest.approx(luminance)
    # 64 -> 32 -> 16 px: three scales fit an 11x11 window; weights renormalised over them
    weights = [0.0448, 0.2856, 0.3001]
    assert M.multiscale_ssim(x, y) == pytest.approx(luminance ** (weights[2] / sum(weights)))
    assert M.multiscale_ssim(x, x) == pytest.approx(1.0)


# --- evaluate() and the registry ------------------------------------------------------------


def test_registry_has_the_agreed_keys():
    assert set(KEYS) <= set(METRICS)


def test_evaluate_is_invariant_to_swapping_the_sources_but_for_fidelity(triple):
    """The paper metrics treat the sources alike; Fidelity asks A (fluorescence) to be kept
    inside its foreground and B (structure) outside, so which source is which matters."""
    fused, a, b = triple
    forward, swapped = evaluate(fused, a, b), evaluate(fused, b, a)
    assert list(forward) == list(METRICS)
    for key in forward:
        if key != "Fidelity":
            assert swapped[key] == pytest.approx(forward[key], rel=1e-12, abs=1e-12), key
    assert swapped["Fidelity"] != pytest.approx(forward["Fidelity"], abs=1e-3)


def test_evaluate_ranges_on_a_real_fusion(triple):
    fused, a, b = triple
    scores = evaluate(fused / 255, a / 255, b / 255)  # float [0, 1] inputs: the pipeline's
    assert scores == pytest.approx(evaluate(fused, a, b))
    assert 0 <= scores["Qabf"] <= 1
    assert 0 <= scores["VIF"] <= 2
    assert 0 <= scores["EN"] <= 8
    assert -1 <= scores["SSIM"] <= 1 and 0 <= scores["MS-SSIM"] <= 1
    assert -2 <= scores["SCD"] <= 2 and -1 <= scores["CC"] <= 1


def test_evaluate_a_subset_colour_sources_and_errors(triple):
    fused, a, b = triple
    rgb = np.repeat(a[..., None], 3, axis=2).astype(np.uint8)  # gray in colour: Y = gray
    assert evaluate(fused, rgb, b, metrics=["CC", "SCD"]) == pytest.approx(evaluate(fused, a, b, metrics=["CC", "SCD"]))
    assert list(evaluate(fused, a, b, metrics=["PSNR", "EN"])) == ["PSNR", "EN"]
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate(fused, a, b, metrics=["NOPE"])
    with pytest.raises(ValueError, match="mri.png has shape"):
        evaluate(fused, a, b[:-1], names=("f.tif", "ct.png", "mri.png"))
    tiny = a[:10, :10]
    for key in ("VIF", "SSIM", "MS-SSIM"):
        with pytest.raises(ValueError, match="at least"):
            evaluate(tiny, tiny, tiny, metrics=[key])


def test_compare_methods_scores_each_method_on_the_same_planes(triple):
    from napari_fusionmamba.errors import FusionCancelled
    from napari_fusionmamba.quality.baselines import BASELINES
    from napari_fusionmamba.quality.metrics import compare_methods

    _, a, b = triple
    a8, b8 = a.astype(np.uint8), b.astype(np.uint8)
    seconds, steps = {}, []
    results = compare_methods(
        a8,
        b8,
        {"max": BASELINES["max"], "first": lambda x, y: x},
        seconds=seconds,
        progress=lambda done, total: steps.append((done, total)),
    )
    assert list(results) == ["max", "first"] and set(seconds) == {"max", "first"}
    assert steps == [(1, 2), (2, 2)]
    assert results["max"] == pytest.approx(evaluate(np.maximum(a, b), a, b))
    assert results["first"]["SSIM"] == pytest.approx(evaluate(a, a, b)["SSIM"])
    assert list(compare_methods(a8, b8, metrics=["EN"])) == list(BASELINES)
    with pytest.raises(ValueError, match="unknown method"):
        compare_methods(a8, b8, ["nope"])
    with pytest.raises(FusionCancelled):
        compare_methods(a8, b8, cancel=lambda: True)


def test_wins_counts_strict_wins_over_every_other_method():
    from napari_fusionmamba.quality.metrics import SCORED_METRICS, wins

    base = dict.fromkeys(SCORED_METRICS, 1.0)
    results = {
        "net": {**base, "EN": 2.0, "SD": 1.5, "MI": None},
        "max": {**base, "SD": 1.6},
        "average": {**base, "EN": 1.9},
    }
    assert wins(results, "net") == ["EN"]  # SD lost to max, MI missing, the rest tied
    assert wins(results, "max") == ["SD"]


def test_scoring_several_fusions_shares_the_sources_terms_without_changing_a_number():
    """compare_methods computes each source's filters, pyramids and threshold once for all
    methods: every value equals scoring each method's result on its own."""
    from napari_fusionmamba.quality.baselines import BASELINES
    from napari_fusionmamba.quality.metrics import compare_methods, fusion_input

    a, b = smooth_image(5, (48, 40)), smooth_image(6, (48, 40), 4.0)
    plane_a, plane_b = fusion_input(a), fusion_input(b)
    methods = {**BASELINES, "copy of A": lambda x, y: x}  # the fused image is the source itself
    for workers in (1, 3):  # one method after the other, or three at once in threads
        shared = compare_methods(a, b, methods, workers=workers)
        assert list(shared) == list(methods)
        for name, method in methods.items():
            alone = evaluate(method(plane_a, plane_b), plane_a, plane_b)
            assert shared[name] == alone, (workers, name)


def test_scoring_in_threads_gives_the_numbers_recorded_before_it_and_reports_each_method():
    """Every metric of the five methods on a crop of the neuron sample equals what the code gave
    before methods were scored in threads and each image's terms shared between its metrics
    (recorded in neuron_crop_metrics.json), one method at a time or three at once."""
    import json
    from pathlib import Path

    from napari_fusionmamba.io.samples import load_neurons
    from napari_fusionmamba.quality.metrics import compare_methods

    recorded = json.loads((Path(__file__).parent / "neuron_crop_metrics.json").read_text())
    neurons = load_neurons()
    a, b = neurons["MAP2"][100:250, 200:371], neurons["phase"][1][100:250, 200:371]  # odd sizes
    steps: list[tuple[int, int]] = []
    for workers in (1, 3):
        steps.clear()
        results = compare_methods(a, b, workers=workers, progress=lambda done, total: steps.append((done, total)))
        assert steps == [(done, 5) for done in range(1, 6)]
        assert list(results) == list(recorded)
        for method, values in recorded.items():
            assert list(results[method]) == list(values)
            for key, value in values.items():
                assert results[method][key] == pytest.approx(float(value), rel=1e-12, abs=1e-15), (workers, method, key)
