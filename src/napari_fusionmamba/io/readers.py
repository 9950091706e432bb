"""Read TIFF / OME-TIFF / zarr / OME-Zarr / PNG / JPEG lazily.

Every reader returns an ``OpenedImage``: a dask array (TIFF pages through tifffile's zarr
interface, so nothing is loaded whole), its axes letters (``T Z C ... Y X`` plus ``S`` for colour
samples, always last), the pixel size when the file says it, and the store's multiscale levels
(full resolution first) for viewers, and what OME metadata says of each channel (its name,
colour and display window) so a viewer shows the channels as the acquisition software did.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ImageNotFoundError, ImageReadError, InputError
from .axes import OME_UNITS, guess_axes
from .files import not_regular

ZARR_SUFFIXES = (".zarr",)
TIFF_SUFFIXES = (".tif", ".tiff")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")

#: Environment variable holding the largest image (pixels, all planes) a reader accepts.
MAX_PIXELS_VAR = "FUSIONMAMBA_MAX_PIXELS"
#: Its default: 2**33 pixels (a 92682 x 92682 plane, 16 GiB of 16-bit pixels).
MAX_PIXELS = 1 << 33
#: A compressed strip is decoded whole whenever any of its rows is read: strips up to this size
#: are read strip by strip; larger ones are decoded once into memory when the whole image is at
#: most ``WHOLE_BYTES``, and refused otherwise.
STRIP_BYTES = 4 << 20
WHOLE_BYTES = 64 << 20
#: Dask chunk of memory-mapped (uncompressed strip) TIFFs, rows x columns.
MAPPED_CHUNK = 1024


@dataclass(frozen=True)
class Channel:
    """One channel as OME metadata describes it: ``color`` (r, g, b) in [0, 1] and ``window``
    (the display range, in data values) are None when the file does not say."""

    name: str | None = None
    color: tuple[float, float, float] | None = None
    window: tuple[float, float] | None = None


@dataclass
class OpenedImage:
    """A lazily opened image.

    ``pixel_size`` has one value per axis of ``axes`` other than the colour axis ``S`` (in
    ``unit``; 1.0 for axes without a known spacing, such as T), so it can be a napari layer's
    ``scale``; it is None when the file gives no spatial calibration. ``origin``, where the image
    starts (OME-Zarr translation, OME-TIFF plane position), is laid out the same way and can be
    the layer's ``translate``; None when the file says nothing.
    """

    data: Any  # a dask array (or any array napari or numpy can index)
    pixel_size: tuple[float, ...] | None
    axes: str
    path: str
    levels: list[Any] = field(default_factory=list)
    unit: str | None = None
    origin: tuple[float, ...] | None = None
    channels: list[Channel] = field(default_factory=list)  # one per index of the C axis, when known

    @property
    def colour(self) -> bool:
        return self.axes.endswith("S")

    @property
    def channel_count(self) -> int:
        """How many channels the C axis holds (0 without one)."""
        return int(self.data.shape[self.axes.index("C")]) if "C" in self.axes else 0

    def channel(self, index: int) -> OpenedImage:
        """This image with its C axis reduced to channel ``index`` (its other axes, pixel sizes,
        origin and levels kept); an ``InputError`` names the file when there is no such channel."""
        count = self.channel_count
        if not count:
            raise InputError(f"{self.path}: has no channel axis (axes {self.axes}); leave the channel out")
        if not 0 <= index < count:
            raise InputError(f"{self.path}: no channel {index}; it has {count} (0 to {count - 1})")
        axis = self.axes.index("C")
        take = (slice(None),) * axis + (index,)

        def dropped(values: tuple[float, ...] | None) -> tuple[float, ...] | None:
            return None if values is None else values[:axis] + values[axis + 1 :]  # C precedes S

        return OpenedImage(
            data=self.data[take],
            pixel_size=dropped(self.pixel_size),
            axes=self.axes.replace("C", ""),
            path=self.path,
            levels=[level[take] for level in self.levels],
            unit=self.unit,
            origin=dropped(self.origin),
            channels=self.channels[index : index + 1],
        )


def is_zarr_path(path: str | os.PathLike[str]) -> bool:
    """``X.zarr``, ``X.ome.zarr`` and arrays inside them (``X.zarr/ARRAY``)."""
    return any(part.endswith(ZARR_SUFFIXES) for part in Path(path).parts)


def kind_of(path: str | os.PathLike[str]) -> str:
    """ "zarr", "tiff" or "picture" from a path's name; a clear error otherwise."""
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


