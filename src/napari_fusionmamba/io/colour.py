"""Luma / chroma split for colour sources (ITU-R BT.601, as the fusion literature uses).

Colour images (GFP, PET, SPECT pseudo-colour) are fused on their luminance Y and the fused Y
is recombined with the source's chroma, so hue is kept and the network only ever sees gray.
Works on float arrays with the colour samples on the last axis; no offsets (chroma is signed).
"""

from __future__ import annotations

import numpy as np

_KR, _KB = 0.299, 0.114
_KG = 1.0 - _KR - _KB


def rgb_to_ycrcb(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(…, 3) RGB -> Y, Cr, Cb planes of shape (…)."""
    r, g, b = (np.asarray(rgb[..., i], np.float32) for i in range(3))
    y = _KR * r + _KG * g + _KB * b
    return y, (r - y) / (2 * (1 - _KR)), (b - y) / (2 * (1 - _KB))


def ycrcb_to_rgb(y: np.ndarray, cr: np.ndarray, cb: np.ndarray) -> np.ndarray:
    """Inverse of ``rgb_to_ycrcb``: Y, Cr, Cb planes -> (…, 3) RGB."""
    r = y + 2 * (1 - _KR) * cr
    b = y + 2 * (1 - _KB) * cb
    g = (y - _KR * r - _KB * b) / _KG
    return np.stack([r, g, b], axis=-1).astype(np.float32)
