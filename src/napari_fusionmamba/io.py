"""Read TIFF / OME-TIFF / zarr / OME-Zarr / PNG / JPEG lazily; write OME-Zarr 0.4 and OME-TIFF.

Every reader returns an ``OpenedImage``: a dask array (TIFF pages through tifffile's zarr
interface, so nothing is loaded whole), its axes letters (``T Z C ... Y X`` plus ``S`` for colour
samples, always last), the pixel size when the file says it, and the store's multiscale levels
(full resolution first) for viewers. Writers work block by block, so memory stays bounded by a
block, never by the image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ImageNotFoundError, ImageReadError, InputError

ZARR_SUFFIXES = (".zarr",)
TIFF_SUFFIXES = (".tif", ".tiff")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")

#: OME-Zarr unit names for the spellings found in TIFF metadata.
_UNITS = {"µm": "micrometer", "um": "micrometer", "micron": "micrometer", "\\u00B5m": "micrometer",
          "nm": "nanometer", "mm": "millimeter", "cm": "centimeter", "m": "meter"}
_TIFF_UNITS = {v: k for k, v in _UNITS.items() if k in ("µm", "nm", "mm", "cm", "m")}


@dataclass
class OpenedImage:
    """A lazily opened image.

    ``pixel_size`` has one value per axis of ``axes`` other than the colour axis ``S`` (in
    ``unit``; 1.0 for axes without a known spacing, such as T), so it can be a napari layer's
    ``scale``; it is None when the file gives no spatial calibration. ``origin``, where the image
    starts (OME-Zarr translation, OME-TIFF plane position), is laid out the same way and can be
    the layer's ``translate``; None when the file says nothing.
    """

    data: "object"  # dask.array.Array
    pixel_size: tuple[float, ...] | None
    axes: str
    path: str
    levels: list = field(default_factory=list)
    unit: str | None = None
    origin: tuple[float, ...] | None = None

    @property
    def colour(self) -> bool:
        return self.axes.endswith("S")


def is_zarr_path(path: str | os.PathLike) -> bool:
    """``X.zarr``, ``X.ome.zarr`` and arrays inside them (``X.zarr/ARRAY``)."""
    return any(part.endswith(ZARR_SUFFIXES) for part in Path(path).parts)


def kind_of(path: str | os.PathLike) -> str:
    """"zarr", "tiff" or "picture" from a path's name; a clear error otherwise."""
    name = str(path).lower().rstrip("/")
    if is_zarr_path(path):
        return "zarr"
    if name.endswith(TIFF_SUFFIXES):
        return "tiff"
    if name.endswith(PICTURE_SUFFIXES):
        return "picture"
    raise ImageReadError(
        f"{path}: unsupported format (use .tif/.tiff, .zarr/.ome.zarr (or PATH.zarr/ARRAY), .png or .jpg)"
    )


def open_image(path: str | os.PathLike) -> OpenedImage:
    """Open an image file or store lazily. Raises ``FileNotFoundError`` or ``ImageReadError``
    naming the path."""
    path = str(path)
    kind = kind_of(path)
    if not os.path.exists(path):
        raise ImageNotFoundError(f"{path}: no such file or directory")
    try:
        if kind == "tiff":
            image = _open_tiff(path)
        elif kind == "zarr":
            image = _open_zarr(path)
        else:
            image = _open_picture(path)
    except ImageReadError:
        raise
    except Exception as error:  # every library has its own error types for a corrupt file
        raise ImageReadError(f"{path}: cannot read ({type(error).__name__}: {error})") from error
    return _squeeze(image)


def guess_axes(shape: tuple[int, ...]) -> str:
    """Axes for an array without metadata: ``YX`` last, a last axis of 3 or 4 is colour
    (napari's own rule), and up to two leading axes are ``Z`` then ``T Z``."""
    colour = len(shape) >= 3 and shape[-1] in (3, 4)
    lead = len(shape) - 2 - colour
    if lead < 0 or lead > 3:
        raise InputError(f"cannot interpret an array of shape {shape} as image planes")
    return "TCZ"[3 - lead :] + "YX" + ("S" if colour else "")