def open_image(path: str | os.PathLike[str]) -> OpenedImage:
    """Open an image file or store lazily. Raises ``FileNotFoundError`` or ``ImageReadError``
    naming the path."""
    path = str(path)
    kind = kind_of(path)
    if not os.path.exists(path):
        raise ImageNotFoundError(f"{path}: no such file or directory")
    refusal = not_regular(path)
    if refusal:
        raise ImageReadError(refusal)
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


def max_pixels() -> int:
    """The pixel budget: ``$FUSIONMAMBA_MAX_PIXELS`` when set, else ``MAX_PIXELS``."""
    value = os.environ.get(MAX_PIXELS_VAR, "").strip()
    try:
        return int(float(value)) if value else MAX_PIXELS
    except ValueError:
        raise ImageReadError(f"{MAX_PIXELS_VAR}={value!r} is not a number of pixels") from None


def check_pixel_budget(path: str, shape: tuple[int, ...]) -> None:
    """Refuse an image larger than the pixel budget from its header, before anything is
    decoded (a compressed file claiming a huge image is a decompression bomb)."""
    pixels, budget = math.prod(shape), max_pixels()
    if pixels > budget:
        raise ImageReadError(
            f"{path}: {'x'.join(map(str, shape))} is {pixels:.3g} pixels, over the budget of {budget:.3g}; "
            f"if the image is real, raise the budget with the environment variable {MAX_PIXELS_VAR}"
        )


def _squeeze(image: OpenedImage) -> OpenedImage:
    """Drop length-1 axes other than Y and X (a single T or Z is not a stack)."""
    keep = [i for i, (ax, n) in enumerate(zip(image.axes, image.data.shape)) if n != 1 or ax in "YX"]
    if len(keep) == image.data.ndim:
        return image
    index = tuple(slice(None) if i in keep else 0 for i in range(image.data.ndim))
    spatial = [i for i, ax in enumerate(image.axes) if ax != "S"]

    def kept(values: tuple[float, ...] | None) -> tuple[float, ...] | None:  # one value per non-colour axis
        return None if values is None else tuple(v for i, v in zip(spatial, values) if i in keep)

    return OpenedImage(
        data=image.data[index],
        pixel_size=kept(image.pixel_size),
        axes="".join(image.axes[i] for i in keep),
        path=image.path,
        levels=[level[index] for level in image.levels] if image.levels else [],
        unit=image.unit,
        origin=kept(image.origin),
        channels=image.channels,
    )


def _per_axis(axes: str, sizes: dict[str, float]) -> tuple[float, ...] | None:
    if "X" not in sizes and "Y" not in sizes:
        return None
    sx = sizes.get("X", sizes.get("Y", 1.0))
    sizes = {"Y": sizes.get("Y", sx), "X": sx, **{k: v for k, v in sizes.items() if k not in "YX"}}
    return tuple(float(sizes.get(ax, 1.0)) for ax in axes if ax != "S")


