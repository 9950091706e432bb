"""Axis letters: the one place that names the axes of an image.

Images are walked plane by plane: leading axes (some of ``T``, ``C``, ``Z``, in that order), then
``Y`` and ``X``, then an optional colour-sample axis ``S`` (RGB or RGBA) last, where napari keeps
it. Files that name their axes (OME-TIFF, OME-Zarr) are read as they say. An array without
metadata (a numpy array, a napari layer, a plain TIFF or zarr array) is named by one rule, used by
the Python API, the CLI, the widgets and the napari writer alike:

    2-D ``YX``, 3-D ``ZYX``, 4-D ``TZYX``, 5-D ``TCZYX``; a last axis of 3 or 4 after at least two
    others is colour (``YXS``, ``ZYXS`` ...), unless the caller knows better (napari's ``rgb``).

A 4-D array is a time series of z-stacks, not channels of a stack: napari shows channels as
separate layers (``channel_axis``), so a 4-D layer is almost always T, Z, and OME-NGFF orders
the axes ``t, c, z, y, x``.
"""

from __future__ import annotations

from ..errors import InputError

#: Leading axes by how many there are: the order OME-NGFF gives them (t, c, z).
LEADING = {0: "", 1: "Z", 2: "TZ", 3: "TCZ"}

#: OME-Zarr unit names for the spellings found in TIFF metadata.
OME_UNITS = {
    "µm": "micrometer",
    "um": "micrometer",
    "micron": "micrometer",
    "\\u00B5m": "micrometer",
    "nm": "nanometer",
    "mm": "millimeter",
    "cm": "centimeter",
    "m": "meter",
}
#: TIFF unit spellings of the OME-Zarr unit names.
TIFF_UNITS = {v: k for k, v in OME_UNITS.items() if k in ("µm", "nm", "mm", "cm", "m")}


def guess_axes(shape: tuple[int, ...], colour: bool | None = None) -> str:
    """Axis letters for an array without metadata (see the module docstring). ``colour``: whether
    the last axis holds RGB(A) samples; None guesses it as napari does (a last axis of 3 or 4)."""
    if colour is None:
        colour = len(shape) >= 3 and shape[-1] in (3, 4)
    lead = len(shape) - 2 - int(colour)
    if lead not in LEADING:
        raise InputError(
            f"cannot interpret an array of shape {tuple(shape)} as image planes "
            f"(at most T, C, Z, Y, X{' and colour' if colour else ''})"
        )
    return LEADING[lead] + "YX" + ("S" if colour else "")


def ome_axis(letter: str, unit: str | None = None) -> dict[str, str]:
    """The OME-Zarr 0.4 ``axes`` entry of one axis letter: T time, C or S (colour) channel, the
    rest space (in ``unit``, when known)."""
    letter = letter.lower()
    if letter in "cs":
        return {"name": "c", "type": "channel"}
    if letter == "t":
        return {"name": "t", "type": "time"}
    return {"name": letter, "type": "space", **({"unit": unit} if unit else {})}


class Planes:
    """Axis helpers of an image walked plane by plane: leading axes, then (Y, X), then an optional
    colour axis ``S``. Mixed into the dataclasses that carry ``shape`` and ``axes``."""

    shape: tuple[int, ...]
    axes: str

    @property
    def colour(self) -> bool:
        return self.axes.endswith("S")

    @property
    def lead(self) -> tuple[int, ...]:
        return self.shape[: len(self.shape) - 2 - self.colour]

    @property
    def plane_shape(self) -> tuple[int, int]:
        start = len(self.shape) - 2 - self.colour
        return self.shape[start], self.shape[start + 1]
