"""Reading every supported kind of file lazily, with its axes and pixel size, and writing."""

from __future__ import annotations

import dask.array as da
import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import zarr

from napari_fusionmamba.errors import ImageReadError
from napari_fusionmamba.io import OutputLayout, create_ome_zarr, open_image, write_block, zarr_to_tiff


def test_ome_tiff_is_lazy_and_keeps_pixel_size(tmp_path, pair):
    a, _ = pair
    path = tmp_path / "a.ome.tif"
    tifffile.imwrite(path, a, tile=(64, 64), metadata={"axes": "YX", "PhysicalSizeX": 0.65, "PhysicalSizeY": 0.65})
    image = open_image(path)
    assert isinstance(image.data, da.Array) and image.data.chunksize == (64, 64)  # read tile by tile
    assert image.axes == "YX" and image.unit == "micrometer"
    assert image.pixel_size == pytest.approx((0.65, 0.65))
    assert np.array_equal(image.data[10:70, 20:90].compute(), a[10:70, 20:90])


def test_imagej_stack_keeps_z_spacing_and_drops_single_axes(tmp_path):
    stack = np.arange(3 * 40 * 50, dtype=np.uint16).reshape(3, 1, 40, 50)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(
        path, stack, imagej=True, resolution=(1 / 0.2, 1 / 0.2), metadata={"axes": "ZCYX", "spacing": 1.5, "unit": "um"}
    )
    image = open_image(path)
    assert image.axes == "ZYX" and image.data.shape == (3, 40, 50)
    assert image.pixel_size == pytest.approx((1.5, 0.2, 0.2))
    assert np.array_equal(image.data.compute(), stack[:, 0])


def test_rgb_tiff_and_png_are_colour(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "c.tif", rgb, photometric="rgb")
    iio.imwrite(tmp_path / "c.png", rgb)
    for name in ("c.tif", "c.png"):
        image = open_image(tmp_path / name)
        assert image.colour and image.axes == "YXS" and image.pixel_size is None
        assert np.array_equal(np.asarray(image.data), rgb)


def test_planar_rgb_tiff_has_its_samples_last(tmp_path):
    rgb = np.random.default_rng(5).integers(0, 255, (3, 40, 30), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "planar.tif", rgb, photometric="rgb", planarconfig="separate")
    image = open_image(tmp_path / "planar.tif")
    assert image.axes == "YXS" and np.array_equal(image.data.compute(), np.moveaxis(rgb, 0, -1))


def test_tiff_pyramid_exposes_its_levels(tmp_path):
    base = np.random.default_rng(1).integers(0, 1000, (128, 96), dtype=np.uint16)
    path = tmp_path / "pyramid.ome.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(base, subifds=1, tile=(64, 64), metadata={"axes": "YX"})
        tif.write(base[::2, ::2], subfiletype=1, tile=(64, 64))
    image = open_image(path)
    assert [level.shape for level in image.levels] == [(128, 96), (64, 48)]
    assert np.array_equal(image.levels[1].compute(), base[::2, ::2])


def test_ome_zarr_levels_axes_and_scale(tmp_path):
    path = str(tmp_path / "img.ome.zarr")
    group = zarr.open_group(path, mode="w", zarr_format=2)
    base = np.random.default_rng(2).random((2, 64, 48)).astype(np.float32)
    group.create_array("0", data=base, chunks=(1, 32, 32))
    group.create_array("1", data=base[:, ::2, ::2], chunks=(1, 32, 32))
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [
                {"name": "z", "type": "space", "unit": "micrometer"},
                {"name": "y", "type": "space", "unit": "micrometer"},
                {"name": "x", "type": "space", "unit": "micrometer"},
            ],
            "datasets": [
                {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 0.5, 0.5]}]},
                {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 1.0, 1.0]}]},
            ],
        }
    ]
    image = open_image(path)
    assert image.axes == "ZYX" and image.pixel_size == (2.0, 0.5, 0.5) and image.unit == "micrometer"
    assert len(image.levels) == 2 and image.levels[1].shape == (2, 32, 24)
    # One array of the group, named as PATH.zarr/ARRAY, keeps its own scale.
    level = open_image(path + "/1")
    assert level.pixel_size == (2.0, 1.0, 1.0) and np.array_equal(level.data.compute(), base[:, ::2, ::2])


def test_plain_zarr_array_and_group_without_metadata(tmp_path):
    path = str(tmp_path / "plain.zarr")
    group = zarr.open_group(path, mode="w")
    group.create_array("raw", data=np.ones((20, 30), np.uint16))
    assert open_image(path + "/raw").axes == "YX"
    with pytest.raises(ImageReadError, match=r"plain\.zarr.*raw"):
        open_image(path)


