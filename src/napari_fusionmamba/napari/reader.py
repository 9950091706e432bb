"""Reader for TIFF / OME-TIFF / zarr / OME-Zarr: lazy, dask-backed layers, multiscale when the store has levels.

A thin shell over ``io.open_image`` (the same reading the command line and the engine use):
nothing is read into memory when a file opens, napari pulls the chunks it displays. Pixel sizes
become the layer's scale, an OME translation (OME-TIFF: plane position) its translate. A
channel axis C becomes one layer per channel (napari's ``channel_axis``), each named, coloured
and windowed as the file's OME metadata says (OME-TIFF ``Channel`` Name and Color, OME-Zarr
``omero`` label, color and window), so fluorescence and phase contrast stored as two channels
of one file open as two layers ready to fuse.
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
    """The image at ``path`` as one napari image layer-data tuple (split by channel when it has a C axis)."""
    import dask.array as da

    from ..io import open_image

    if isinstance(path, (list, tuple)):
        path = path[0]
    image = open_image(path)
    levels = image.levels or [image.data]
    axes = image.axes
    scale = list(image.pixel_size) if image.pixel_size is not None else None
    translate = list(image.origin) if image.origin is not None else None
    rgb = axes.endswith("S")
    named = any(channel.name or channel.color for channel in image.channels)
    if axes == "CYX" and levels[0].shape[0] in (3, 4) and not named:  # colour stored OME-style
        levels = [da.moveaxis(level, 0, -1) for level in levels]
        scale, translate = (None if v is None else list(v)[1:] for v in (scale, translate))
        axes, rgb = "YXS", True
    name = Path(path).name.split(".")[0]
    kwargs = {"name": name, "rgb": rgb, "multiscale": len(levels) > 1}
    channel = axes.index("C") if "C" in axes else None
    if channel is not None:  # the channel axis is not a spatial one: no scale or translate
        scale, translate = (None if v is None else v[:channel] + v[channel + 1 :] for v in (scale, translate))
    spatial = levels[0].ndim - rgb - (channel is not None)
    if scale is not None:
        kwargs["scale"] = scale[-spatial:]
    if translate is not None:
        kwargs["translate"] = list(translate)[-spatial:]  # length-1 axes were squeezed away
    kwargs.update(_channel_display(image.channels, name, levels[0].shape[channel] if channel is not None else 1))
    if channel is not None:
        kwargs["channel_axis"] = channel
    return [(levels if len(levels) > 1 else levels[0], kwargs, "image")]


def _channel_display(channels, name: str, count: int) -> dict:
    """Layer names, colormaps and contrast limits from the file's channel metadata: lists (one per
    channel) for a split image, single values for one channel; nothing the file does not say."""
    if not channels or len(channels) != count:
        return {"name": [f"{name} [{i}]" for i in range(count)]} if count > 1 else {}
    names = [f"{name} [{channel.name if channel.name else i}]" for i, channel in enumerate(channels)]
    display: dict = {"name": names}
    if all(channel.color is not None for channel in channels):
        display["colormap"] = [_colormap(channel.color) for channel in channels]
    if all(channel.window is not None and channel.window[1] > channel.window[0] for channel in channels):
        display["contrast_limits"] = [list(channel.window) for channel in channels]
    if count == 1:
        display = {key: value[0] for key, value in display.items()}
        display["name"] = name if not channels[0].name else names[0]
    return display


def _colormap(color):
    """A black-to-``color`` colormap; white is napari's "gray" (so it reads as a gray image)."""
    from napari.utils.colormaps import Colormap

    if all(c >= 0.999 for c in color):
        return "gray"
    code = "#" + "".join(f"{round(c * 255):02x}" for c in color)
    return Colormap(colors=[[0.0, 0.0, 0.0, 1.0], [*color, 1.0]], name=code)
