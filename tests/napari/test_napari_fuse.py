"""The "Fuse layers" widget in a real (headless) viewer, driven the way a user drives it."""

from __future__ import annotations

import re
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pytest

from conftest import real_looking_pair
from napari_fusionmamba.napari.widgets import fuse as fuse_widget
from napari_fusionmamba.napari.widgets.fuse import FuseWidget

SETTINGS = dict(tile=64, overlap=16, batch=2)


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """A fixed tiny network registered as a user model, so the widget and the test use the same weights."""
    import torch

    from napari_fusionmamba.model import build_model
    from napari_fusionmamba.registry import register_model, save_checkpoint

    torch.manual_seed(0)
    path = save_checkpoint(tmp_path / "lab.safetensors", build_model("tiny"))
    register_model(path, "lab")
    return path


def _widget(viewer, qtbot, a, b, **values):
    widget = FuseWidget(viewer)
    qtbot.addWidget(widget.native)
    widget.a.value, widget.b.value = viewer.layers[a], viewer.layers[b]
    for name, value in {**SETTINGS, **values}.items():
        getattr(widget, name).value = value
    return widget


def _shown(child, widget) -> bool:
    return child.native.isVisibleTo(widget.native)


def _alive(qt_widget) -> bool:
    from qtpy import sip

    return not sip.isdeleted(qt_widget)


def _run(widget, qtbot, timeout=120_000):
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=timeout)


@pytest.mark.slow
def test_sample_pair_fused_in_the_widget_equals_the_library(make_napari_viewer, qtbot, tiny_checkpoint, notes):
    from napari_fusionmamba.engine import fuse
    from napari_fusionmamba.io.colour import colormap_tint

    viewer = make_napari_viewer()
    viewer.open_sample("napari-fusionmamba", "gfp_phase")
    viewer.layers["GFP"].scale = viewer.layers["phase"].scale = (0.5, 0.5)
    viewer.layers["GFP"].translate = viewer.layers["phase"].translate = (3, 4)
    network = dict(tile=192, overlap=64, batch=2)  # 2 x 2 tiles: few, as the network is slow on a CPU
    widget = _widget(viewer, qtbot, "GFP", "phase", model="model:lab", device="cpu", **network)
    assert "lab (your model)" in [widget.model.native.itemText(i) for i in range(widget.model.native.count())]
    _run(widget, qtbot)

    assert [layer.name for layer in viewer.layers] == ["GFP", "phase", "fused(GFP, phase) · lab"], notes
    result = viewer.layers["fused(GFP, phase) · lab"]
    gfp = viewer.layers["GFP"]  # shown in green: the result is coloured alike
    tint = colormap_tint(gfp.colormap.colors, gfp.colormap.controls, gfp.contrast_limits)
    expected = fuse(
        gfp.data,
        viewer.layers["phase"].data,
        model=str(tiny_checkpoint),
        device="cpu",
        tint=tint,
        **network,
    )
    np.testing.assert_allclose(np.asarray(result.data), expected, atol=1e-6)
    assert result.data.dtype == np.float32 and result.data.shape == (320, 320, 3)
    np.testing.assert_allclose(result.scale, (0.5, 0.5))
    np.testing.assert_allclose(result.translate, (3, 4))
    assert not _shown(widget.progress, widget) and widget.run_button.text == "Run"


def test_model_picker_lists_shipped_and_user_models_without_building_networks(
    make_napari_viewer, qtbot, tiny_checkpoint, monkeypatch
):
    from napari_fusionmamba.model import network

    def refuse(*args, **kwargs):
        raise AssertionError("opening the widget must not build a network")

    monkeypatch.setattr(network.FusionMamba, "__init__", refuse)
    viewer = make_napari_viewer()
    started = time.perf_counter()
    widget = FuseWidget(viewer)
    qtbot.addWidget(widget.native)
    assert time.perf_counter() - started < 5
    values = [value for value in widget.model.choices]
    assert {"model:tiny", "model:paper", "model:lab", "method:average", fuse_widget.FROM_FILE} <= set(values)
    widget.model.value = fuse_widget.FROM_FILE
    assert _shown(widget.checkpoint, widget)
    widget.model.value = "model:tiny"
    assert not _shown(widget.checkpoint, widget)