def _squeeze(image: OpenedImage) -> OpenedImage:
    """Drop length-1 axes other than Y and X (a single T or Z is not a stack)."""
    keep = [i for i, (ax, n) in enumerate(zip(image.axes, image.data.shape)) if n != 1 or ax in "YX"]
    if len(keep) == image.data.ndim:
        return image
    index = tuple(slice(None) if i in keep else 0 for i in range(image.data.ndim))
    spatial = [i for i, ax in enumerate(image.axes) if ax != "S"]

    def kept(values):  # pixel sizes and origins: one value per non-colour axis
        return None if values is None else tuple(v for i, v in zip(spatial, values) if i in keep)

    return OpenedImage(
        data=image.data[index],
        pixel_size=kept(image.pixel_size),
        axes="".join(image.axes[i] for i in keep),
        path=image.path,
        levels=[level[index] for level in image.levels] if image.levels else [],
        unit=image.unit,
        origin=kept(image.origin),
    )


def _per_axis(axes: str, sizes: dict[str, float]) -> tuple[float, ...] | None:
    if "X" not in sizes and "Y" not in sizes:
        return None
    sx = sizes.get("X", sizes.get("Y"))
    sizes = {"Y": sizes.get("Y", sx), "X": sx, **{k: v for k, v in sizes.items() if k not in "YX"}}
    return tuple(float(sizes.get(ax, 1.0)) for ax in axes if ax != "S")


def _open_tiff(path: str) -> OpenedImage:
    import dask.array as da
    import tifffile
    import zarr

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes = series.axes.upper()
        n_levels = len(series.levels)
        pixels = _ome_pixels(tif)
        sizes, unit = _tiff_calibration(tif, pixels)
        positions = _tiff_positions(pixels)
    store = tifffile.imread(path, aszarr=True, series=0)
    node = zarr.open(store, mode="r")
    arrays = [node[str(i)] for i in range(n_levels)] if n_levels > 1 else [node]
    levels = [da.from_zarr(array) for array in arrays]
    if len(axes) != levels[0].ndim:
        axes = guess_axes(levels[0].shape)
    if "S" in axes[:-1]:  # planar colour: samples last, as everywhere else
        levels = [da.moveaxis(level, axes.index("S"), -1) for level in levels]
        axes = axes.replace("S", "") + "S"
    origin = tuple(positions.get(ax, 0.0) for ax in axes if ax != "S") if positions else None
    return OpenedImage(levels[0], _per_axis(axes, sizes), axes, path, levels, unit if sizes else None, origin)


def _ome_pixels(tif) -> dict | None:
    """The OME-XML ``Pixels`` element of the first image, parsed once (it can list thousands of
    planes), or None for a TIFF without OME metadata."""
    import tifffile

    if not (tif.is_ome and tif.ome_metadata):
        return None
    image = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
    return (image[0] if isinstance(image, list) else image)["Pixels"]


def _tiff_positions(pixels: dict | None) -> dict[str, float]:
    """The first plane's OME PositionX / Y / Z (each plane has its own; the first is where the
    image starts), or nothing."""
    planes = (pixels or {}).get("Plane")
    first = (planes[0] if isinstance(planes, list) else planes) or {}
    return {ax: float(first[f"Position{ax}"]) for ax in "XYZ" if f"Position{ax}" in first}


def _tiff_calibration(tif, pixels: dict | None) -> tuple[dict[str, float], str | None]:
    """Pixel sizes from OME-XML (``pixels``), else from ImageJ's description and resolution tags."""
    if pixels is not None:
        sizes = {ax: float(pixels[f"PhysicalSize{ax}"]) for ax in "XYZ" if f"PhysicalSize{ax}" in pixels}
        unit = str(pixels.get("PhysicalSizeXUnit", "µm"))
        return sizes, _UNITS.get(unit, unit)
    if tif.is_imagej and tif.imagej_metadata:
        meta = tif.imagej_metadata
        page = tif.pages[0]
        sizes = {}
        for ax, tag in (("X", "XResolution"), ("Y", "YResolution")):
            if tag in page.tags:
                num, den = page.tags[tag].value
                if num:
                    sizes[ax] = den / num
        if "spacing" in meta:
            sizes["Z"] = float(meta["spacing"])
        unit = str(meta.get("unit", "micron"))
        if sizes.get("X") == 1.0 and "unit" not in meta:
            sizes = {}
        return sizes, _UNITS.get(unit, unit)
    return {}, None


