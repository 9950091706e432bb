"""Reader for TIFF / OME-TIFF / zarr / OME-Zarr: lazy, dask-backed layers, multiscale when the store has levels.

Nothing is read into memory when a file opens: napari pulls the chunks it displays. Pixel sizes
(OME metadata) become the layer's scale, OME-Zarr translations its translate.
"""

from __future__ import annotations

from pathlib import Path

TIFF_SUFFIXES = (".tif", ".tiff")


def napari_get_reader(path):
    """Return the reader when ``path`` is a TIFF file or a zarr store, else None (napari asks the next plugin)."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES and path.is_file():
        return read
    if path.is_dir() and any((path / name).exists() for name in ("zarr.json", ".zgroup", ".zarray")):
        return read
    return None


def read(path) -> list[tuple]:
    """The image at ``path`` as one napari image layer (a list of one layer-data tuple)."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        return [_read_tiff(path)]
    return [_read_zarr(path)]


def _read_tiff(path: Path) -> tuple:
    import dask.array as da
    import tifffile
    import zarr

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes, shape = series.axes, series.shape
        scale = _ome_tiff_scale(tif, axes)
        levels = len(series.levels)
    store = tifffile.imread(path, aszarr=True)
    root = zarr.open(store, mode="r")
    if levels > 1:
        data = [da.from_zarr(root[str(level)]) for level in range(levels)]
    else:
        data = da.from_zarr(root)
    rgb = axes.endswith("S") and shape[-1] in (3, 4)
    spatial = len(shape) - (1 if rgb else 0)
    kwargs = {"name": path.name.split(".")[0], "rgb": rgb, "multiscale": levels > 1}
    if scale:
        kwargs["scale"] = [scale.get(a, 1.0) for a in axes[:spatial]]
    return data, kwargs, "image"


def _ome_tiff_scale(tif, axes: str) -> dict[str, float]:
    """Physical pixel sizes from OME-XML, by axis letter (empty when the file has none)."""
    if not tif.is_ome or not tif.ome_metadata:
        return {}
    import tifffile

    image = tifffile.xml2dict(tif.ome_metadata).get("OME", {}).get("Image", {})
    pixels = (image[0] if isinstance(image, list) else image).get("Pixels", {})
    return {
        axis: float(pixels[f"PhysicalSize{axis}"])
        for axis in "XYZ"
        if f"PhysicalSize{axis}" in pixels and axis in axes
    }


def _read_zarr(path: Path) -> tuple:
    import dask.array as da
    import zarr

    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        return da.from_zarr(node), {"name": path.stem}, "image"
    attrs = dict(node.attrs)
    multiscales = attrs.get("ome", attrs).get("multiscales")
    if not multiscales:
        arrays = sorted(name for name, _ in node.arrays())
        if not arrays:
            raise ValueError(f"{path}: a zarr group with no arrays and no OME-Zarr metadata")
        return da.from_zarr(node[arrays[0]]), {"name": path.stem}, "image"
    meta = multiscales[0]
    axes = [axis["name"] if isinstance(axis, dict) else axis for axis in meta.get("axes", [])]
    levels = [da.from_zarr(node[dataset["path"]]) for dataset in meta["datasets"]]
    scale, translate = _transforms(meta["datasets"][0], levels[0].ndim)
    rgb = axes[:1] == ["c"] and levels[0].ndim == 3 and levels[0].shape[0] in (3, 4)
    if rgb:  # OME keeps channels first, napari wants them last
        levels = [da.moveaxis(level, 0, -1) for level in levels]
        scale, translate = scale[1:], translate[1:]
    kwargs = {
        "name": meta.get("name") or path.name.split(".")[0],
        "scale": scale,
        "translate": translate,
        "rgb": rgb,
        "multiscale": len(levels) > 1,
    }
    return (levels if len(levels) > 1 else levels[0]), kwargs, "image"


def _transforms(dataset: dict, ndim: int) -> tuple[list[float], list[float]]:
    scale, translate = [1.0] * ndim, [0.0] * ndim
    for transform in dataset.get("coordinateTransformations", []):
        if transform.get("type") == "scale":
            scale = [float(s) for s in transform["scale"]]
        elif transform.get("type") == "translation":
            translate = [float(t) for t in transform["translation"]]
    return scale, translate