def test_a_model_registered_after_the_widget_opened_appears_when_the_list_opens(make_napari_viewer, qtbot, tmp_path):
    from qtpy.QtCore import Qt

    from napari_fusionmamba.model import build_model
    from napari_fusionmamba.registry import register_model, save_checkpoint

    widget = FuseWidget(make_napari_viewer())
    qtbot.addWidget(widget.native)
    assert "model:later" not in widget.model.choices
    register_model(save_checkpoint(tmp_path / "later.safetensors", build_model("tiny")), "later")
    qtbot.keyClick(widget.model.native, Qt.Key_Down)  # the user opens / steps through the list
    assert "model:later" in widget.model.choices


def test_devices_present_are_the_only_ones_enabled_and_backend_is_shown(make_napari_viewer, qtbot):
    from napari_fusionmamba.model.devices import available_devices
    from napari_fusionmamba.model.scan import resolve_backend

    viewer = make_napari_viewer()
    widget = FuseWidget(viewer)
    qtbot.addWidget(widget.native)
    items = widget.device.native.model()
    enabled = {name for row, name in enumerate(fuse_widget.DEVICES) if items.item(row).isEnabled()}
    assert enabled == {"auto", *available_devices()}
    widget.device.value = "cpu"
    assert widget.backend.value == resolve_backend("auto", "cpu")
    for widget_field in widget:
        assert widget_field.tooltip, f"{widget_field.label} has no tooltip"


def test_cancel_mid_run_leaves_no_layer_and_the_widget_runs_again(make_napari_viewer, qtbot, monkeypatch, notes):
    from napari_fusionmamba.model import network

    forward = network.FusionMamba.forward
    calls = []

    def slow_forward(self, a, b):  # a slow device: each batch takes a while, so Cancel lands mid-run
        calls.append(a.shape[0])
        time.sleep(0.05)
        return forward(self, a, b)

    monkeypatch.setattr(network.FusionMamba, "forward", slow_forward)
    rng = np.random.default_rng(0)
    viewer = make_napari_viewer()
    viewer.add_image(rng.random((256, 256), dtype=np.float32), name="A")
    viewer.add_image(rng.random((256, 256), dtype=np.float32), name="B")
    widget = _widget(viewer, qtbot, "A", "B", model="model:tiny", device="cpu", tile=64, overlap=32, batch=1)
    seen = []
    widget.progress.changed.connect(lambda value: seen.append((value, widget.progress.max)))

    widget.run_button.clicked.emit()
    assert widget.run_button.text == "Cancel" and _shown(widget.progress, widget)
    qtbot.waitUntil(lambda: any(value >= 2 for value, _ in seen), timeout=60_000)
    widget.run_button.clicked.emit()  # the same button now cancels
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=60_000)

    total = seen[-1][1]
    assert total == 49  # 7 x 7 tiles of 64 with stride 32
    assert sum(calls) < total, "the run finished before the cancel landed"
    assert [layer.name for layer in viewer.layers] == ["A", "B"]
    assert any("cancelled" in message for _, message in notes)
    assert widget.run_button.text == "Run" and widget.run_button.enabled

    monkeypatch.setattr(network.FusionMamba, "forward", forward)
    widget.tile.value, widget.overlap.value = 128, 32
    _run(widget, qtbot)
    assert [layer.name for layer in viewer.layers] == ["A", "B", "fused(A, B) · tiny"]


