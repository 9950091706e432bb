"""Write fused outputs block by block: OME-Zarr 0.4 (with a pyramid) and tiled OME-TIFF.

Memory stays bounded by a block, never by the image. Colour, a last sample axis in memory, is
a channel axis in the store (OME-Zarr 0.4 has no sample axis): ``OutputLayout`` maps the two.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .axes import TIFF_UNITS, Planes, ome_axis

#: Rank of each memory axis letter in a store: time, channel (colour too), space.
STORE_RANK = {"T": 0, "C": 1, "S": 1, "Z": 2, "Y": 3, "X": 4}


@dataclass(frozen=True)
class OutputLayout(Planes):
    """Shape and metadata of a fused output: planes (``lead`` shape) of (Y, X), plus a colour
    axis of 3 last when a source was colour. OME-Zarr 0.4 has no sample axis, so the store
    keeps colour as a channel axis ``c`` before the space axes; this class maps between the two."""

    shape: tuple[int, ...]
    axes: str
    dtype: str
    chunk: int
    pixel_size: tuple[float, ...] | None = None
    unit: str | None = None
    origin: tuple[float, ...] | None = None  # laid out like pixel_size

    def _store_order(self) -> list[int]:
        """Memory axis indices in store order: OME-NGFF wants time, then channel (colour is
        one), then space, so a TZCYX source is stored t, c, z, y, x."""
        return sorted(range(len(self.axes)), key=lambda i: STORE_RANK[self.axes[i]])

    def ome_axes(self) -> list[dict[str, str]]:
        return [ome_axis(self.axes[i], self.unit) for i in self._store_order()]

    def store_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[i] for i in self._store_order())

    def store_chunks(self) -> tuple[int, ...]:
        chunks = [1] * len(self.lead) + [
            min(self.chunk, self.shape[len(self.lead)]),
            min(self.chunk, self.shape[len(self.lead) + 1]),
        ]
        if self.colour:
            chunks.append(3)
        return tuple(chunks[i] for i in self._store_order())

    def to_store(self, block: np.ndarray) -> np.ndarray:
        """A memory-order block (Y, X[, 3]) of one plane as the store wants it."""
        return np.moveaxis(block, -1, 0) if self.colour else block

    def store_index(self, plane: tuple[int, ...], *region: slice) -> tuple[int | slice, ...]:
        """The store index of ``region`` (slices of Y[, X]) of one plane; colour, a channel axis
        in the store, is taken whole. Y and X stay last in the store, so a block's axes keep
        their order (colour first)."""
        spatial = (*region, slice(None), slice(None))[:2]
        index = (*plane, *spatial, *((slice(None),) if self.colour else ()))
        return tuple(index[i] for i in self._store_order())


def create_ome_zarr(
    path: str, layout: OutputLayout, attrs: dict[str, Any] | None = None, name: str | None = None
) -> Any:
    """An empty OME-Zarr 0.4 image (one full-resolution level "0") ready for block writes."""
    import zarr

    group = zarr.open_group(path, mode="w", zarr_format=2)
    group.create_array("0", shape=layout.store_shape(), chunks=layout.store_chunks(), dtype=layout.dtype, fill_value=0)
    spatial = [i for i, ax in enumerate(layout.axes) if ax != "S"]

    def in_store_order(values: tuple[float, ...] | None, default: float) -> list[float]:
        full = [default] * len(layout.shape)
        for i, value in zip(spatial, values or ()):
            full[i] = value
        return [full[i] for i in layout._store_order()]

    transforms = [{"type": "scale", "scale": in_store_order(layout.pixel_size, 1.0)}]
    if layout.origin is not None:
        transforms.append({"type": "translation", "translation": in_store_order(layout.origin, 0.0)})
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "name": name or os.path.basename(path.rstrip("/")),
            "axes": layout.ome_axes(),
            "datasets": [{"path": "0", "coordinateTransformations": transforms}],
        }
    ]
    if attrs:
        group.attrs.update(attrs)
    return group


#: Downsampled levels are added to an OME-Zarr output until its largest side is at most this.
PYRAMID_MIN = 512


def add_pyramid(path: str, layout: OutputLayout, smallest: int = PYRAMID_MIN) -> int:
    """Add 2x-downsampled levels ("1", "2", ...) to a store made by ``create_ome_zarr`` so that
    viewers can show a large output zoomed out without reading it all. Each level is the 2x2
    mean of the one above, computed block by block (memory: a few float32 blocks of four output
    chunks). Returns the number of levels added."""
    import zarr

    group = zarr.open_group(path, mode="r+")
    meta = group.attrs["multiscales"]
    datasets = meta[0]["datasets"][:1]
    previous = group["0"]
    level = 0
    while max(previous.shape[-2:]) > smallest:
        level += 1
        shape = previous.shape[:-2] + tuple(-(-n // 2) for n in previous.shape[-2:])
        chunks = previous.chunks[:-2] + tuple(min(c, n) for c, n in zip(previous.chunks[-2:], shape[-2:]))
        current = group.create_array(
            str(level), shape=shape, chunks=chunks, dtype=previous.dtype, fill_value=0, overwrite=True
        )
        cy, cx = chunks[-2:]
        for lead in np.ndindex(*shape[:-2]):
            for y in range(0, shape[-2], cy):
                for x in range(0, shape[-1], cx):
                    block = np.asarray(
                        previous[lead + (slice(2 * y, 2 * (y + cy)), slice(2 * x, 2 * (x + cx)))], dtype=np.float32
                    )  # exact for means of 8/16-bit values
                    h, w = -(-block.shape[0] // 2), -(-block.shape[1] // 2)
                    block = np.pad(block, ((0, 2 * h - block.shape[0]), (0, 2 * w - block.shape[1])), mode="edge")
                    mean = block.reshape(h, 2, w, 2).mean(axis=(1, 3))
                    if previous.dtype.kind in "iu":
                        mean = np.round(mean)
                    current[lead + (slice(y, y + h), slice(x, x + w))] = mean.astype(previous.dtype)
        scale, *others = datasets[0]["coordinateTransformations"]  # the translation, if any, is kept
        sizes = list(scale["scale"])
        sizes[-2:] = [value * 2**level for value in sizes[-2:]]
        datasets.append({"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": sizes}, *others]})
        previous = current
    meta[0]["datasets"] = datasets
    group.attrs["multiscales"] = meta
    return level


def write_block(path: str, layout: OutputLayout, plane: tuple[int, ...], y0: int, x0: int, block: np.ndarray) -> None:
    """Write one (Y, X[, 3]) block of one plane into the store made by ``create_ome_zarr``."""
    import zarr

    array = zarr.open_array(os.path.join(path, "0"), mode="r+")
    index = layout.store_index(plane, slice(y0, y0 + block.shape[0]), slice(x0, x0 + block.shape[1]))
    array[index] = layout.to_store(block).astype(layout.dtype, copy=False)


def read_plane_region(path: str, layout: OutputLayout, plane: tuple[int, ...], y0: int, y1: int) -> np.ndarray:
    """Rows [y0, y1) of one plane of a store made by ``create_ome_zarr``, in memory order."""
    import zarr

    array = zarr.open_array(os.path.join(path, "0"), mode="r")
    rows = np.asarray(array[layout.store_index(plane, slice(y0, y1))])
    return np.moveaxis(rows, 0, -1) if layout.colour else rows


TIFF_TILE = 256


def ome_tiff_placement(
    axes: str,
    lead: tuple[int, ...],
    pixel_size: Sequence[float] | None = None,
    origin: Sequence[float] | None = None,
    unit: str | None = None,
) -> dict[str, Any]:
    """OME-TIFF metadata that places an image: the physical size of X, Y and Z (in ``unit``,
    tifffile's µm when None) and every plane's position in storage order (X and Y the origin's,
    Z stepping by the Z pixel size). ``pixel_size`` and ``origin`` have one value per axis of
    ``axes`` other than S; either may be None."""
    spatial = [ax for ax in axes if ax != "S"]
    metadata: dict[str, Any] = {}
    for ax, value in zip(spatial, pixel_size or ()):
        if ax in "XYZ":
            metadata[f"PhysicalSize{ax}"] = value
            if unit:
                metadata[f"PhysicalSize{ax}Unit"] = unit
    if origin is not None:
        start = dict(zip(spatial, origin))
        indices = list(np.ndindex(*lead))
        positions = {"PositionX": [start["X"]] * len(indices), "PositionY": [start["Y"]] * len(indices)}
        if "Z" in spatial:
            z = spatial.index("Z")
            step = pixel_size[z] if pixel_size is not None else 1.0
            positions["PositionZ"] = [start["Z"] + index[z] * step for index in indices]
        metadata["Plane"] = positions
    return metadata


def zarr_to_tiff(
    zarr_path: str, layout: OutputLayout, tiff_path: str, description: dict[str, Any] | None = None
) -> None:
    """Stream a store made by ``create_ome_zarr`` into a tiled OME-TIFF, one band of rows at a
    time (memory: a band of ``4 * TIFF_TILE`` rows of one plane). ``description`` goes, as JSON,
    into the OME image's Description."""
    import tifffile

    height, width = layout.shape[len(layout.lead)], layout.shape[len(layout.lead) + 1]
    band = 4 * TIFF_TILE

    def tiles() -> Iterator[np.ndarray]:
        for plane in np.ndindex(*layout.lead):  # one () for a single plane
            for top in range(0, height, band):
                rows = read_plane_region(zarr_path, layout, plane, top, min(top + band, height))
                for y in range(0, rows.shape[0], TIFF_TILE):
                    for x in range(0, width, TIFF_TILE):
                        yield rows[y : y + TIFF_TILE, x : x + TIFF_TILE]

    unit = TIFF_UNITS.get(layout.unit or "micrometer", layout.unit or "µm")
    metadata = {
        "axes": layout.axes,
        **ome_tiff_placement(layout.axes, layout.lead, layout.pixel_size, layout.origin, unit),
    }
    if description:
        metadata["Description"] = json.dumps(description)
    tifffile.imwrite(
        tiff_path,
        tiles(),
        shape=layout.shape,
        dtype=layout.dtype,
        tile=(TIFF_TILE, TIFF_TILE),
        photometric="rgb" if layout.colour else "minisblack",
        ome=True,
        metadata=metadata,
    )


def tiff_missing_bytes(path: str) -> int:
    """How many bytes of a TIFF's image data lie beyond its end (a file cut short); 0 when none."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        end = max(
            (offset + count for page in tif.pages for offset, count in zip(page.dataoffsets, page.databytecounts)),
            default=0,
        )
    return max(0, end - os.path.getsize(path))


def tiff_description(path: str) -> dict[str, Any] | None:
    """The JSON that ``zarr_to_tiff`` put in an OME-TIFF image's Description (None without one)."""
    import xml.etree.ElementTree as ElementTree

    import tifffile

    with tifffile.TiffFile(path) as tif:
        ome = tif.ome_metadata
    if not ome:
        return None
    element = ElementTree.fromstring(ome).find(".//{*}Image/{*}Description")
    if element is None or not element.text:
        return None
    value = json.loads(element.text)
    return value if isinstance(value, dict) else None
