"""Images in and out: lazy readers (TIFF, OME-TIFF, zarr, OME-Zarr, PNG / JPEG), block writers
(OME-Zarr 0.4, tiled OME-TIFF), the axis rules (``axes``), colour (``colour``) and atomic file
replacement and the refusal of pipes and devices (``files``), the writers' lock (``locks``), and the
sample data shipped in the package (``samples``).

Owns everything that knows a file format or an axis letter. Imports numpy, dask, zarr,
tifffile, imageio and ``errors``; never torch, the network, napari or Qt.
"""

from .axes import Planes, guess_axes, ome_axis
from .readers import OpenedImage, is_zarr_path, kind_of, open_image
from .writers import (
    OutputLayout,
    add_pyramid,
    create_ome_zarr,
    ome_tiff_placement,
    read_plane_region,
    tiff_description,
    tiff_missing_bytes,
    write_block,
    zarr_to_tiff,
)

__all__ = [
    "OpenedImage",
    "OutputLayout",
    "Planes",
    "add_pyramid",
    "create_ome_zarr",
    "guess_axes",
    "is_zarr_path",
    "kind_of",
    "ome_axis",
    "ome_tiff_placement",
    "open_image",
    "read_plane_region",
    "tiff_description",
    "tiff_missing_bytes",
    "write_block",
    "zarr_to_tiff",
]