@pytest.mark.parametrize("problem", ["shape", "scale", "empty", "checkpoint"])
def test_bad_layers_give_a_notification_naming_them_and_no_layer(make_napari_viewer, qtbot, notes, problem):
    viewer = make_napari_viewer()
    widget = FuseWidget(viewer)
    qtbot.addWidget(widget.native)
    if problem != "empty":
        viewer.add_image(np.zeros((64, 64), np.float32), name="cells")
        other = (64, 80) if problem == "shape" else (64, 64)
        viewer.add_image(np.zeros(other, np.float32), name="nuclei", scale=(2, 2) if problem == "scale" else (1, 1))
        widget.a.value, widget.b.value = viewer.layers["cells"], viewer.layers["nuclei"]
    widget.model.value = "method:average"
    if problem == "checkpoint":
        widget.model.value = fuse_widget.FROM_FILE
        widget.checkpoint.value = "/no/such/model.safetensors"
    count = len(viewer.layers)
    widget.run_button.clicked.emit()

    assert not widget.runner.running
    assert len(viewer.layers) == count
    errors = [message for severity, message in notes if severity == "error"]
    assert len(errors) == 1
    if problem == "empty":
        assert "choose two image layers" in errors[0]
    elif problem == "checkpoint":
        assert "/no/such/model.safetensors" in errors[0] and "not found" in errors[0]
    else:
        assert "'cells'" in errors[0] and "'nuclei'" in errors[0]
        assert ("shape" if problem == "shape" else "pixel sizes") in errors[0]


