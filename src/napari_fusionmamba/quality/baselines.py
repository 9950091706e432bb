"""Classical fusion methods, for comparison with the network and as a fallback.

Every method has the signature ``method(a, b) -> fused`` on two 2D float32 planes in [0, 1]
(already normalised by the caller) and returns a float32 plane of the same shape in [0, 1], so
the tiled engine, the CLI (``--method``) and the widgets can run any of them like the network.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from ..errors import InputError

FusionMethod = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _planes(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    if a.ndim != 2 or a.shape != b.shape:
        raise InputError(f"expected two 2-D planes of the same shape, got {a.shape} and {b.shape}")
    return a, b


def average(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = _planes(a, b)
    return np.asarray(((a + b) / 2), dtype=np.float32)


def maximum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = _planes(a, b)
    return np.asarray(np.maximum(a, b))


def _max_abs(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per pixel, the coefficient of larger magnitude (x on ties, so fusing X with X is X)."""
    return np.where(np.abs(x) >= np.abs(y), x, y)


# Laplacian pyramid --------------------------------------------------------------------------

_BINOMIAL = np.array([1.0, 4.0, 6.0, 4.0, 1.0], np.float32) / 16.0


def _blur(x: np.ndarray) -> np.ndarray:
    x = ndimage.correlate1d(x, _BINOMIAL, axis=0, mode="reflect")
    return np.asarray(ndimage.correlate1d(x, _BINOMIAL, axis=1, mode="reflect"))


def _reduce(x: np.ndarray) -> np.ndarray:
    return _blur(x)[::2, ::2]


def _expand(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Upsample to ``shape`` by zero insertion and binomial interpolation.

    Each output is divided by the kernel weight that actually fell on inserted samples (4 x the
    kernel inside the image, less at the borders), so the gain is 1 everywhere: no bright or
    dark rim that the max-abs rule would mistake for detail.
    """
    up = np.zeros(shape, np.float32)
    up[::2, ::2] = x
    norms = []
    for length in shape:
        samples = np.zeros(length, np.float32)
        samples[::2] = 1.0
        norms.append(ndimage.correlate1d(samples, _BINOMIAL, mode="reflect"))
    return _blur(up) / np.outer(norms[0], norms[1])


def _pyramid_levels(shape: tuple[int, ...], most: int = 4) -> int:
    """Detail levels that keep the coarsest plane at 8 px or more (0 for tiny inputs)."""
    levels, size = 0, min(shape)
    while levels < most and size >= 16:
        levels, size = levels + 1, (size + 1) // 2
    return levels


def laplacian_pyramid(a: np.ndarray, b: np.ndarray, levels: int = 4) -> np.ndarray:
    """Laplacian-pyramid fusion (Burt & Adelson 1983): max-abs details, averaged base.

    Each level keeps what expand() of the next level misses, so collapsing the pyramid gives
    the input back exactly: fusing X with X returns X, whatever the size (odd sizes too).
    """
    a, b = _planes(a, b)
    fused_details = []
    for _ in range(_pyramid_levels(a.shape, levels)):
        small_a, small_b = _reduce(a), _reduce(b)
        detail_a = a - _expand(small_a, a.shape)
        detail_b = b - _expand(small_b, b.shape)
        fused_details.append(_max_abs(detail_a, detail_b))
        a, b = small_a, small_b
    fused = (a + b) / 2.0
    for detail in reversed(fused_details):
        fused = _expand(fused, detail.shape) + detail
    return np.asarray(np.clip(fused, 0.0, 1.0), dtype=np.float32)


# Discrete wavelet transform -----------------------------------------------------------------


def dwt(a: np.ndarray, b: np.ndarray, wavelet: str = "db2", levels: int = 3) -> np.ndarray:
    """DWT fusion: max-abs on every detail sub-band, average on the approximation.

    PyWavelets' 'symmetric' extension and the inverse transform reconstruct the input to
    float precision; the result is cropped back to the input size (odd sizes grow by one).
    """
    import pywt

    a, b = _planes(a, b)
    level = min(levels, pywt.dwt_max_level(min(a.shape), pywt.Wavelet(wavelet).dec_len))
    if level < 1:
        return average(a, b)
    coeffs_a = pywt.wavedec2(a, wavelet, mode="symmetric", level=level)
    coeffs_b = pywt.wavedec2(b, wavelet, mode="symmetric", level=level)
    fused = [(coeffs_a[0] + coeffs_b[0]) / 2.0]
    for bands_a, bands_b in zip(coeffs_a[1:], coeffs_b[1:]):
        fused.append(tuple(_max_abs(x, y) for x, y in zip(bands_a, bands_b)))
    out = pywt.waverec2(fused, wavelet, mode="symmetric")[: a.shape[0], : a.shape[1]]
    return np.asarray(np.clip(out, 0.0, 1.0), dtype=np.float32)


# Guided-filter fusion -----------------------------------------------------------------------


def _box(x: np.ndarray, radius: int) -> np.ndarray:
    return np.asarray(ndimage.uniform_filter(x, size=2 * radius + 1, mode="reflect"))


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He, Sun & Tang's guided filter: a local linear model of ``src`` in terms of ``guide``."""
    mean_i, mean_p = _box(guide, radius), _box(src, radius)
    var_i = _box(guide * guide, radius) - mean_i * mean_i
    cov_ip = _box(guide * src, radius) - mean_i * mean_p
    slope = cov_ip / (var_i + eps)
    offset = mean_p - slope * mean_i
    return np.asarray(_box(slope, radius) * guide + _box(offset, radius))


def gff(
    a: np.ndarray,
    b: np.ndarray,
    base_radius: int = 15,
    r1: int = 45,
    eps1: float = 0.3,
    r2: int = 7,
    eps2: float = 1e-6,
) -> np.ndarray:
    """Guided-filter fusion (Li, Kang & Hu 2013) with the paper's parameters.

    Two-scale split (31x31 mean = base, rest = detail); saliency = Gaussian-smoothed
    (sigma 5, radius 5) |3x3 Laplacian|; binary maps pick the more salient source per pixel;
    the maps are refined by guided filtering with each source as guide (r1, eps1 for the base,
    r2, eps2 for the detail), clipped at 0 and normalised to sum 1; the weighted bases and
    details are added back together.
    """
    a, b = _planes(a, b)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    bases = [_box(x, base_radius) for x in (a64, b64)]
    details = [x - base for x, base in zip((a64, b64), bases)]
    saliency = [
        ndimage.gaussian_filter(np.abs(ndimage.laplace(x, mode="reflect")), 5.0, truncate=1.0) for x in (a64, b64)
    ]
    choose_a = (saliency[0] >= saliency[1]).astype(np.float64)
    choose_b = (saliency[1] >= saliency[0]).astype(np.float64)  # ties count for both
    fused = np.zeros_like(a64)
    for radius, eps, parts in ((r1, eps1, bases), (r2, eps2, details)):
        weights = [np.clip(guided_filter(x, p, radius, eps), 0.0, None) for x, p in ((a64, choose_a), (b64, choose_b))]
        total = weights[0] + weights[1]
        even = total <= 1e-12
        total[even] = 1.0
        weight_a = np.where(even, 0.5, weights[0] / total)
        fused += weight_a * parts[0] + (1.0 - weight_a) * parts[1]
    return np.clip(fused, 0.0, 1.0).astype(np.float32)


BASELINES: dict[str, FusionMethod] = {
    "average": average,
    "max": maximum,
    "laplacian": laplacian_pyramid,
    "dwt": dwt,
    "gff": gff,
}
