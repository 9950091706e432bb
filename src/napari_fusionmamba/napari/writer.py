"""Writers for image layers: OME-Zarr (NGFF 0.4, any size, chunk by chunk) and OME-TIFF (plane by plane).

Both write next to the target first and move into place at the end, so a failed or interrupted
save never leaves a half-written file under the chosen name. Scale and translate travel with the
data (OME-TIFF: physical sizes and plane positions), so the reader puts the layer back where it
was.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import guess_axes, ome_axis, ome_tiff_placement


def _levels(data, meta: dict) -> tuple[list, str]:
    """Resolution levels as OME wants them (RGB(A) channels first) and their axis letters."""
    import dask.array as da

    levels = [da.asarray(level) for level in (data if meta.get("multiscale") else [data])]
    if not meta.get("rgb"):
        return levels, guess_axes(levels[0].shape, colour=False).lower()
    if levels[0].ndim != 3:
        raise InputError(f"layer '{meta.get('name')}': only 2-D RGB images can be saved as OME-Zarr")
    return [da.moveaxis(level, -1, 0) for level in levels], "cyx"


def _replace(temporary: Path, target: Path) -> None:
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    os.replace(temporary, target)


def write_ome_zarr(path: str, data, meta: dict) -> list[str]:
    """Save one image layer as an OME-Zarr (NGFF 0.4) group; each resolution level becomes a dataset."""
    import dask.array as da
    import zarr

    target = Path(path)
    temporary = target.with_name(f".{target.name}.partial")
    if temporary.exists():
        shutil.rmtree(temporary)
    levels, axes = _levels(data, meta)
    spatial = len(axes) - (1 if meta.get("rgb") else 0)  # an RGB channel axis has no physical size
    scale = [1.0] * (len(axes) - spatial) + [float(s) for s in meta.get("scale", [1.0] * spatial)][-spatial:]
    translate = [0.0] * (len(axes) - spatial) + [float(t) for t in meta.get("translate", [0.0] * spatial)][-spatial:]
    try:
        group = zarr.open_group(str(temporary), mode="w", zarr_format=2)
        datasets = []
        for index, level in enumerate(levels):
            factor = [full / part for full, part in zip(levels[0].shape, level.shape)]
            chunks = tuple(min(n, 1 if name in "tcz" else 1024) for n, name in zip(level.shape, axes))
            array = group.create_array(str(index), shape=level.shape, dtype=level.dtype, chunks=chunks)
            da.store(level.rechunk(chunks), array, lock=False)
            datasets.append(
                {
                    "path": str(index),
                    "coordinateTransformations": [
                        {"type": "scale", "scale": [s * f for s, f in zip(scale, factor)]},
                        {"type": "translation", "translation": translate},
                    ],
                }
            )
        group.attrs["multiscales"] = [
            {
                "version": "0.4",
                "name": meta.get("name", target.stem),
                "axes": [ome_axis(a) for a in axes],
                "datasets": datasets,
            }
        ]
        _replace(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return [str(target)]


def write_ome_tiff(path: str, data, meta: dict) -> list[str]:
    """Save one image layer (its full resolution) as an OME-TIFF, one plane in memory at a time."""
    import tifffile

    target = Path(path)
    temporary = target.with_name(f".{target.name}.partial")
    level = data[0] if meta.get("multiscale") else data
    rgb = bool(meta.get("rgb"))
    spatial = level.shape[:-1] if rgb else level.shape
    axes = guess_axes(level.shape, colour=rgb)
    scale = [float(s) for s in meta.get("scale", [1.0] * len(spatial))][-len(spatial) :]
    translate = [float(t) for t in meta.get("translate", [0.0] * len(spatial))][-len(spatial) :]
    placement = ome_tiff_placement(axes, spatial[:-2], scale, translate)
    planes = (np.asarray(level[index]) for index in np.ndindex(*spatial[:-2]))
    nbytes = int(np.prod(level.shape, dtype=np.int64)) * np.dtype(level.dtype).itemsize
    try:
        tifffile.imwrite(
            temporary,
            data=planes,
            shape=level.shape,
            dtype=level.dtype,
            ome=True,
            photometric="rgb" if rgb else "minisblack",
            bigtiff=nbytes > 2**31 - 2**25,
            metadata={"axes": axes, "Name": meta.get("name", target.stem), **placement},
        )
        _replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return [str(target)]