def test_layer_pickers_follow_the_layer_list(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    listeners = len(viewer.layers.events.inserted.callbacks)
    widget = FuseWidget(viewer)
    assert widget.a.choices == ()
    layer = viewer.add_image(np.zeros((8, 8)), name="first")
    viewer.add_labels(np.zeros((8, 8), int), name="not an image")
    assert widget.a.choices == (layer,) and widget.b.choices == (layer,)
    layer.name = "renamed"
    assert [widget.a.native.itemText(i) for i in range(widget.a.native.count())] == ["renamed"]
    viewer.layers.remove(layer)
    assert widget.a.choices == ()

    widget.native.close()
    widget.native.deleteLater()
    qtbot.waitUntil(lambda: not _alive(widget.a.native), timeout=5000)
    assert len(viewer.layers.events.inserted.callbacks) == listeners  # a closed widget stops listening


def test_big_zarr_pair_goes_to_a_zarr_output_shown_as_a_lazy_layer(make_napari_viewer, qtbot, tmp_path, notes):
    import zarr

    from napari_fusionmamba.engine import fuse

    rng = np.random.default_rng(3)
    sources = []
    for name in ("a", "b"):
        array = zarr.create_array(
            str(tmp_path / f"{name}.zarr"), shape=(2, 192, 160), chunks=(1, 64, 64), dtype="uint16"
        )
        array[:] = rng.integers(0, 60000, size=array.shape, dtype=np.uint16)
        sources.append(da.from_zarr(str(tmp_path / f"{name}.zarr")))
    viewer = make_napari_viewer()
    viewer.add_image(sources[0], name="big A", scale=(3, 0.5, 0.5), translate=(6, 10, -2))
    viewer.add_image(sources[1], name="big B", scale=(3, 0.5, 0.5), translate=(6, 10, -2))
    widget = _widget(viewer, qtbot, "big A", "big B", model="method:average")
    widget.in_memory_limit = 100_000  # bytes: far below this pair's fused size

    widget.run_button.clicked.emit()  # in memory: refused, it would not fit
    assert len(viewer.layers) == 2
    assert any("in-memory limit" in message for severity, message in notes if severity == "error")

    widget.output.value = fuse_widget.TO_ZARR
    widget.out_path.value = tmp_path / "fused.zarr"
    added_while_running = []
    viewer.layers.events.inserted.connect(lambda event: added_while_running.append(widget.runner.running))
    _run(widget, qtbot)
    assert added_while_running == [True]  # shown as soon as the store exists, filled as chunks land
    result = viewer.layers["fused(big A, big B) · average"]
    assert isinstance(result.data, da.Array)  # lazy, read from the zarr on disk
    assert (tmp_path / "fused.zarr").is_dir()
    np.testing.assert_allclose(result.scale, (3, 0.5, 0.5))
    expected = fuse(np.asarray(sources[0]), np.asarray(sources[1]), method="average", **SETTINGS)
    np.testing.assert_allclose(np.asarray(result.data), expected, atol=1e-6)

    [reopened] = viewer.open(str(tmp_path / "fused.zarr"), plugin="napari-fusionmamba")
    np.testing.assert_array_equal(np.asarray(reopened.data), np.asarray(result.data))
    np.testing.assert_allclose(reopened.scale, (3, 0.5, 0.5))  # pixel size and place travel with the file
    np.testing.assert_allclose(reopened.translate, (6, 10, -2))


def test_stack_whole_or_current_plane(make_napari_viewer, qtbot):
    from napari_fusionmamba.engine import fuse

    rng = np.random.default_rng(4)
    a = rng.random((3, 64, 64), dtype=np.float32)
    b = rng.random((3, 64, 64), dtype=np.float32)
    viewer = make_napari_viewer()
    viewer.add_image(a, name="A", scale=(2, 1, 1), translate=(10, 0, 0))
    viewer.add_image(b, name="B", scale=(2, 1, 1), translate=(10, 0, 0))
    widget = _widget(viewer, qtbot, "A", "B", model="method:max", stack=fuse_widget.PLANE)
    viewer.dims.set_current_step(0, 2)
    _run(widget, qtbot)
    plane = viewer.layers[-1]
    assert plane.data.shape == (1, 64, 64)
    np.testing.assert_allclose(plane.translate, (14, 0, 0))  # plane 2 of scale 2 from 10
    np.testing.assert_allclose(plane.data[0], fuse(a[2], b[2], method="max", **SETTINGS), atol=1e-6)

    widget.stack.value = fuse_widget.WHOLE
    _run(widget, qtbot)
    whole = viewer.layers[-1]
    assert whole.data.shape == (3, 64, 64)
    np.testing.assert_allclose(whole.translate, (10, 0, 0))
    np.testing.assert_allclose(whole.data, fuse(a, b, method="max", **SETTINGS), atol=1e-6)


def test_parameters_persist_between_sessions(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    first = FuseWidget(viewer)
    qtbot.addWidget(first.native)
    first.tile.value, first.overlap.value, first.batch.value = 128, 24, 3
    first.model.value = "method:max"
    first.stack.value = fuse_widget.PLANE
    assert (tmp_path / "settings" / "fuse.json").is_file()

    second = FuseWidget(viewer)
    qtbot.addWidget(second.native)
    assert (second.tile.value, second.overlap.value, second.batch.value) == (128, 24, 3)
    assert second.model.value == "method:max" and second.stack.value == fuse_widget.PLANE


def test_colour_fluorescence_layer_gives_a_colour_result(make_napari_viewer, qtbot):
    from napari_fusionmamba.engine import fuse

    rng = np.random.default_rng(5)
    colour = rng.integers(0, 255, size=(64, 80, 3), dtype=np.uint8)
    gray = rng.integers(0, 255, size=(64, 80), dtype=np.uint8)
    viewer = make_napari_viewer()
    viewer.add_image(colour, name="PET", rgb=True)
    viewer.add_image(gray, name="MRI")
    widget = _widget(viewer, qtbot, "PET", "MRI", model="method:average")
    _run(widget, qtbot)
    result = viewer.layers["fused(PET, MRI) · average"]
    assert result.rgb and result.data.shape == (64, 80, 3)
    np.testing.assert_allclose(result.data, fuse(colour, gray, method="average", **SETTINGS), atol=1e-6)


def test_a_failed_run_is_a_notification_and_the_widget_runs_again(make_napari_viewer, qtbot, monkeypatch, notes):
    from napari_fusionmamba.quality import baselines

    def broken(a, b):
        raise RuntimeError("the method broke")

    monkeypatch.setitem(baselines.BASELINES, "broken", broken)  # a method of its own: the engine caches methods
    viewer = make_napari_viewer()
    viewer.add_image(np.ones((64, 64), np.float32), name="A")
    viewer.add_image(np.zeros((64, 64), np.float32), name="B")
    widget = _widget(viewer, qtbot, "A", "B", model="method:broken")
    _run(widget, qtbot)
    assert len(viewer.layers) == 2
    assert any(severity == "error" and "the method broke" in message for severity, message in notes)
    assert any("unexpected RuntimeError" in message and "a bug" in message for _, message in notes)

    widget.model.value = "method:max"
    _run(widget, qtbot)
    assert [layer.name for layer in viewer.layers] == ["A", "B", "fused(A, B) · max"]


def test_a_device_saved_on_another_machine_falls_back_to_auto(make_napari_viewer, qtbot, tmp_path):
    from napari_fusionmamba.model.devices import available_devices
    from napari_fusionmamba.napari.widgets._common import save_settings

    missing = [name for name in ("cuda", "mps") if name not in available_devices()]
    if not missing:
        pytest.skip("every device is present here")
    save_settings("fuse", {"device": missing[0], "tile": 128})
    widget = FuseWidget(make_napari_viewer())
    qtbot.addWidget(widget.native)
    assert widget.device.value == "auto" and widget.tile.value == 128


def test_cancelled_zarr_run_removes_its_layer_and_resumes_next_time(
    make_napari_viewer, qtbot, tmp_path, monkeypatch, notes
):
    from napari_fusionmamba.quality import baselines

    slow = {"on": True}

    def slow_average(a, b):  # a slow method: each tile takes a while while ``slow["on"]``
        if slow["on"]:
            time.sleep(0.3)
        return baselines.average(a, b)

    monkeypatch.setitem(baselines.BASELINES, "slow", slow_average)
    rng = np.random.default_rng(6)
    viewer = make_napari_viewer()
    # 24 planes of one tile each: many more chunks than worker threads, so Cancel lands mid-run
    viewer.add_image(rng.random((24, 64, 64), dtype=np.float32), name="A")
    viewer.add_image(rng.random((24, 64, 64), dtype=np.float32), name="B")
    widget = _widget(viewer, qtbot, "A", "B", model="method:slow", output=fuse_widget.TO_ZARR)
    out = tmp_path / "fused.zarr"
    widget.out_path.value = out
    seen = []
    widget.progress.changed.connect(seen.append)
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: any(value >= 1 for value in seen) and len(viewer.layers) == 3, timeout=60_000)
    widget.run_button.clicked.emit()  # cancel
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=60_000)
    assert [layer.name for layer in viewer.layers] == ["A", "B"]  # the filling layer is gone
    assert not out.exists() and Path(f"{out}.fusionmamba-partial").is_dir()
    done_before = max(seen)
    assert done_before < 24
    assert any("cancelled" in message for _, message in notes)

    slow["on"] = False
    _run(widget, qtbot)  # the same run again resumes from the finished chunks
    assert [layer.name for layer in viewer.layers] == ["A", "B", "fused(A, B) · slow"]
    assert out.is_dir() and not Path(f"{out}.fusionmamba-partial").exists()
    assert viewer.layers["fused(A, B) · slow"].data.shape == (24, 64, 64)
    [resumed] = [int(m.group(1)) for _, message in notes if (m := re.search(r"(\d+) already done", message))]
    assert done_before <= resumed < 24  # the chunks finished before the cancel (and those in flight) were kept


