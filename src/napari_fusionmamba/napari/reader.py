"""Reader for TIFF / OME-TIFF / zarr / OME-Zarr: lazy, dask-backed layers, multiscale when the store has levels.

A thin shell over ``io.open_image`` (the same reading the command line and the engine use):
nothing is read into memory when a file opens, napari pulls the chunks it displays. Pixel sizes
become the layer's scale, an OME translation (OME-TIFF: plane position) its translate. A
channel axis C becomes one layer per channel, each named, coloured and windowed as the file's OME
metadata says (OME-TIFF ``Channel`` Name and Color, OME-Zarr ``omero`` label, color and window),
so fluorescence and phase contrast stored as two channels of one file open as two layers ready to
fuse. The reader splits the channels itself, one layer-data tuple per channel with plain values,
rather than napari's ``channel_axis`` with per-channel lists: napari adds the options of
``viewer.open(path, **options)`` to every tuple as they are, so ``colormap="green"`` or
``channel_axis=None`` apply to each channel instead of clashing with the lists.
"""

from __future__ import annotations

from pathlib import Path

SUFFIXES = (".tif", ".tiff", ".zarr")


def napari_get_reader(path):
    """Return the reader when ``path`` is a TIFF file or a zarr store, else None (napari asks the next plugin)."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    path = Path(path)
    if path.name.lower().endswith(SUFFIXES) and path.exists():
        return read
    return None


def read(path) -> list[tuple]:
    """The image at ``path`` as napari image layer-data tuples: one, or one per channel when it
    has a C axis (each with plain values, so options given to ``viewer.open`` apply to each)."""
    import dask.array as da

    from ..io import open_image

    if isinstance(path, (list, tuple)):
        path = path[0]
    image = open_image(path)
    levels = image.levels or [image.data]
    axes = image.axes
    scale = list(image.pixel_size) if image.pixel_size is not None else None
    translate = list(image.origin) if image.origin is not None else None
    named = any(channel.name or channel.color for channel in image.channels)
    if axes == "CYX" and levels[0].shape[0] in (3, 4) and not named:  # colour stored OME-style
        levels = [da.moveaxis(level, 0, -1) for level in levels]
        scale, translate = (None if v is None else v[1:] for v in (scale, translate))
        axes = "YXS"
    name = Path(path).name.split(".")[0]
    channel = axes.index("C") if "C" in axes else None
    if channel is not None:  # the channel axis is not a spatial one: no scale or translate
        scale, translate = (None if v is None else v[:channel] + v[channel + 1 :] for v in (scale, translate))
    rgb = axes.endswith("S")
    spatial = levels[0].ndim - rgb - (channel is not None)
    kwargs: dict = {"rgb": rgb, "multiscale": len(levels) > 1}
    if scale is not None:
        kwargs["scale"] = scale[-spatial:]
    if translate is not None:
        kwargs["translate"] = translate[-spatial:]  # length-1 axes were squeezed away
    if channel is None:
        return [(_one(levels), {**kwargs, **_display(image.channels[:1], name, None)}, "image")]
    count = levels[0].shape[channel]
    channels = image.channels if len(image.channels) == count else [None] * count
    layers = []
    for index, described in enumerate(channels):
        planes = [level[(slice(None),) * channel + (index,)] for level in levels]
        blending = "additive" if index else "translucent_no_depth"  # as napari splits channels
        layers.append((_one(planes), {**kwargs, "blending": blending, **_display([described], name, index)}, "image"))
    return layers


def _one(levels: list):
    """A pyramid's levels, or its only level."""
    return levels if len(levels) > 1 else levels[0]


def _display(described: list, name: str, index: int | None) -> dict:
    """A layer's name, colormap and contrast limits from its channel's metadata (nothing the file
    does not say): ``name [label]`` for channel ``index`` of a split image, else the file's name."""
    channel = described[0] if described else None
    label = channel.name if channel is not None and channel.name else index
    display: dict = {"name": name if label is None else f"{name} [{label}]"}
    if channel is not None and channel.color is not None:
        display["colormap"] = _colormap(channel.color)
    if channel is not None and channel.window is not None and channel.window[1] > channel.window[0]:
        display["contrast_limits"] = list(channel.window)
    return display


def _colormap(color):
    """A black-to-``color`` colormap; white is napari's "gray" (so it reads as a gray image)."""
    from napari.utils.colormaps import Colormap

    if all(c >= 0.999 for c in color):
        return "gray"
    code = "#" + "".join(f"{round(c * 255):02x}" for c in color)
    return Colormap(colors=[[0.0, 0.0, 0.0, 1.0], [*color, 1.0]], name=code)
