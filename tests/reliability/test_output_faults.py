"""Outputs that must stay valid and must never touch a source: OME-NGFF axis order for every
input layout, and outputs that would overwrite or nest in a source."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile
import zarr

from napari_fusionmamba.cli import main
from napari_fusionmamba.engine import fuse
from napari_fusionmamba.io import open_image

ORDER = {"time": 0, "channel": 1, "space": 2}


def check_ngff_axes(axes: list[dict[str, str]]) -> None:
    """OME-NGFF 0.4's rules for ``multiscales[0].axes``: 2 to 5 axes with unique names, 2 or 3 of
    type space, at most one time and one channel, ordered time, channel, space."""
    names = [axis["name"] for axis in axes]
    types = [axis.get("type") for axis in axes]
    assert 2 <= len(axes) <= 5 and len(set(names)) == len(names), names
    assert types.count("space") in (2, 3) and types.count("time") <= 1 and types.count("channel") <= 1, types
    assert [ORDER[t] for t in types] == sorted(ORDER[t] for t in types), names


def validate_ngff_image(group: zarr.Group) -> None:
    """Validate with ome-zarr-models, the OME-NGFF models (pydantic), when it is installed."""
    try:
        from ome_zarr_models.v04 import Image
    except ImportError:
        return
    Image.from_zarr(group)


def _write(path, data, axes):
    tifffile.imwrite(path, data, metadata={"axes": axes, "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    return str(path)


@pytest.mark.parametrize(
    "shape, axes, store_axes",
    [
        ((40, 48), "YX", "yx"),
        ((3, 40, 48), "ZYX", "zyx"),
        ((2, 40, 48), "CYX", "cyx"),
        ((2, 2, 3, 40, 48), "TCZYX", "tczyx"),
        ((2, 3, 2, 40, 48), "TZCYX", "tczyx"),
        ((40, 48, 3), "YXS", "cyx"),
        ((2, 40, 48, 3), "ZYXS", "czyx"),
    ],
)
def test_ome_zarr_outputs_order_axes_time_channel_space(tmp_path, shape, axes, store_axes):
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 4000, shape).astype(np.uint16) for _ in range(2))
    if "S" in axes:
        a, b = (x.astype(np.uint8) for x in (a, b))
    pa, pb = _write(tmp_path / "a.ome.tif", a, axes), _write(tmp_path / "b.ome.tif", b, axes)
    out = str(tmp_path / "out.ome.zarr")
    assert main(["fuse", pa, pb, "-o", out, "--method", "max", "--no-progress"]) == 0
    group = zarr.open_group(out, mode="r")
    meta = group.attrs["multiscales"][0]
    validate_ngff_image(group)
    check_ngff_axes(meta["axes"])
    assert "".join(axis["name"] for axis in meta["axes"]) == store_axes
    for dataset in meta["datasets"]:
        assert all(
            len(t.get("scale", t.get("translation"))) == len(store_axes) for t in dataset["coordinateTransformations"]
        )
    stored = open_image(out)
    expected = fuse(pa, pb, method="max")  # in the source's axis order
    order = [axes.index(ax) for ax in stored.axes.replace("S", "") + ("S" if "S" in axes else "") if ax in axes]
    back = np.asarray(stored.data)
    if "S" in axes:  # colour is a channel axis in the store, samples last in memory
        back = np.moveaxis(back, stored.axes.index("C"), -1)
        order = [axes.index(ax) for ax in stored.axes.replace("C", "") + "S"]
    assert np.allclose(back, np.transpose(expected, order), atol=1e-6)
    assert stored.pixel_size[-2:] == pytest.approx((0.5, 0.5))


@pytest.fixture
def sources(tmp_path, pair):
    a, b = pair
    tifffile.imwrite(tmp_path / "a.tif", a)
    tifffile.imwrite(tmp_path / "b.tif", b)
    return str(tmp_path / "a.tif"), str(tmp_path / "b.tif")


def _refused(capsys, args, *words):
    assert main(["fuse", *args, "--method", "max", "--no-progress", "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fusionmamba fuse: error:") and "\n" not in err, err
    for word in words:
        assert word in err, err


def test_an_output_reached_through_a_symlink_is_still_a_source(tmp_path, capsys, sources):
    a, b = sources
    before = tifffile.imread(a)
    os.symlink(a, tmp_path / "link.tif")
    _refused(capsys, [a, b, "-o", str(tmp_path / "link.tif")], "link.tif", "source")
    os.symlink(b, tmp_path / "b-link.tif")  # the source is a link to the output
    _refused(capsys, [a, str(tmp_path / "b-link.tif"), "-o", b], "source")
    assert np.array_equal(tifffile.imread(a), before) and os.path.isfile(b)


def test_an_output_holding_or_inside_a_source_store_is_refused(tmp_path, capsys, sources):
    a, b = sources
    assert main(["fuse", a, b, "-o", str(tmp_path / "first.ome.zarr"), "--method", "max", "--no-progress"]) == 0
    store = str(tmp_path / "first.ome.zarr")
    before = np.asarray(open_image(store + "/0").data)
    _refused(capsys, [store + "/0", b, "-o", store], "first.ome.zarr", "source")
    _refused(capsys, [store + "/0", b, "-o", store + "/fused.zarr"], "first.ome.zarr", "source")
    assert not os.path.exists(store + "/fused.zarr") and not os.path.exists(store + "/fused.zarr.fusionmamba-partial")
    assert np.array_equal(np.asarray(open_image(store + "/0").data), before)