def _open_tiff(path: str) -> OpenedImage:
    import dask.array as da
    import tifffile
    import zarr

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes = series.axes.upper()
        check_pixel_budget(path, tuple(series.shape))
        n_levels = len(series.levels)
        pixels = _ome_pixels(tif)
        sizes, unit = _tiff_calibration(tif, pixels)
        positions = _tiff_positions(pixels)
        storage = _tiff_storage(path, series)
    if storage == "mapped":  # uncompressed strips: read only the rows asked for
        mapped = tifffile.memmap(path, series=0, mode="r")
        chunks = tuple(n if ax == "S" else MAPPED_CHUNK if ax in "YX" else 1 for ax, n in zip(axes, mapped.shape))
        levels = [da.from_array(mapped, chunks=chunks if len(axes) == mapped.ndim else "auto")]
    elif storage == "whole":  # a few large compressed strips: decoded once, not once per chunk
        levels = [da.from_array(tifffile.imread(path, series=0))]
    else:  # tiles, or small strips: each read decodes only the tiles or strips it touches
        store = tifffile.imread(path, aszarr=True, series=0)
        node = zarr.open(store, mode="r")
        arrays = [node[str(i)] for i in range(n_levels)] if n_levels > 1 else [node]
        levels = [da.from_zarr(array) for array in arrays]
    if len(axes) != levels[0].ndim or set(axes) - set("TCZYXS"):  # tifffile's Q, I ...: unnamed
        axes = guess_axes(levels[0].shape, colour=None if len(axes) != levels[0].ndim else axes.endswith("S"))
    if "S" in axes[:-1]:  # planar colour: samples last, as everywhere else
        levels = [da.moveaxis(level, axes.index("S"), -1) for level in levels]
        axes = axes.replace("S", "") + "S"
    origin = tuple(positions.get(ax, 0.0) for ax in axes if ax != "S") if positions else None
    image = OpenedImage(levels[0], _per_axis(axes, sizes), axes, path, levels, unit if sizes else None, origin)
    image.channels = _ome_tiff_channels(pixels)
    return image


def _ome_tiff_channels(pixels: dict[str, Any] | None) -> list[Channel]:
    """Name and colour of each OME-XML ``Channel`` (Color: a signed 32-bit RGBA integer)."""
    found = (pixels or {}).get("Channel") or []
    channels = []
    for entry in found if isinstance(found, list) else [found]:
        color = None
        if "Color" in entry:
            rgba = int(entry["Color"]) & 0xFFFFFFFF
            color = ((rgba >> 24) / 255, ((rgba >> 16) & 0xFF) / 255, ((rgba >> 8) & 0xFF) / 255)
        name = entry.get("Name")
        channels.append(Channel(None if name is None else str(name), color))
    return channels


def _tiff_storage(path: str, series: Any) -> str:
    """How to read a TIFF series without decoding more than a read needs: "chunks" (tiles, or
    strips of at most ``STRIP_BYTES``, read one by one), "mapped" (larger uncompressed strips,
    one for the whole image say: memory-mapped), "whole" (larger compressed strips of a small
    image: decoded once). Larger compressed strips of a large image are refused with advice.
    Small strips are read rather than mapped: every page a map touches stays in the process's
    resident memory until the system reclaims it."""
    page = series.keyframe
    strip = math.prod(page.chunks) * page.dtype.itemsize
    if page.is_tiled or len(series.levels) > 1 or strip <= STRIP_BYTES:
        return "chunks"
    if series.dataoffset is not None and page.is_memmappable:
        return "mapped"
    if math.prod(series.shape) * page.dtype.itemsize <= WHOLE_BYTES:
        return "whole"
    raise ImageReadError(
        f"{path}: stored in compressed strips of {page.rowsperstrip} rows ({strip / 2**20:.0f} MiB each), "
        f"each decoded whole for every chunk read; save it as a tiled TIFF (e.g. "
        f"tifffile.imwrite(out, data, tile=(256, 256), compression='zlib')) or as zarr"
    )


def _ome_pixels(tif: Any) -> dict[str, Any] | None:
    """The OME-XML ``Pixels`` element of the first image, parsed once (it can list thousands of
    planes), or None for a TIFF without OME metadata."""
    import tifffile

    if not (tif.is_ome and tif.ome_metadata):
        return None
    image = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
    pixels: dict[str, Any] = (image[0] if isinstance(image, list) else image)["Pixels"]
    return pixels