def test_the_engine_keeps_out_of_dask_callbacks_a_viewer_has_active(tmp_path):
    """napari turns on dask's process-wide cache while it slices dask layers; a fusion running in
    a worker at that moment must neither feed it its tasks nor take it over (dask.cache then
    fails with a KeyError on the worker's tasks, intermittently)."""
    from dask.callbacks import Callback

    from napari_fusionmamba.engine import fuse, fuse_files

    seen = []
    rng = np.random.default_rng(7)
    a = da.from_array(rng.random((2, 96, 96), dtype=np.float32), chunks=(1, 48, 48))
    b = da.from_array(rng.random((2, 96, 96), dtype=np.float32), chunks=(1, 48, 48))
    with Callback(pretask=lambda key, dsk, state: seen.append(key)):  # stands in for the viewer's cache
        fuse(a, b, method="average", **SETTINGS)
        fuse_files(a, b, str(tmp_path / "out.zarr"), method="average", **SETTINGS)
    assert seen == []


def test_pickers_default_to_two_fitting_layers_and_run_refuses_one_layer_twice(make_napari_viewer, qtbot, notes):
    viewer = make_napari_viewer()
    widget = FuseWidget(viewer)
    qtbot.addWidget(widget.native)
    viewer.open_sample("napari-fusionmamba", "neurons")  # phase (Z stack, gray), MAP2 (magenta), DAPI (blue)
    assert (widget.a.value.name, widget.b.value.name) == ("MAP2", "phase")
    viewer.add_image(np.zeros((8, 8), np.float32), name="other size")
    assert (widget.a.value.name, widget.b.value.name) == ("MAP2", "phase")  # a user's pair is kept

    other = FuseWidget(viewer)  # opened after the layers: the same default
    qtbot.addWidget(other.native)
    assert (other.a.value.name, other.b.value.name) == ("MAP2", "phase")

    widget.b.value = viewer.layers["MAP2"]
    widget.model.value = "method:average"
    widget.run_button.clicked.emit()
    assert not widget.runner.running and len(viewer.layers) == 4
    errors = [message for severity, message in notes if severity == "error"]
    assert errors == ["Fuse: layer 'MAP2' is chosen as both A and B; choose two different layers."]


