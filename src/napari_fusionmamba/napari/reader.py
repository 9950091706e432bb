"""Reader for TIFF / OME-TIFF / zarr / OME-Zarr: lazy, dask-backed layers, multiscale when the store has levels.

A thin shell over ``io.open_image`` (the same reading the command line and the engine use):
nothing is read into memory when a file opens, napari pulls the chunks it displays. Pixel sizes
become the layer's scale, an OME translation (OME-TIFF: plane position) its translate.
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
    """The image at ``path`` as one napari image layer (a list of one layer-data tuple)."""
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
    if axes == "CYX" and levels[0].shape[0] in (3, 4):  # colour stored OME-style, channels first
        levels = [da.moveaxis(level, 0, -1) for level in levels]
        scale, translate = (None if v is None else list(v)[1:] for v in (scale, translate))
        rgb = True
    spatial = levels[0].ndim - rgb
    kwargs = {"name": Path(path).name.split(".")[0], "rgb": rgb, "multiscale": len(levels) > 1}
    if scale is not None:
        kwargs["scale"] = scale[-spatial:]
    if translate is not None:
        kwargs["translate"] = list(translate)[-spatial:]  # length-1 axes were squeezed away
    return [(levels if len(levels) > 1 else levels[0], kwargs, "image")]
