"""Reader and writers, driven through napari the way a user saves and opens a layer."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

import napari
from napari_fusionmamba.napari.reader import napari_get_reader

PLUGIN = "napari-fusionmamba"


@pytest.fixture
def stack():
    rng = np.random.default_rng(0)
    return rng.integers(0, 4000, size=(3, 48, 64), dtype=np.uint16)


def test_ome_zarr_round_trip_keeps_data_scale_translate(make_napari_viewer, tmp_path, stack):
    viewer = make_napari_viewer()
    layer = viewer.add_image(stack, name="cells", scale=(2.0, 0.5, 0.25), translate=(0, 10, 20))
    path = tmp_path / "cells.ome.zarr"
    napari.save_layers(str(path), [layer], plugin=PLUGIN)
    assert (path / ".zattrs").exists()
    assert not list(tmp_path.glob(".*partial"))
    viewer.layers.remove(layer)

    [opened] = viewer.open(str(path), plugin=PLUGIN)
    assert isinstance(opened.data, da.Array)  # lazy
    np.testing.assert_array_equal(np.asarray(opened.data), stack)
    np.testing.assert_allclose(opened.scale, (2.0, 0.5, 0.25))
    np.testing.assert_allclose(opened.translate, (0, 10, 20))
    assert opened.name == "cells"


def test_ome_tiff_round_trip_keeps_data_scale_translate(make_napari_viewer, tmp_path, stack):
    import tifffile

    viewer = make_napari_viewer()
    layer = viewer.add_image(stack, name="cells", scale=(2.0, 0.5, 0.25), translate=(4, 10, 20))
    path = tmp_path / "cells.ome.tif"
    napari.save_layers(str(path), [layer], plugin=PLUGIN)
    with tifffile.TiffFile(path) as tif:  # each plane at its own depth, as OME readers expect
        planes = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]["Plane"]
    assert [plane["PositionZ"] for plane in planes] == [4.0, 6.0, 8.0]

    [opened] = viewer.open(str(path), plugin=PLUGIN)
    assert isinstance(opened.data, da.Array)
    np.testing.assert_array_equal(np.asarray(opened.data), stack)
    np.testing.assert_allclose(opened.scale, (2.0, 0.5, 0.25))
    np.testing.assert_allclose(opened.translate, (4, 10, 20))


def test_plain_tiff_opens_with_unit_scale(make_napari_viewer, tmp_path):
    import tifffile

    image = np.arange(40 * 30, dtype=np.float32).reshape(40, 30)
    tifffile.imwrite(tmp_path / "plain.tif", image)
    viewer = make_napari_viewer()
    [opened] = viewer.open(str(tmp_path / "plain.tif"), plugin=PLUGIN)
    np.testing.assert_array_equal(np.asarray(opened.data), image)
    np.testing.assert_allclose(opened.scale, (1, 1))


def test_multiscale_and_rgb_layers_round_trip_through_ome_zarr(make_napari_viewer, tmp_path):
    rng = np.random.default_rng(1)
    full = rng.random((64, 96), dtype=np.float32)
    viewer = make_napari_viewer()
    pyramid = viewer.add_image([full, full[::2, ::2]], name="pyramid", multiscale=True, scale=(0.3, 0.3))
    napari.save_layers(str(tmp_path / "pyramid.zarr"), [pyramid], plugin=PLUGIN)
    [opened] = viewer.open(str(tmp_path / "pyramid.zarr"), plugin=PLUGIN)
    assert opened.multiscale and len(opened.data) == 2
    np.testing.assert_array_equal(np.asarray(opened.data[1]), full[::2, ::2])
    np.testing.assert_allclose(opened.scale, (0.3, 0.3))

    colour = rng.integers(0, 255, size=(32, 40, 3), dtype=np.uint8)
    rgb = viewer.add_image(colour, name="colour", rgb=True, scale=(0.5, 0.5))
    napari.save_layers(str(tmp_path / "colour.ome.zarr"), [rgb], plugin=PLUGIN)
    [opened] = viewer.open(str(tmp_path / "colour.ome.zarr"), plugin=PLUGIN)
    assert opened.rgb
    np.testing.assert_array_equal(np.asarray(opened.data), colour)
    np.testing.assert_allclose(opened.scale, (0.5, 0.5))


def test_failed_save_leaves_nothing_behind(tmp_path):
    from napari_fusionmamba.napari.writer import write_ome_tiff, write_ome_zarr

    def explode(block):
        raise OSError("disk full")

    data = da.zeros((4, 64, 64), chunks=(1, 64, 64), dtype=np.uint8).map_blocks(explode, dtype=np.uint8)
    for writer, name in ((write_ome_zarr, "x.ome.zarr"), (write_ome_tiff, "x.ome.tif")):
        with pytest.raises(OSError, match="disk full"):
            writer(str(tmp_path / name), data, {"name": "x"})
    assert list(tmp_path.iterdir()) == []


def test_reader_declines_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    assert napari_get_reader(str(tmp_path / "notes.txt")) is None
    assert napari_get_reader(str(tmp_path / "empty")) is None
    assert napari_get_reader(str(tmp_path / "missing.tif")) is None


def test_a_two_channel_ome_tiff_opens_as_named_coloured_layers_ready_to_fuse(make_napari_viewer, tmp_path, qtbot):
    """Fluorescence and phase contrast as two channels of one OME-TIFF: one layer per channel,
    named and coloured as the file says (also when ``channel_axis=None`` is passed, which napari
    adds to the reader's options), and the Fuse widget's pickers take them as A and B."""
    import tifffile

    from conftest import real_looking_pair
    from napari_fusionmamba.napari.widgets.fuse import FuseWidget

    gfp, phase = real_looking_pair(64, 64)
    meta = {
        "axes": "CYX",
        "PhysicalSizeX": 0.5,
        "PhysicalSizeY": 0.5,
        "Channel": {"Name": ["GFP", "phase"], "Color": [0x00FF00FF, -1]},  # RGBA: green, white
    }
    path = tmp_path / "well.ome.tif"
    tifffile.imwrite(path, np.stack([gfp, phase]), metadata=meta)
    viewer = make_napari_viewer()
    for options in ({}, {"channel_axis": None}):
        viewer.layers.clear()
        layers = viewer.open(str(path), plugin=PLUGIN, **options)
        assert [layer.name for layer in layers] == ["well [GFP]", "well [phase]"]
        assert [layer.colormap.name for layer in layers] == ["#00ff00", "gray"]
        np.testing.assert_allclose(layers[0].colormap.colors[-1], (0, 1, 0, 1))
        for layer, data in zip(layers, (gfp, phase)):
            np.testing.assert_array_equal(np.asarray(layer.data), data)
            np.testing.assert_allclose(layer.scale, (0.5, 0.5))
    widget = FuseWidget(viewer)
    qtbot.addWidget(widget.native)
    assert (widget.a.value.name, widget.b.value.name) == ("well [GFP]", "well [phase]")


def test_options_given_to_open_apply_to_every_channel(make_napari_viewer, tmp_path):
    """What a script passes to ``viewer.open`` wins over the file's metadata, channel by channel."""
    import tifffile

    data = np.random.default_rng(2).integers(0, 4000, (2, 32, 48), dtype=np.uint16)
    meta = {"axes": "CYX", "Channel": {"Name": ["MAP2", "phase"], "Color": [0xFF00FFFF, -1]}}
    tifffile.imwrite(tmp_path / "two.ome.tif", data, metadata=meta)
    viewer = make_napari_viewer()
    options = dict(colormap="green", contrast_limits=(0, 1000), opacity=0.5, blending="additive", scale=(2, 2))
    layers = viewer.open(str(tmp_path / "two.ome.tif"), plugin=PLUGIN, **options)
    assert [layer.name for layer in layers] == ["two [MAP2]", "two [phase]"]
    for layer, plane in zip(layers, data):
        assert layer.colormap.name == "green" and tuple(layer.contrast_limits) == (0, 1000)
        assert layer.opacity == 0.5 and layer.blending == "additive"
        np.testing.assert_allclose(layer.scale, (2, 2))
        np.testing.assert_array_equal(np.asarray(layer.data), plane)
    named = viewer.open(str(tmp_path / "two.ome.tif"), plugin=PLUGIN, name="mine")
    assert [layer.name for layer in named] == ["mine", "mine [1]"]  # napari keeps names unique


def test_ome_zarr_omero_channels_set_names_colours_and_contrast(make_napari_viewer, tmp_path, stack):
    import zarr

    path = tmp_path / "cells.ome.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("0", data=stack[:2], chunks=(1, 48, 64))
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 0.3, 0.3]}]}],
        }
    ]
    group.attrs["omero"] = {
        "channels": [
            {"label": "MAP2", "color": "FF00FF", "window": {"start": 100, "end": 3000, "min": 0, "max": 4000}},
            {"label": "phase", "color": "FFFFFF", "window": {"start": 50, "end": 3900, "min": 0, "max": 4000}},
        ]
    }
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin=PLUGIN)
    assert [layer.name for layer in layers] == ["cells [MAP2]", "cells [phase]"]
    assert [layer.colormap.name for layer in layers] == ["#ff00ff", "gray"]
    assert [tuple(layer.contrast_limits) for layer in layers] == [(100, 3000), (50, 3900)]
    np.testing.assert_allclose(layers[1].scale, (0.3, 0.3))


def test_three_unnamed_ome_tiff_channels_open_as_colour_and_named_ones_as_layers(make_napari_viewer, tmp_path):
    import tifffile

    colour = np.random.default_rng(1).integers(0, 255, (3, 16, 16), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.ome.tif", colour, metadata={"axes": "CYX"})
    names = {"Name": ["DAPI", "GFP", "phase"]}
    tifffile.imwrite(tmp_path / "three.ome.tif", colour, metadata={"axes": "CYX", "Channel": names})
    viewer = make_napari_viewer()
    [rgb] = viewer.open(str(tmp_path / "rgb.ome.tif"), plugin=PLUGIN)
    assert rgb.rgb and rgb.data.shape == (16, 16, 3)
    layers = viewer.open(str(tmp_path / "three.ome.tif"), plugin=PLUGIN)
    assert [layer.name for layer in layers] == ["three [DAPI]", "three [GFP]", "three [phase]"]