@pytest.mark.parametrize("name,content", [("bad.tif", b"not a tiff at all"), ("bad.png", b"\x89PNG broken")])
def test_corrupt_files_are_named(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=name):
        open_image(path)


def test_missing_and_unsupported_paths_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.tif"):
        open_image(tmp_path / "nothere.tif")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ImageReadError, match="notes.txt: unsupported format"):
        open_image(tmp_path / "notes.txt")


def write_store(store: str, layout: OutputLayout, data: np.ndarray) -> None:
    """An OME-Zarr output written block by block, ``layout.chunk`` at a time, as the engine does."""
    create_ome_zarr(store, layout)
    step = layout.chunk
    height, width = layout.plane_shape
    for plane in np.ndindex(*layout.lead):
        for y in range(0, height, step):
            for x in range(0, width, step):
                write_block(store, layout, plane, y, x, data[plane][y : y + step, x : x + step])


def test_colour_output_round_trips_through_ome_zarr_and_ome_tiff(tmp_path):
    rgb = np.random.default_rng(3).random((2, 70, 90, 3)).astype(np.float32)
    layout = OutputLayout(rgb.shape, "ZYXS", "<f4", 32, pixel_size=(3.0, 0.4, 0.4), unit="micrometer")
    store = str(tmp_path / "out.ome.zarr")
    write_store(store, layout, rgb)
    stored = open_image(store)
    assert stored.axes == "CZYX"  # OME-Zarr 0.4 keeps colour as a channel axis before space
    assert np.array_equal(np.moveaxis(stored.data.compute(), 0, -1), rgb)
    tiff = str(tmp_path / "out.tif")
    zarr_to_tiff(store, layout, tiff)
    back = open_image(tiff)
    assert back.axes == "ZYXS" and back.pixel_size == pytest.approx((3.0, 0.4, 0.4))
    assert np.array_equal(back.data.compute(), rgb)


def test_pyramid_levels_are_2x2_means_with_doubled_scale(tmp_path):
    from napari_fusionmamba.io import add_pyramid

    data = np.random.default_rng(4).integers(0, 60000, (2, 1100, 700), dtype=np.uint16)
    layout = OutputLayout(data.shape, "ZYX", "<u2", 256, pixel_size=(2.0, 0.5, 0.5), unit="micrometer")
    store = str(tmp_path / "big.ome.zarr")
    write_store(store, layout, data)
    assert add_pyramid(store, layout, smallest=256) == 3
    image = open_image(store)
    assert [level.shape for level in image.levels] == [(2, 1100, 700), (2, 550, 350), (2, 275, 175), (2, 138, 88)]
    expected = np.round(data[1].reshape(550, 2, 350, 2).mean(axis=(1, 3))).astype(np.uint16)
    assert np.array_equal(image.levels[1][1].compute(), expected)
    last = open_image(store + "/3")
    assert last.pixel_size == (2.0, 4.0, 4.0)
    assert np.isclose(last.data[0, -1, -1].compute(), image.levels[2][0, -1, -1].compute(), atol=1)  # edge kept


def test_one_channel_of_an_ome_tiff_keeps_its_other_axes_and_calibration(tmp_path):
    import tifffile

    from napari_fusionmamba.errors import InputError
    from napari_fusionmamba.io import Channel, open_image

    data = np.arange(2 * 3 * 16 * 20, dtype=np.uint16).reshape(3, 2, 16, 20)  # Z, C, Y, X
    meta = {
        "axes": "ZCYX",
        "PhysicalSizeX": 0.25,
        "PhysicalSizeY": 0.25,
        "PhysicalSizeZ": 2.0,
        "Channel": {"Name": ["GFP", "phase"], "Color": [0x00FF00FF, -1]},
    }
    tifffile.imwrite(tmp_path / "stack.ome.tif", data, metadata=meta)
    image = open_image(tmp_path / "stack.ome.tif")
    assert image.axes == "ZCYX" and image.channel_count == 2
    assert image.channels == [Channel("GFP", (0.0, 1.0, 0.0)), Channel("phase", (1.0, 1.0, 1.0))]
    phase = image.channel(1)
    assert phase.axes == "ZYX" and phase.pixel_size == pytest.approx((2.0, 0.25, 0.25))
    np.testing.assert_array_equal(phase.data.compute(), data[:, 1])
    assert phase.channels == [Channel("phase", (1.0, 1.0, 1.0))]
    with pytest.raises(InputError, match=r"stack.ome.tif: no channel 2; it has 2 \(0 to 1\)"):
        image.channel(2)
    with pytest.raises(InputError, match="has no channel axis"):
        phase.channel(0)
