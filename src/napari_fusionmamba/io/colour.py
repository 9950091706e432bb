"""Colour: the luma / chroma split for colour sources, and tints for gray sources shown in colour.

Colour images (GFP, PET, SPECT pseudo-colour) are fused on their luminance Y (ITU-R BT.601, as
the fusion literature uses) and the fused Y is recombined with the source's chroma, so hue is
kept and the network only ever sees gray. Works on float arrays with the colour samples on the
last axis; no offsets (chroma is signed).

A gray source that the user sees through a colormap (green GFP, magenta MAP2) is fused as it
is, and the fused gray is then coloured by that colormap (a ``Tint``), so the result looks the
way the source looked. When both sources are shown in colour (magenta MAP2 with blue DAPI, or
with gray phase contrast), the fused gray is shown through both colormaps and the two are mixed
at each pixel by how bright each source is shown there (``mix_tints``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError

#: Colours a tint can be named by (``--colormap``): black to the colour.
NAMED_COLOURS = {
    "green": (0.0, 1.0, 0.0),
    "magenta": (1.0, 0.0, 1.0),
    "red": (1.0, 0.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "cyan": (0.0, 1.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "gray": (1.0, 1.0, 1.0),
}


@dataclass(frozen=True)
class Tint:
    """How a gray source is shown: ``colours`` (RGB in [0, 1]) at ``positions`` (rising, 0 to 1),
    over ``limits`` (the raw values shown as the colormap's ends; None: the source's own
    normalisation)."""

    colours: tuple[tuple[float, float, float], ...]
    positions: tuple[float, ...]
    limits: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if len(self.colours) < 2 or len(self.colours) != len(self.positions):
            raise InputError("a colormap needs two or more colours, one position each")
        if self.limits is not None and not self.limits[1] > self.limits[0]:
            raise InputError(f"contrast limits {self.limits}: the high limit must exceed the low one")

    def __call__(self, values: np.ndarray) -> np.ndarray:
        """Gray values in [0, 1] -> (..., 3) RGB float32."""
        channels = [np.interp(values, self.positions, [c[i] for c in self.colours]) for i in range(3)]
        return np.stack(channels, axis=-1).astype(np.float32)


def mix_tints(fused: np.ndarray, shown_a: np.ndarray, shown_b: np.ndarray, tint_a: Tint, tint_b: Tint) -> np.ndarray:
    """The fused gray (in [0, 1]) coloured by both sources' tints, in the share each source has
    of the two shown brightnesses ``shown_a`` and ``shown_b`` (each source over its contrast
    limits, in [0, 1]): A's colour where only A is bright, B's where only B is, half each where
    both are black. -> (..., 3) RGB float32."""
    total = shown_a + shown_b
    share = np.divide(shown_a, total, out=np.full(total.shape, 0.5, np.float32), where=total > 0)[..., None]
    values = np.clip(fused, 0.0, 1.0)
    return np.asarray(share * tint_a(values) + (1.0 - share) * tint_b(values), dtype=np.float32)


def named_tint(name: str, limits: tuple[float, float] | None = None) -> Tint:
    """The tint from black to a named colour (``NAMED_COLOURS``)."""
    if name not in NAMED_COLOURS:
        raise InputError(f"unknown colormap {name!r}: choose one of {', '.join(NAMED_COLOURS)}")
    return Tint(((0.0, 0.0, 0.0), NAMED_COLOURS[name]), (0.0, 1.0), limits)


def colormap_tint(colours: np.ndarray, positions: np.ndarray, limits: tuple[float, float]) -> Tint:
    """A tint from a viewer's colormap: RGB(A) rows and their positions (stepped colormaps, with
    one position more than colours, are spread evenly), over the shown contrast limits."""
    rgb = np.asarray(colours, dtype=float)[:, :3]
    at = np.asarray(positions, dtype=float)
    if len(at) != len(rgb):
        at = np.linspace(0.0, 1.0, len(rgb))
    colour_rows = tuple((float(r), float(g), float(b)) for r, g, b in rgb)
    return Tint(colour_rows, tuple(float(p) for p in at), (float(limits[0]), float(limits[1])))


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