def test_an_image_is_fused_with_every_plane_of_a_stack_or_the_one_shown(make_napari_viewer, qtbot):
    """The demo: the MAP2 projection with each focal plane of the phase stack, one progress bar
    over all planes; or only with the plane the viewer shows."""
    from napari_fusionmamba.engine import fuse

    viewer = make_napari_viewer()
    viewer.open_sample("napari-fusionmamba", "neurons")
    viewer.dims.set_point(0, 2)  # the third focal plane
    widget = _widget(viewer, qtbot, "MAP2", "phase", model="method:average", tile=128, overlap=32, gray_output=True)
    seen = []
    widget.runner._progress.changed.connect(lambda done, total: seen.append((done, total)))
    _run(widget, qtbot)
    stack = viewer.layers[-1]
    map2, phase = viewer.layers["MAP2"].data, viewer.layers["phase"].data
    assert stack.data.shape == (3, 512, 512)
    for z in range(3):
        np.testing.assert_allclose(stack.data[z], fuse(map2, phase[z], method="average"), atol=1e-6)
    assert {total for _, total in seen} == {3 * 25} and seen[-1] == (75, 75)  # 5 x 5 tiles per plane, one bar

    widget.stack.value = fuse_widget.PLANE
    _run(widget, qtbot)
    shown = viewer.layers[-1]
    assert shown.data.shape == (1, 512, 512)
    np.testing.assert_allclose(shown.data[0], stack.data[2], atol=1e-6)
    np.testing.assert_allclose(
        shown.translate[0], viewer.layers["phase"].translate[0] + 2 * viewer.layers["phase"].scale[0]
    )


def test_result_is_named_after_its_model_which_its_metadata_and_file_describe(
    make_napari_viewer, qtbot, tmp_path, tiny_checkpoint
):
    import hashlib

    import zarr

    from napari_fusionmamba.registry import load_model

    a, b = real_looking_pair(64, 64)
    viewer = make_napari_viewer()
    viewer.add_image(a, name="GFP", colormap="green")
    viewer.add_image(b, name="phase")
    (tmp_path / "fused.zarr").mkdir()  # an earlier result: kept, the new one gets the next free name
    widget = _widget(viewer, qtbot, "GFP", "phase", model="model:lab", device="cpu", output=fuse_widget.TO_ZARR)
    widget.out_path.value = tmp_path / "fused.zarr"
    _run(widget, qtbot)
    widget.output.value = fuse_widget.IN_MEMORY
    _run(widget, qtbot)

    names = [layer.name for layer in viewer.layers]
    assert names == ["GFP", "phase", "fused(GFP, phase) · lab", "fused(GFP, phase) · lab [1]"]  # napari numbers twins
    expected = {
        "model": "lab",
        "version": "sha256:" + hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()[:12],
        "parameters": sum(p.numel() for p in load_model("lab").parameters()),
    }
    for layer in viewer.layers[2:]:
        assert layer.metadata["engine"] == expected
    assert not any((tmp_path / "fused.zarr").iterdir())  # untouched
    assert zarr.open_group(str(tmp_path / "fused-2.zarr"), mode="r").attrs["fusionmamba"]["engine"] == expected


