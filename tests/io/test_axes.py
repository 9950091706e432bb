"""One axis rule for arrays without metadata (io.axes): the library, the CLI, the fuse widget and
the napari writer all name a 4-D array T, Z, Y, X."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_fusionmamba.errors import InputError
from napari_fusionmamba.io import guess_axes, open_image


@pytest.mark.parametrize(
    ("shape", "colour", "axes"),
    [
        ((16, 16), None, "YX"),
        ((5, 16, 16), None, "ZYX"),
        ((2, 5, 16, 16), None, "TZYX"),
        ((2, 3, 5, 16, 16), None, "TCZYX"),
        ((16, 16, 3), None, "YXS"),
        ((2, 5, 16, 16, 4), None, "TZYXS"),
        ((5, 16, 3), False, "ZYX"),  # the caller (napari's rgb) knows better than the shape
        ((2, 16, 16, 3), True, "ZYXS"),
    ],
)
def test_guess_axes(shape, colour, axes):
    assert guess_axes(shape, colour) == axes


def test_guess_axes_refuses_what_it_cannot_name():
    with pytest.raises(InputError, match="as image planes"):
        guess_axes((16,))
    with pytest.raises(InputError, match=r"at most T, C, Z, Y, X"):
        guess_axes((2, 2, 2, 2, 16, 16))


def test_a_plain_4d_tiff_is_a_time_series_of_stacks(tmp_path):
    """tifffile names unknown axes Q; they get the one rule too."""
    tifffile.imwrite(tmp_path / "gray.tif", np.zeros((2, 5, 16, 16), np.uint8), photometric="minisblack")
    assert open_image(tmp_path / "gray.tif").axes == "TZYX"
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((2, 5, 16, 16, 3), np.uint8), photometric="rgb")
    assert open_image(tmp_path / "rgb.tif").axes == "TZYXS"


def test_the_napari_writer_names_a_4d_layer_t_z_y_x(tmp_path):
    import zarr

    from napari_fusionmamba.napari.writer import write_ome_zarr

    write_ome_zarr(str(tmp_path / "s.ome.zarr"), np.zeros((2, 3, 16, 16), np.float32), {"name": "s"})
    axes = zarr.open_group(str(tmp_path / "s.ome.zarr"), mode="r").attrs["multiscales"][0]["axes"]
    assert [a["name"] for a in axes] == ["t", "z", "y", "x"]
    assert open_image(tmp_path / "s.ome.zarr").axes == "TZYX"


def test_the_fuse_widget_keeps_t_a_time_axis():
    from napari_fusionmamba.napari.widgets.fuse import _as_image

    image = _as_image(np.zeros((2, 3, 16, 16), np.float32), "stack", (1, 1, 1, 1), (0, 0, 0, 0), rgb=False)
    assert image.axes == "TZYX"