def _multiscales(group) -> dict | None:
    attrs = dict(group.attrs)
    meta = attrs.get("ome", attrs).get("multiscales")
    return meta[0] if meta else None


def _from_multiscales(path: str, meta: dict, group, dataset: str | None = None) -> OpenedImage:
    import dask.array as da

    datasets = meta["datasets"]
    names = [d["path"] for d in datasets]
    first = names.index(dataset) if dataset is not None else 0
    levels = [da.from_zarr(group[name]) for name in names[first:]]
    axes_meta = meta.get("axes") or []
    names_axes = [a["name"] if isinstance(a, dict) else a for a in axes_meta]
    axes = "".join(n.upper()[0] for n in names_axes) if len(names_axes) == levels[0].ndim else guess_axes(levels[0].shape)
    transforms = {t.get("type"): t for t in datasets[first].get("coordinateTransformations", [])}

    def per_axis(values):
        return tuple(float(v) for v in values) if values is not None and len(values) == len(axes) else None

    pixel = per_axis(transforms.get("scale", {}).get("scale"))
    origin = per_axis(transforms.get("translation", {}).get("translation"))
    unit = next((a.get("unit") for a in axes_meta if isinstance(a, dict) and a.get("type") == "space" and a.get("unit")), None)
    return OpenedImage(levels[0], pixel, axes, path, levels, unit if pixel else None, origin)


def _open_zarr(path: str) -> OpenedImage:
    import dask.array as da
    import zarr

    node = zarr.open(path, mode="r")
    if isinstance(node, zarr.Array):
        parent = os.path.dirname(path.rstrip("/"))
        if is_zarr_path(parent):
            try:
                group = zarr.open_group(parent, mode="r")
                meta = _multiscales(group)
            except Exception:  # the parent is a plain folder, not a group
                meta = None
            name = os.path.basename(path.rstrip("/"))
            if meta and name in [d["path"] for d in meta["datasets"]]:
                return _from_multiscales(path, meta, group, name)
        data = da.from_zarr(node)
        return OpenedImage(data, None, guess_axes(data.shape), path, [data])
    meta = _multiscales(node)
    if meta is None:
        arrays = sorted(name for name, _ in node.arrays())
        raise ImageReadError(
            f"{path}: a zarr group without OME multiscales metadata; name one of its arrays as "
            f"{path.rstrip('/')}/ARRAY ({', '.join(arrays) or 'it holds no arrays'})"
        )
    return _from_multiscales(path, meta, node)


def _open_picture(path: str) -> OpenedImage:
    import dask.array as da
    import imageio.v3 as iio

    pixels = np.asarray(iio.imread(path))
    if pixels.ndim == 3 and pixels.shape[-1] == 2:  # gray + alpha
        pixels = pixels[..., 0]
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    axes = "YXS" if pixels.ndim == 3 else "YX"
    data = da.from_array(pixels, chunks=pixels.shape)
    return OpenedImage(data, None, axes, path, [data])


# --- writing --------------------------------------------------------------------------------


def ome_axis(letter: str, unit: str | None = None) -> dict:
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
        return self.shape[len(self.shape) - 2 - self.colour : len(self.shape) - self.colour]


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
        """Memory axis indices in store order (colour moved in front of Z, after T)."""
        order = list(range(len(self.axes)))
        if self.colour:
            order.pop()
            lead_axes = self.axes[: len(self.lead)]
            position = 1 if lead_axes.startswith("T") else 0
            order.insert(position, len(self.axes) - 1)
        return order

    def ome_axes(self) -> list[dict]:
        return [ome_axis(self.axes[i], self.unit) for i in self._store_order()]

    def store_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[i] for i in self._store_order())

    def store_chunks(self) -> tuple[int, ...]:
        chunks = [1] * len(self.lead) + [min(self.chunk, self.shape[len(self.lead)]),
                                         min(self.chunk, self.shape[len(self.lead) + 1])]
        if self.colour:
            chunks.append(3)
        return tuple(chunks[i] for i in self._store_order())

    def to_store(self, block: np.ndarray) -> np.ndarray:
        """A memory-order block (Y, X[, 3]) of one plane as the store wants it."""
        return np.moveaxis(block, -1, 0) if self.colour else block

    def store_index(self, plane: tuple[int, ...], *region: slice) -> tuple:
        """The store index of ``region`` (slices of Y[, X]) of one plane; colour, a channel axis
        in the store, is taken whole."""
        if not self.colour:
            return (*plane, *region)
        position = self._store_order().index(len(self.axes) - 1)
        return (*plane[:position], slice(None), *plane[position:], *region)