def test_result_is_coloured_the_way_the_fluorescence_is_shown(make_napari_viewer, qtbot):
    from napari_fusionmamba.engine import fuse
    from napari_fusionmamba.io.colour import colormap_tint

    viewer = make_napari_viewer()
    viewer.open_sample("napari-fusionmamba", "neurons")
    viewer.dims.set_point(0, 1)
    map2, phase = viewer.layers["MAP2"], viewer.layers["phase"]
    widget = _widget(viewer, qtbot, "MAP2", "phase", model="method:average", tile=256, overlap=32)
    widget.stack.value = fuse_widget.PLANE
    _run(widget, qtbot)
    coloured = viewer.layers[-1]
    assert coloured.rgb and coloured.data.shape == (1, 512, 512, 3)
    red, green, blue = np.moveaxis(np.asarray(coloured.data[0]), -1, 0)
    np.testing.assert_array_equal(green, 0)  # magenta: red and blue, never green
    np.testing.assert_allclose(red, blue)
    assert red[map2.data >= map2.contrast_limits[1]].min() >= 0.5  # what shows saturated is bright
    tint = colormap_tint(map2.colormap.colors, map2.colormap.controls, map2.contrast_limits)
    expected = fuse(map2.data, phase.data[1], method="average", tile=256, overlap=32, tint=tint)
    np.testing.assert_allclose(coloured.data[0], expected, atol=1e-6)
    assert coloured.metadata["tint"]["colormap"] == "magenta"

    map2.contrast_limits = (map2.contrast_limits[0], 2 * map2.contrast_limits[1])  # dimmer on screen
    _run(widget, qtbot)
    assert np.asarray(viewer.layers[-1].data)[..., 0].mean() < red.mean()

    widget.gray_output.value = True
    _run(widget, qtbot)
    gray = viewer.layers[-1]
    assert not gray.rgb and gray.data.shape == (1, 512, 512)
    np.testing.assert_allclose(gray.data[0], fuse(map2.data, phase.data[1], method="average", tile=256, overlap=32))


def test_progress_counts_tiles_with_the_time_elapsed_and_left(make_napari_viewer, qtbot, monkeypatch):
    from napari_fusionmamba.napari.widgets._common import progress_text
    from napari_fusionmamba.quality import baselines

    assert progress_text(3, 12, 30, "tiles") == "3/12 tiles · 0:30 elapsed · about 1:30 left"
    assert progress_text(12, 12, 3725, "tiles") == "12/12 tiles · 1:02:05 elapsed"

    def slow_average(a, b):
        time.sleep(0.2)
        return baselines.average(a, b)

    monkeypatch.setitem(baselines.BASELINES, "slow", slow_average)
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((192, 192), np.float32), name="A")
    viewer.add_image(np.ones((192, 192), np.float32), name="B")
    widget = _widget(viewer, qtbot, "A", "B", model="method:slow", tile=64, overlap=0, batch=1)  # 9 tiles
    shown = []
    widget.progress.changed.connect(lambda _value: shown.append(widget.progress.native.text()))
    _run(widget, qtbot)
    assert any(re.fullmatch(r"[1-8]/9 tiles · 0:0\d elapsed · about 0:0\d left", text) for text in shown), shown


def test_channel_lists_show_for_a_channel_axis_only_not_for_stacks_or_colour(make_napari_viewer, qtbot):
    """The sample's phase Z stack, an unlabelled 3-D array (a Z stack, as ``guess_axes`` reads
    it) and an RGB layer have no channel to pick; a layer whose first axis is labelled ``c`` has."""
    viewer = make_napari_viewer()
    viewer.open_sample("napari-fusionmamba", "neurons")
    gfp, phase = real_looking_pair(64, 64)
    viewer.add_image(np.stack([gfp, phase]), name="planes")
    viewer.add_image(np.zeros((64, 64, 3), np.uint8), name="colour", rgb=True)
    viewer.add_image(np.stack([gfp, phase]), name="channels", axis_labels=("c", "y", "x"))
    widget = _widget(viewer, qtbot, "MAP2", "phase")
    assert not _shown(widget.channel_a, widget) and not _shown(widget.channel_b, widget)
    for name in ("planes", "colour"):
        widget.a.value = viewer.layers[name]
        assert not _shown(widget.channel_a, widget), name
    widget.a.value = viewer.layers["channels"]
    assert _shown(widget.channel_a, widget) and list(widget.channel_a.choices) == [None, 0, 1]
    assert widget.channel_a.native.itemText(0) == "all channels"
    widget.a.value = viewer.layers["phase"]  # back to a stack: the list goes, no channel stays picked
    assert not _shown(widget.channel_a, widget) and widget.channel_a.value is None