def _tiff_positions(pixels: dict[str, Any] | None) -> dict[str, float]:
    """The first plane's OME PositionX / Y / Z (each plane has its own; the first is where the
    image starts), or nothing."""
    planes = (pixels or {}).get("Plane")
    first = (planes[0] if isinstance(planes, list) else planes) or {}
    return {ax: float(first[f"Position{ax}"]) for ax in "XYZ" if f"Position{ax}" in first}


def _tiff_calibration(tif: Any, pixels: dict[str, Any] | None) -> tuple[dict[str, float], str | None]:
    """Pixel sizes from OME-XML (``pixels``), else from ImageJ's description and resolution tags."""
    if pixels is not None:
        sizes = {ax: float(pixels[f"PhysicalSize{ax}"]) for ax in "XYZ" if f"PhysicalSize{ax}" in pixels}
        unit = str(pixels.get("PhysicalSizeXUnit", "µm"))
        return sizes, OME_UNITS.get(unit, unit)
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
        return sizes, OME_UNITS.get(unit, unit)
    return {}, None


def _multiscales(group: Any) -> dict[str, Any] | None:
    attrs = dict(group.attrs)
    meta = attrs.get("ome", attrs).get("multiscales")
    return dict(meta[0]) if meta else None


def _from_multiscales(path: str, meta: dict[str, Any], group: Any, dataset: str | None = None) -> OpenedImage:
    import dask.array as da

    datasets = meta["datasets"]
    names = [d["path"] for d in datasets]
    first = names.index(dataset) if dataset is not None else 0
    check_pixel_budget(path, group[names[first]].shape)
    levels = [da.from_zarr(group[name]) for name in names[first:]]
    axes_meta = meta.get("axes") or []
    names_axes = [a["name"] if isinstance(a, dict) else a for a in axes_meta]
    axes = (
        "".join(n.upper()[0] for n in names_axes) if len(names_axes) == levels[0].ndim else guess_axes(levels[0].shape)
    )
    transforms = {t.get("type"): t for t in datasets[first].get("coordinateTransformations", [])}

    def per_axis(values: list[float] | None) -> tuple[float, ...] | None:
        return tuple(float(v) for v in values) if values is not None and len(values) == len(axes) else None

    pixel = per_axis(transforms.get("scale", {}).get("scale"))
    origin = per_axis(transforms.get("translation", {}).get("translation"))
    unit = next(
        (a.get("unit") for a in axes_meta if isinstance(a, dict) and a.get("type") == "space" and a.get("unit")), None
    )
    channels = _omero_channels(dict(group.attrs))
    return OpenedImage(levels[0], pixel, axes, path, levels, unit if pixel else None, origin, channels)


def _omero_channels(attrs: dict[str, Any]) -> list[Channel]:
    """Label, colour (hex RRGGBB) and display window of each OME-Zarr ``omero`` channel."""
    channels = []
    for entry in attrs.get("ome", attrs).get("omero", {}).get("channels", []):
        hex_colour = str(entry.get("color", ""))
        color = None
        if len(hex_colour) == 6:
            try:
                color = tuple(int(hex_colour[i : i + 2], 16) / 255 for i in (0, 2, 4))
            except ValueError:
                color = None
        window = entry.get("window") or {}
        span = (float(window["start"]), float(window["end"])) if "start" in window and "end" in window else None
        label = entry.get("label")
        channels.append(Channel(None if label is None else str(label), color, span))  # type: ignore[arg-type]
    return channels


def _open_zarr(path: str) -> OpenedImage:
    import dask.array as da
    import zarr

    node = zarr.open(path, mode="r")
    if isinstance(node, zarr.Array):
        check_pixel_budget(path, node.shape)
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

    check_pixel_budget(path, tuple(iio.improps(path).shape))
    pixels = np.asarray(iio.imread(path))
    if pixels.ndim == 3 and pixels.shape[-1] == 2:  # gray + alpha
        pixels = pixels[..., 0]
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    axes = "YXS" if pixels.ndim == 3 else "YX"
    data = da.from_array(pixels, chunks=pixels.shape)
    return OpenedImage(data, None, axes, path, [data])