def create_ome_zarr(path: str, layout: OutputLayout, attrs: dict | None = None, name: str | None = None):
    """An empty OME-Zarr 0.4 image (one full-resolution level "0") ready for block writes."""
    import zarr

    group = zarr.open_group(path, mode="w", zarr_format=2)
    group.create_array("0", shape=layout.store_shape(), chunks=layout.store_chunks(),
                       dtype=layout.dtype, fill_value=0)
    spatial = [i for i, ax in enumerate(layout.axes) if ax != "S"]

    def in_store_order(values, default: float) -> list[float]:
        full = [default] * len(layout.shape)
        for i, value in zip(spatial, values or ()):
            full[i] = value
        return [full[i] for i in layout._store_order()]

    transforms = [{"type": "scale", "scale": in_store_order(layout.pixel_size, 1.0)}]
    if layout.origin is not None:
        transforms.append({"type": "translation", "translation": in_store_order(layout.origin, 0.0)})
    group.attrs["multiscales"] = [{
        "version": "0.4",
        "name": name or os.path.basename(path.rstrip("/")),
        "axes": layout.ome_axes(),
        "datasets": [{"path": "0", "coordinateTransformations": transforms}],
    }]
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
        current = group.create_array(str(level), shape=shape, chunks=chunks, dtype=previous.dtype,
                                     fill_value=0, overwrite=True)
        cy, cx = chunks[-2:]
        for lead in np.ndindex(*shape[:-2]):
            for y in range(0, shape[-2], cy):
                for x in range(0, shape[-1], cx):
                    block = np.asarray(previous[lead + (slice(2 * y, 2 * (y + cy)), slice(2 * x, 2 * (x + cx)))],
                                       dtype=np.float32)  # exact for means of 8/16-bit values
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


def ome_tiff_placement(axes: str, lead: tuple[int, ...], pixel_size=None, origin=None, unit=None) -> dict:
    """OME-TIFF metadata that places an image: the physical size of X, Y and Z (in ``unit``,
    tifffile's µm when None) and every plane's position in storage order (X and Y the origin's,
    Z stepping by the Z pixel size). ``pixel_size`` and ``origin`` have one value per axis of
    ``axes`` other than S; either may be None."""
    spatial = [ax for ax in axes if ax != "S"]
    metadata = {}
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


def zarr_to_tiff(zarr_path: str, layout: OutputLayout, tiff_path: str) -> None:
    """Stream a store made by ``create_ome_zarr`` into a tiled OME-TIFF, one band of rows at a
    time (memory: a band of ``4 * TIFF_TILE`` rows of one plane)."""
    import tifffile

    height, width = layout.shape[len(layout.lead)], layout.shape[len(layout.lead) + 1]
    band = 4 * TIFF_TILE

    def tiles():
        for plane in np.ndindex(*layout.lead):  # one () for a single plane
            for top in range(0, height, band):
                rows = read_plane_region(zarr_path, layout, plane, top, min(top + band, height))
                for y in range(0, rows.shape[0], TIFF_TILE):
                    for x in range(0, width, TIFF_TILE):
                        yield rows[y : y + TIFF_TILE, x : x + TIFF_TILE]

    unit = _TIFF_UNITS.get(layout.unit or "micrometer", layout.unit or "µm")
    metadata = {"axes": layout.axes,
                **ome_tiff_placement(layout.axes, layout.lead, layout.pixel_size, layout.origin, unit)}
    tifffile.imwrite(
        tiff_path, tiles(), shape=layout.shape, dtype=layout.dtype, tile=(TIFF_TILE, TIFF_TILE),
        photometric="rgb" if layout.colour else "minisblack", ome=True, metadata=metadata,
    )