def test_two_channels_of_one_layer_are_fused_as_a_and_b(make_napari_viewer, qtbot, notes):
    """A two-channel image held as one layer (fluorescence and phase contrast along its first
    axis, labelled a channel axis): the channel pickers appear for it and pick A and B; the same
    channel twice is refused."""
    from napari_fusionmamba.engine import fuse

    gfp, phase = real_looking_pair(64, 64)
    viewer = make_napari_viewer()
    viewer.add_image(np.stack([gfp, phase]), name="both", axis_labels=("c", "y", "x"))
    viewer.add_image(gfp, name="single")
    widget = _widget(viewer, qtbot, "single", "single", model="method:max")
    assert not _shown(widget.channel_a, widget) and not _shown(widget.channel_b, widget)
    widget.a.value = widget.b.value = viewer.layers["both"]
    assert _shown(widget.channel_a, widget) and _shown(widget.channel_b, widget)
    assert [c for c in widget.channel_a.choices] == [None, 0, 1]
    widget.channel_a.value, widget.channel_b.value = 0, 1
    _run(widget, qtbot)
    result = viewer.layers[-1]
    assert result.name == "fused(both [0], both [1]) · max" and result.data.shape == (64, 64)
    np.testing.assert_allclose(result.data, fuse(gfp, phase, method="max", **SETTINGS), atol=1e-6)

    widget.channel_b.value = 0
    widget.run_button.clicked.emit()
    assert not widget.runner.running
    assert notes[-1] == ("error", "Fuse: layer 'both' is chosen as both A and B; choose two different layers.")


def test_a_folder_of_pairs_fuses_in_one_go_reporting_the_pairs_it_skips(make_napari_viewer, qtbot, tmp_path, notes):
    """Pairs matched by name: each good pair fused as ``fuse_files`` fuses it, a pair of
    different sizes failed with its reason, a name in one folder only skipped; the rest runs."""
    import tifffile

    from napari_fusionmamba.engine import fuse_files
    from napari_fusionmamba.io import open_image

    a_dir, b_dir, out_dir = tmp_path / "gfp", tmp_path / "phase", tmp_path / "fused"
    a_dir.mkdir(), b_dir.mkdir()
    for seed, name in enumerate(["well1", "well2"]):
        gfp, phase = real_looking_pair(64, 64, seed=seed)
        tifffile.imwrite(a_dir / f"{name}.tif", gfp)
        tifffile.imwrite(b_dir / f"{name}.ome.tif", phase)
    tifffile.imwrite(a_dir / "bad.tif", np.zeros((64, 64), np.uint16))
    tifffile.imwrite(b_dir / "bad.tif", np.zeros((64, 80), np.uint16))
    tifffile.imwrite(a_dir / "lonely.tif", np.zeros((64, 64), np.uint16))

    viewer = make_napari_viewer()
    widget = FuseWidget(viewer)
    qtbot.addWidget(widget.native)
    widget.model.value = "method:max"
    widget.tile.value, widget.overlap.value = 64, 16
    widget.folder_a.value, widget.folder_b.value, widget.folder_out.value = a_dir, b_dir, out_dir
    widget.folder_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.folder_runner.running, timeout=120_000)

    table = widget.folder_results.value
    statuses = dict(zip(table["index"], (row[0] for row in table["data"])))
    assert statuses == {"bad": "failed", "lonely": "skipped", "well1": "fused", "well2": "fused"}
    assert "64x80" in table["data"][table["index"].index("bad")][1]
    for name in ("well1", "well2"):
        expected = fuse_files(
            a_dir / f"{name}.tif",
            b_dir / f"{name}.ome.tif",
            tmp_path / f"{name}.zarr",
            method="max",
            tile=64,
            overlap=16,
        )
        assert expected.summary()
        np.testing.assert_array_equal(
            open_image(out_dir / f"{name}.ome.zarr").data.compute(),
            open_image(tmp_path / f"{name}.zarr").data.compute(),
        )
    assert not (out_dir / "bad.ome.zarr").exists()
    assert ("info", "Fuse folder: fused 2, skipped 1, failed 1") in notes
