"""Image fusion quality metrics, computed the way fusion papers report them.

Every metric works on 8-bit gray levels (0-255, held as float64): colour images are reduced to
their luminance Y and all three images are quantised to integer levels first (see
:func:`to_gray8`), so numbers are comparable with published tables. The conventions (bins,
windows, data range, log base, how the two sources combine) and the paper behind each metric are
written out in docs/metrics.md; the code follows the common reference implementations of each
paper closely, and says so where it departs from them.

``evaluate(fused, a, b)`` is the one public entry: the CLI, the benchmark and the napari widget
all call it.
"""

from __future__ import annotations

import contextvars
import functools
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from ..errors import FusionCancelled, InputError
from ..io.colour import rgb_to_ycrcb

PEAK = 255.0
"""Data range of every metric input (8-bit gray)."""


# ---------------------------------------------------------------------------------------------
# Input conventions


def to_gray8(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Return ``image`` as a 2-D float64 array of integer gray levels in [0, 255].

    Colour (H, W, 3|4) -> BT.601 luminance Y (alpha dropped). Then by range: floats lying in
    [0, 1] are scaled by 255 (the pipeline's output convention); values lying in [0, 255] are
    taken as gray levels (uint8, and 8-bit data held in wider types); anything else (16-bit
    data, negative values) is stretched linearly from its min..max to 0..255. Finally values are
    rounded to integer levels, as a fused image saved to an 8-bit file would be.
    """
    data = np.asarray(image)
    if data.dtype == bool:
        data = data.astype(np.uint8) * np.uint8(255)
    if data.ndim == 3 and data.shape[-1] in (3, 4):
        values = rgb_to_ycrcb(data[..., :3].astype(np.float64))[0].astype(np.float64)
    elif data.ndim == 2:
        values = data.astype(np.float64)
    else:
        raise InputError(f"{name}: expected one 2-D gray or (H, W, 3) colour plane, got shape {data.shape}")
    if values.size == 0:
        raise InputError(f"{name}: image is empty")
    if not np.all(np.isfinite(values)):
        raise InputError(f"{name}: image contains NaN or infinite values")
    low, high = values.min(), values.max()
    if np.issubdtype(data.dtype, np.floating) and low >= 0.0 and high <= 1.0:
        values = values * PEAK
    elif low < 0.0 or high > PEAK:
        values = (values - low) * (PEAK / (high - low))
    return np.clip(np.rint(values), 0.0, PEAK)


def fusion_input(image: np.ndarray, name: str = "image") -> np.ndarray:
    """A source as fusion papers feed it to a method: its 8-bit gray (Y of colour) / 255.

    Every method then sees the same float32 [0, 1] planes the metrics compare against.
    """
    return (to_gray8(image, name) / PEAK).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Shared building blocks


_T = TypeVar("_T")


@dataclass
class _Terms:
    """What one :func:`_sharing` block shares: the ids of its sources (and of the arrays computed
    from them) and the terms computed so far, each kept with its arguments so that their ids
    cannot be reused while the block lasts."""

    sources: set[int]
    cache: dict[tuple[object, ...], list[object]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, fn: Callable[..., _T], args: tuple[object, ...]) -> _T:
        """``fn(*args)``, computed once; a thread asking while another computes it waits for it."""
        key = (fn.__name__, *map(id, args))
        with self.lock:
            entry = self.cache.setdefault(key, [threading.Lock()])
        with entry[0]:  # type: ignore[attr-defined]
            if len(entry) == 1:
                result = fn(*args)
                if isinstance(result, np.ndarray):
                    self.sources.add(id(result))
                entry.extend((result, args))
        return entry[1]  # type: ignore[return-value]


_SHARED: ContextVar[tuple[_Terms, ...]] = ContextVar("_SHARED", default=())


def _shared(fn: Callable[..., _T]) -> Callable[..., _T]:
    """Inside :func:`_sharing`, compute ``fn`` of the sources (and of what is computed from them
    alone) once: scoring several fused images against the same two sources then converts,
    filters and thresholds each source once instead of once per image, and each image's own
    terms once for all metrics. A term is kept in the outermost block whose sources (with those
    of the blocks around it) it depends on: a source's terms for every image, an image's only
    while that image is scored. Nothing here writes into a kept result."""

    @functools.wraps(fn)
    def wrapper(*args: object) -> _T:
        blocks = _SHARED.get()
        ids = [id(arg) for arg in args if isinstance(arg, np.ndarray)]
        for depth, terms in enumerate(blocks):
            if all(any(i in outer.sources for outer in blocks[: depth + 1]) for i in ids):
                return terms.get(fn, args)
        return fn(*args)

    return wrapper


@contextmanager
def _sharing(*sources: np.ndarray) -> Iterator[None]:
    """Share the :func:`_shared` terms of ``sources`` between the metric calls inside this block
    (threads started in it share them when they run in a copy of its context)."""
    token = _SHARED.set((*_SHARED.get(), _Terms({id(source) for source in sources})))
    try:
        yield
    finally:
        _SHARED.reset(token)


def _histogram(x: np.ndarray) -> np.ndarray:
    """Probability of each of the 256 gray levels."""
    counts = np.bincount(x.astype(np.intp).ravel(), minlength=256)
    return np.asarray(counts / counts.sum())


def _entropy_bits(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two images; 0 when either is constant (undefined)."""
    dx = x - x.mean()
    dy = y - y.mean()
    denominator = np.sqrt((dx * dx).sum() * (dy * dy).sum())
    return float((dx * dy).sum() / denominator) if denominator > 0 else 0.0


def _gaussian_1d(size: int, sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian; the outer product of two is MATLAB's fspecial('gaussian')."""
    r = (size - 1) / 2.0
    x = np.arange(size) - r
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return np.asarray(g / g.sum())


def _filter_valid(x: np.ndarray, kernel_1d: np.ndarray) -> np.ndarray:
    """Separable symmetric filtering keeping only the fully covered ('valid') positions."""
    k = kernel_1d.size
    y = ndimage.correlate1d(x, kernel_1d, axis=0, mode="constant")
    y = ndimage.correlate1d(y, kernel_1d, axis=1, mode="constant")
    lo, hi = (k - 1) // 2, k // 2
    return np.asarray(y[lo : y.shape[0] - hi, lo : y.shape[1] - hi])


# ---------------------------------------------------------------------------------------------
# Metrics of the fused image alone


def entropy(fused: np.ndarray) -> float:
    """EN: Shannon entropy (bits) of the 256-level histogram."""
    return _entropy_bits(_histogram(fused))


def standard_deviation(fused: np.ndarray) -> float:
    """SD: population standard deviation of the gray levels (contrast)."""
    return float(np.std(fused))


def spatial_frequency(fused: np.ndarray) -> float:
    """SF: sqrt(mean squared row difference + mean squared column difference)."""
    row = np.diff(fused, axis=1)
    col = np.diff(fused, axis=0)
    rf2 = float(np.mean(row * row)) if row.size else 0.0
    cf2 = float(np.mean(col * col)) if col.size else 0.0
    return float(np.sqrt(rf2 + cf2))


def average_gradient(fused: np.ndarray) -> float:
    """AG: mean over the (H-1)x(W-1) grid of sqrt((dx^2 + dy^2) / 2), forward differences."""
    if min(fused.shape) < 2:
        return 0.0
    dx = fused[:-1, 1:] - fused[:-1, :-1]
    dy = fused[1:, :-1] - fused[:-1, :-1]
    return float(np.mean(np.sqrt((dx * dx + dy * dy) / 2.0)))


# ---------------------------------------------------------------------------------------------
# Information-theoretic metrics


def mutual_information(x: np.ndarray, y: np.ndarray) -> float:
    """MI (bits) of two 8-bit images from their 256x256 joint histogram."""
    joint = np.bincount((x.astype(np.intp) * 256 + y.astype(np.intp)).ravel(), minlength=256 * 256).reshape(256, 256)
    joint = joint / joint.sum()
    px = joint.sum(axis=1)
    py = joint.sum(axis=0)
    return _entropy_bits(px) + _entropy_bits(py) - _entropy_bits(joint.ravel())


def mi(fused: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """MI: MI(F, A) + MI(F, B)."""
    return mutual_information(fused, a) + mutual_information(fused, b)


def feature_mutual_information(
    fused: np.ndarray, a: np.ndarray, b: np.ndarray, feature: str = "gradient", window: int = 3
) -> float:
    """FMI (Haghighat et al. 2011, Fast-FMI windows of Haghighat & Razian 2014).

    Mean over all ``window`` x ``window`` windows of (FMI(A, F) + FMI(B, F)) / 2, on the
    horizontal central-difference gradient (``feature="gradient"``, as MATLAB's gradient()
    used by the reference code) or on the raw pixels (``feature="pixel"``).
    """
    if feature == "gradient":
        images = [np.gradient(x, axis=1) if x.shape[1] > 1 else np.zeros_like(x) for x in (fused, a, b)]
    elif feature == "pixel":
        images = [fused, a, b]
    else:
        raise InputError(f"unknown FMI feature {feature!r}: use 'gradient' or 'pixel'")
    f_img, a_img, b_img = (np.ascontiguousarray(x, dtype=np.float64) for x in images)
    height, width = f_img.shape
    if height < window or width < window:
        raise InputError(f"FMI needs images of at least {window}x{window} pixels, got {f_img.shape}")
    from ._fmi import fmi_sum  # numba: imported and compiled only when FMI is asked for

    windows = (height - window + 1) * (width - window + 1)
    return float(fmi_sum(f_img, a_img, b_img, window) / windows)


# ---------------------------------------------------------------------------------------------
# Structural and visual-fidelity metrics


_VIF_NOISE, _VIF_EPS = 2.0, 1e-10


@_shared
def _vif_scales(image: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per scale of VIF's pyramid: the image filtered down to that scale, its local means and
    variances (the same for a reference and for a distorted image)."""
    scales = []
    for scale in range(1, 5):
        size = 2 ** (4 - scale + 1) + 1
        win = _gaussian_1d(size, size / 5.0)
        if scale > 1:
            if min(image.shape) < size:
                break
            image = _filter_valid(image, win)[::2, ::2]
        if min(image.shape) < size:
            break
        mu = _filter_valid(image, win)
        scales.append((image, mu, np.maximum(_filter_valid(image * image, win) - mu * mu, 0.0)))
    return scales


@_shared
def _vif_reference(reference: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, float]]:
    """Per scale of the reference: its filtered image, local means and variances (flat below
    epsilon), and the information it carries (the denominator of VIF)."""
    if min(reference.shape) < 17:
        raise InputError(f"VIF needs images of at least 17x17 pixels, got {reference.shape}")
    scales = []
    for ref, mu1, variance in _vif_scales(reference):
        sigma1_sq = np.where(variance < _VIF_EPS, 0.0, variance)
        scales.append((ref, mu1, sigma1_sq, float(np.log10(1.0 + sigma1_sq / _VIF_NOISE).sum())))
    return scales


def _vif_pixel(reference: np.ndarray, distorted: np.ndarray) -> float:
    """Pixel-domain multi-scale VIF of Sheikh & Bovik (the reference vifp_mscale)."""
    num = den = 0.0
    scales = zip(_vif_reference(reference), _vif_scales(distorted))
    for scale, ((ref, mu1, sigma1_sq, information), (dist, mu2, sigma2_sq)) in enumerate(scales, start=1):
        size = 2 ** (4 - scale + 1) + 1
        win = _gaussian_1d(size, size / 5.0)
        sigma12 = _filter_valid(ref * dist, win) - mu1 * mu2

        g = sigma12 / (sigma1_sq + _VIF_EPS)
        sv_sq = sigma2_sq - g * sigma12
        flat1 = sigma1_sq == 0.0
        g[flat1] = 0.0
        sv_sq[flat1] = sigma2_sq[flat1]
        flat2 = sigma2_sq < _VIF_EPS
        g[flat2] = 0.0
        sv_sq[flat2] = 0.0
        negative = g < 0
        sv_sq[negative] = sigma2_sq[negative]
        g[negative] = 0.0
        sv_sq = np.maximum(sv_sq, _VIF_EPS)

        num += float(np.log10(1.0 + g * g * sigma1_sq / (sv_sq + _VIF_NOISE)).sum())
        den += information
    return num / den if den > 0 else 1.0


def vif(fused: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """VIF (fusion variant): VIF(A -> F) + VIF(B -> F), each source the reference."""
    return _vif_pixel(a, fused) + _vif_pixel(b, fused)


_QABF = dict(tg=0.9994, kg=-15.0, dg=0.5, ta=0.9879, ka=-22.0, da=0.8)
_SOBEL_Y = np.array([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])
_SOBEL_X = _SOBEL_Y.T[:, ::-1].copy()  # [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]


@_shared
def _sobel_strength_orientation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edge strength and orientation (atan(sy/sx), pi/2 where sx = 0), zero-padded 'same'."""
    sx = ndimage.convolve(x, _SOBEL_X, mode="constant")
    sy = ndimage.convolve(x, _SOBEL_Y, mode="constant")
    strength = np.sqrt(sx * sx + sy * sy)
    with np.errstate(divide="ignore", invalid="ignore"):
        orientation = np.where(sx == 0, np.pi / 2, np.arctan(sy / np.where(sx == 0, 1.0, sx)))
    return strength, orientation


def _edge_preservation(g_s: np.ndarray, a_s: np.ndarray, g_f: np.ndarray, a_f: np.ndarray) -> np.ndarray:
    """Q^{SF}: how well F keeps the edge strength and orientation of source S, per pixel."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(
            g_s > g_f,
            g_f / np.where(g_s > 0, g_s, 1.0),
            np.where(g_s == g_f, g_f, g_s / np.where(g_f > 0, g_f, 1.0)),
        )
    angle = 1.0 - np.abs(a_s - a_f) / (np.pi / 2)
    q = _QABF
    q_strength = q["tg"] / (1.0 + np.exp(q["kg"] * (ratio - q["dg"])))
    q_angle = q["ta"] / (1.0 + np.exp(q["ka"] * (angle - q["da"])))
    return np.asarray(q_strength * q_angle)


def qabf(fused: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Qabf (Xydeas & Petrovic 2000): edge preservation weighted by source edge strength."""
    g_a, a_a = _sobel_strength_orientation(a)
    g_b, a_b = _sobel_strength_orientation(b)
    g_f, a_f = _sobel_strength_orientation(fused)
    weight = float((g_a + g_b).sum())
    if weight == 0:
        return 0.0
    q_af = _edge_preservation(g_a, a_a, g_f, a_f)
    q_bf = _edge_preservation(g_b, a_b, g_f, a_f)
    return float((q_af * g_a + q_bf * g_b).sum() / weight)


def scd(fused: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """SCD (Aslantas & Bendes 2015): r(F - B, A) + r(F - A, B)."""
    return _correlation(fused - b, a) + _correlation(fused - a, b)


def cc(fused: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """CC: mean of the Pearson correlations r(F, A) and r(F, B)."""
    return (_correlation(fused, a) + _correlation(fused, b)) / 2.0


def psnr(fused: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) with peak 255 against the mean of MSE(F, A) and MSE(F, B); inf when both 0."""
    mse = (np.mean((fused - a) ** 2) + np.mean((fused - b) ** 2)) / 2.0
    return float(10.0 * np.log10(PEAK * PEAK / mse)) if mse > 0 else float("inf")


_SSIM_WINDOW = _gaussian_1d(11, 1.5)
_SSIM_C1 = (0.01 * PEAK) ** 2
_SSIM_C2 = (0.03 * PEAK) ** 2
_MS_SSIM_WEIGHTS = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])


@_shared
def _ssim_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local mean and variance of x in the 'valid' 11x11 Gaussian windows."""
    if min(x.shape) < _SSIM_WINDOW.size:
        raise InputError(f"SSIM needs images of at least {_SSIM_WINDOW.size}x{_SSIM_WINDOW.size} pixels, got {x.shape}")
    mu = _filter_valid(x, _SSIM_WINDOW)
    return mu, _filter_valid(x * x, _SSIM_WINDOW) - mu * mu


@_shared
def _ssim_maps(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SSIM and its contrast-structure term at every 'valid' 11x11 Gaussian window position."""
    (mu_x, var_x), (mu_y, var_y) = _ssim_moments(x), _ssim_moments(y)
    cov = _filter_valid(x * y, _SSIM_WINDOW) - mu_x * mu_y
    cs_map = (2.0 * cov + _SSIM_C2) / (var_x + var_y + _SSIM_C2)
    luminance = (2.0 * mu_x * mu_y + _SSIM_C1) / (mu_x * mu_x + mu_y * mu_y + _SSIM_C1)
    return luminance * cs_map, cs_map


def _ssim_and_cs(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mean SSIM and mean contrast-structure term over the 'valid' 11x11 Gaussian windows."""
    ssim_map, cs_map = _ssim_maps(x, y)
    return float(np.mean(ssim_map)), float(np.mean(cs_map))


def structural_similarity(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM (Wang et al. 2004) of two 8-bit images: 11x11 Gaussian sigma 1.5, K1 .01, K2 .03."""
    return _ssim_and_cs(x, y)[0]


@_shared
def _halve(x: np.ndarray) -> np.ndarray:
    """2x2 mean then keep every second pixel (odd edges repeat their last row / column)."""
    if x.shape[0] % 2:
        x = np.concatenate([x, x[-1:]], axis=0)
    if x.shape[1] % 2:
        x = np.concatenate([x, x[:, -1:]], axis=1)
    return np.asarray((x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2]) / 4.0)


def multiscale_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """MS-SSIM (Wang, Simoncelli & Bovik 2003): five scales with the published weights.

    Images too small for five scales use as many as fit (>= 11 px at the coarsest), with the
    weights of those scales renormalised to sum 1. Negative terms are clamped at 0 before the
    fractional powers.
    """
    levels = 0
    size = min(x.shape)
    while levels < _MS_SSIM_WEIGHTS.size and size >= _SSIM_WINDOW.size:
        levels += 1
        size = (size + 1) // 2
    if levels == 0:
        raise InputError(f"MS-SSIM needs images of at least 11x11 pixels, got {x.shape}")
    weights = _MS_SSIM_WEIGHTS[:levels] / _MS_SSIM_WEIGHTS[:levels].sum()
    value = 1.0
    for level in range(levels):
        ssim_value, cs_value = _ssim_and_cs(x, y)
        term = ssim_value if level == levels - 1 else cs_value
        value *= max(term, 0.0) ** weights[level]
        x, y = _halve(x), _halve(y)
    return float(value)


def ssim(fused: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """SSIM: mean of SSIM(F, A) and SSIM(F, B)."""
    return (structural_similarity(fused, a) + structural_similarity(fused, b)) / 2.0


def ms_ssim(fused: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM: mean of MS-SSIM(F, A) and MS-SSIM(F, B)."""
    return (multiscale_ssim(fused, a) + multiscale_ssim(fused, b)) / 2.0


# ---------------------------------------------------------------------------------------------
# What each source keeps (this package's)


@_shared
def _foreground(a: np.ndarray) -> np.ndarray:
    """Pixels above a's Otsu threshold (none when a is constant)."""
    return a > threshold_otsu(a) if np.ptp(a) > 0 else np.zeros(a.shape, bool)


def region_fidelity(fused: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Fidelity: how well F keeps each source where that source matters (this package's metric).

    Inside a's foreground (above its Otsu threshold; a is the fluorescence / functional source) F
    should follow a: the Pearson correlation of F and A there. Outside it F should look like b:
    the mean SSIM(F, B) of the windows centred there. Their harmonic mean (each clamped at 0), so
    that copying either source, or max(a, b) where a is dimmer than b, scores low. A constant a
    has no foreground: then only the SSIM part counts.
    """
    foreground = _foreground(a)
    ssim_map = _ssim_maps(fused, b)[0]
    top, left = (a.shape[0] - ssim_map.shape[0]) // 2, (a.shape[1] - ssim_map.shape[1]) // 2
    outside = ~foreground[top : top + ssim_map.shape[0], left : left + ssim_map.shape[1]]
    parts = []
    if foreground.any():
        parts.append(max(_correlation(fused[foreground], a[foreground]), 0.0))
    if outside.any():
        parts.append(max(float(ssim_map[outside].mean()), 0.0))
    if len(parts) == 1:
        return parts[0]
    inside, structure = parts
    return 0.0 if inside + structure == 0 else 2 * inside * structure / (inside + structure)


# ---------------------------------------------------------------------------------------------
# Registry and the public entry

Metric = Callable[[np.ndarray, np.ndarray, np.ndarray], float]

METRICS: dict[str, Metric] = {
    "EN": lambda f, a, b: entropy(f),
    "SD": lambda f, a, b: standard_deviation(f),
    "SF": lambda f, a, b: spatial_frequency(f),
    "AG": lambda f, a, b: average_gradient(f),
    "MI": mi,
    "FMI": lambda f, a, b: feature_mutual_information(f, a, b, feature="gradient"),
    "FMI-pixel": lambda f, a, b: feature_mutual_information(f, a, b, feature="pixel"),
    "VIF": vif,
    "Qabf": qabf,
    "SCD": scd,
    "SSIM": ssim,
    "MS-SSIM": ms_ssim,
    "CC": cc,
    "PSNR": psnr,
    "Fidelity": region_fidelity,
}
"""Every metric by its key, each called as ``metric(fused, a, b)`` on :func:`to_gray8` images.
All of them reward the better fusion with a larger value."""

METRIC_INFO: dict[str, str] = {
    "EN": "Entropy: information in the fused image's gray levels (bits).",
    "SD": "Standard deviation: global contrast of the fused image.",
    "SF": "Spatial frequency: how much fine detail (row and column differences) it holds.",
    "AG": "Average gradient: sharpness of its edges.",
    "MI": "Mutual information with A plus with B: gray levels kept from the sources (bits).",
    "FMI": "Feature mutual information: gradient features kept from the sources, in small windows.",
    "FMI-pixel": "Feature mutual information on pixel values instead of gradients.",
    "VIF": "Visual information fidelity: information a viewer gets from the sources, kept.",
    "Qabf": "Edge preservation: strength and orientation of the sources' edges kept.",
    "SCD": "Sum of the correlations of differences: what F adds to each source looks like the other.",
    "SSIM": "Structural similarity with each source, mean of the two.",
    "MS-SSIM": "Multi-scale structural similarity with each source, mean of the two.",
    "CC": "Correlation coefficient with each source, mean of the two.",
    "PSNR": "Peak signal-to-noise ratio against the sources (dB).",
    "Fidelity": "A kept inside A's foreground and B's structure outside it (this package's).",
}
"""One line per metric for tooltips: its full name and what it measures (higher is better for
all); docs/metrics.md has the definitions."""

SCORED_METRICS = ("EN", "SD", "SF", "AG", "MI", "FMI", "VIF", "Qabf", "SCD", "MS-SSIM")
"""The metrics on which a method is scored against the best of the others (the project's goal)."""


def wins(results: Mapping[str, Mapping[str, float | None]], method: str) -> list[str]:
    """The :data:`SCORED_METRICS` on which ``method`` beats every other method of ``results``
    (``{method: {metric: value}}``) strictly; a tie is not a win."""
    won = []
    for key in SCORED_METRICS:
        ours = results[method][key]
        others = [value for m, r in results.items() if m != method and (value := r[key]) is not None]
        if ours is not None and others and ours > max(others):
            won.append(key)
    return won


def evaluate(
    fused: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    metrics: Sequence[str] | None = None,
    names: Sequence[str] = ("fused", "A", "B"),
) -> dict[str, float]:
    """Compute ``metrics`` (default: all of :data:`METRICS`) of ``fused`` against sources a, b.

    Inputs are one plane each (gray, or colour reduced to Y), any dtype (see :func:`to_gray8`);
    ``names`` label them in error messages (file or layer names).
    """
    keys = list(METRICS) if metrics is None else list(metrics)
    unknown = [key for key in keys if key not in METRICS]
    if unknown:
        raise InputError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRICS)}")
    images = [_shared(to_gray8)(image, name) for image, name in zip((fused, a, b), names)]
    for image, name in zip(images[1:], names[1:]):
        if image.shape != images[0].shape:
            raise InputError(
                f"{name} has shape {image.shape} but {names[0]} has {images[0].shape}: "
                "the fused image and its sources must be the same size"
            )
    if not _SHARED.get():  # scored alone: no term is kept (a big image's terms take memory)
        return {key: METRICS[key](*images) for key in keys}
    with _sharing(*images):  # among others: its own terms once for all metrics, dropped after
        return {key: METRICS[key](*images) for key in keys}


def compare_methods(
    a: np.ndarray,
    b: np.ndarray,
    methods: Sequence[str] | Mapping[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] | None = None,
    metrics: Sequence[str] | None = None,
    names: Sequence[str] = ("A", "B"),
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    seconds: dict[str, float] | None = None,
    workers: int = 1,
) -> dict[str, dict[str, float]]:
    """Fuse sources a, b with each method and evaluate each result: ``{method: {metric: value}}``.

    ``methods``: names of ``baselines.BASELINES`` (default: all of them) or a mapping of names
    to ``fuse(a, b) -> fused`` callables (the network, say). Every method gets the same
    :func:`fusion_input` planes. ``progress(done, total)`` after each method; ``cancel()``
    returning True stops with ``FusionCancelled``; fusion times are added into ``seconds``.
    ``workers`` > 1 fuses and scores that many methods at once in threads (numpy, scipy and the
    FMI loop let go of the GIL): the same numbers sooner on several cores, but each method's
    ``seconds`` then shares the cores with the others.
    """
    from .baselines import BASELINES

    if methods is None:
        methods = list(BASELINES)
    if not isinstance(methods, Mapping):
        unknown = [name for name in methods if name not in BASELINES]
        if unknown:
            raise InputError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(BASELINES)}")
        methods = {name: BASELINES[name] for name in methods}
    plane_a, plane_b = fusion_input(a, names[0]), fusion_input(b, names[1])
    if plane_a.shape != plane_b.shape:
        raise InputError(f"{names[1]} has shape {plane_b.shape} but {names[0]} has {plane_a.shape}")

    def score(name: str, method: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> tuple[dict[str, float], float]:
        if cancel is not None and cancel():
            raise FusionCancelled("evaluation cancelled")
        started = time.perf_counter()
        fused = np.asarray(method(plane_a, plane_b))
        took = time.perf_counter() - started
        return evaluate(fused, plane_a, plane_b, metrics, names=(name, *names)), took

    results: dict[str, dict[str, float]] = {}

    def record(name: str, outcome: tuple[dict[str, float], float]) -> None:
        results[name], took = outcome
        if seconds is not None:
            seconds[name] = seconds.get(name, 0.0) + took
        if progress is not None:
            progress(len(results), len(methods))

    with _sharing(plane_a, plane_b):
        if workers <= 1:  # in this thread, as a caller's thread-local state (torch.no_grad ...) expects
            for name, method in methods.items():
                record(name, score(name, method))
            return results
        with ThreadPoolExecutor(workers) as pool:
            # each job runs in a copy of this context, so it sees the shared sources' terms
            jobs = {
                pool.submit(contextvars.copy_context().run, score, name, method): name
                for name, method in methods.items()
            }
            try:
                for job in as_completed(jobs):
                    record(jobs[job], job.result())
            finally:
                for job in jobs:
                    job.cancel()  # after a failure or a cancel: the methods not started yet never start
    return {name: results[name] for name in methods}
