"""The Fine-tune widget in a real (headless) viewer: it trains, plots, previews, stops, and the
model it registers shows up in the Fuse widget's list and fuses."""

import numpy as np
import pytest

from conftest import real_looking_pair
from napari_fusionmamba.errors import InputError
from napari_fusionmamba.napari.widgets.finetune import PREVIEW, FinetuneWidget, _mask_array
from napari_fusionmamba.napari.widgets.fuse import FuseWidget


@pytest.mark.slow
def test_widget_trains_plots_stops_and_registers_a_model_fuse_can_use(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    a, b = real_looking_pair(96, 96)
    layer_a = viewer.add_image(a, name="gfp", scale=(0.5, 0.5), translate=(10, 20))
    layer_b = viewer.add_image(b, name="phase", scale=(0.5, 0.5), translate=(10, 20))
    roi = np.zeros((96, 96), np.uint8)
    roi[:, :80] = 1
    roi[10:40, 10:40] = 2
    labels = viewer.add_labels(roi, name="roi", scale=(0.5, 0.5), translate=(10, 20))
    fuse = FuseWidget(viewer)
    viewer.window.add_dock_widget(fuse)
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget)

    row = widget.rows[0]
    row.a.value, row.b.value, row.mask.value = layer_a, layer_b, labels
    widget.base.value = "tiny"
    widget.steps.value, widget.crop.value, widget.batch.value, widget.val_every.value = 400, 32, 2, 2
    widget.model_name.value = "lab-test"
    widget.run_dir.value = tmp_path / "run"
    assert "model:lab-test" not in fuse.model.choices

    widget.train_button.native.click()
    qtbot.waitUntil(lambda: len(widget.history) >= 4, timeout=120_000)
    assert widget.train_button.text == "Stop"
    # The live plot holds every step so far, and validation points.
    assert len(widget._plot.train["loss"].get_xdata()) >= 4
    assert len(widget._plot.val["loss"].get_xdata()) >= 2
    # The preview sits over its validation crop, in the sources' world coordinates.
    preview = viewer.layers[PREVIEW]
    assert preview.data.shape == (32, 32) and np.allclose(preview.scale, (0.5, 0.5))
    assert 10 <= preview.translate[0] <= 10 + 64 * 0.5 and 20 <= preview.translate[1] <= 20 + 48 * 0.5

    widget.train_button.native.click()  # Stop
    qtbot.waitUntil(lambda: not widget.runner.running and widget.result is not None, timeout=120_000)
    assert widget.result.cancelled and 4 <= widget.result.step < 400
    assert widget.train_button.text == "Train"
    assert (tmp_path / "run" / "last.safetensors").exists()

    # Fuse lists the new model and fuses with it.
    assert "model:lab-test" in fuse.model.choices
    fuse.a.value, fuse.b.value = layer_a, layer_b
    fuse.model.value = "model:lab-test"
    fuse.run_button.native.click()
    qtbot.waitUntil(lambda: "fused(gfp, phase) · lab-test" in viewer.layers, timeout=120_000)
    fused = np.asarray(viewer.layers["fused(gfp, phase) · lab-test"].data)
    assert fused.shape == (96, 96) and np.isfinite(fused).all() and fused.min() >= 0 and fused.max() <= 1
    assert fused.std() > 0.01


def test_widget_refuses_bad_requests_before_training(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = FinetuneWidget(viewer)
    with pytest.raises(ValueError, match="choose two image layers"):
        widget._request()
    a, b = real_looking_pair(64, 64)
    widget.rows[0].a.value = viewer.add_image(a, name="a")
    widget.rows[0].b.value = viewer.add_image(b[:48], name="b")
    with pytest.raises(ValueError, match=r"'a' \(64, 64\) and 'b' \(48, 64\) differ in shape"):
        widget._request()
    widget.rows[0].b.value = viewer.add_image(b, name="b full")
    viewer.add_labels(np.ones((48, 64), np.uint8), name="small")
    widget.rows[0].mask.value = viewer.layers["small"]
    with pytest.raises(ValueError, match="mask layer 'small' has shape"):
        widget._request()
    widget.rows[0].mask.value = None
    widget.lr.value = "fast"
    with pytest.raises(ValueError, match="learning rate 'fast'"):
        widget._request()
    widget.lr.value = "1e-3"
    widget.model_name.value = "tiny"
    with pytest.raises(ValueError, match="taken by a shipped model"):
        widget._request()
    # Rows are added and removed; the last one stays.
    widget.add_pair.native.click()
    assert len(widget.rows) == 2
    widget.rows[1].remove.native.click()
    widget.rows[0].remove.native.click()
    assert len(widget.rows) == 1


def test_shapes_become_a_mask(make_napari_viewer):
    viewer = make_napari_viewer()
    shapes = viewer.add_shapes([np.array([[4, 4], [4, 20], [30, 20], [30, 4]])], shape_type="rectangle")
    mask = _mask_array(shapes, (40, 40))
    assert mask.shape == (40, 40) and mask[10, 10] == 1 and mask[35, 35] == 0
    assert 26 * 16 <= mask.sum() <= 27 * 17  # the 26 x 16 rectangle, edges included


def test_stack_rows_train_on_the_plane_the_viewer_shows(make_napari_viewer):
    viewer = make_napari_viewer()
    planes = [real_looking_pair(64, 64, seed=seed) for seed in range(3)]
    stack_a = np.stack([a for a, _ in planes])
    stack_b = np.stack([b for _, b in planes])
    masks = np.zeros((3, 64, 64), np.uint8)
    masks[1, :, :48] = 1
    widget = FinetuneWidget(viewer)
    row = widget.rows[0]
    row.a.value = viewer.add_image(stack_a, name="gfp", scale=(2.0, 0.5, 0.5))
    row.b.value = viewer.add_image(stack_b, name="phase", scale=(2.0, 0.5, 0.5))
    row.mask.value = viewer.add_labels(masks, name="roi", scale=(2.0, 0.5, 0.5))
    widget.crop.value = 32
    viewer.dims.set_point(0, 2.0)  # world z = 2.0 is plane 1

    [pair] = widget._request().pairs
    np.testing.assert_array_equal(pair.a, stack_a[1])
    np.testing.assert_array_equal(pair.b, stack_b[1])
    np.testing.assert_array_equal(pair.mask, masks[1])
    assert pair.name == "gfp + phase at (1,)"

    # a 2-D Shapes mask serves whichever plane is shown
    viewer.dims.set_point(0, 4.0)
    row.mask.value = viewer.add_shapes([np.array([[2, 2], [2, 20], [20, 20], [20, 2]])], shape_type="rectangle")
    [pair] = widget._request().pairs
    np.testing.assert_array_equal(pair.a, stack_a[2])
    assert pair.mask.shape == (64, 64) and pair.mask[10, 10] == 1 and pair.mask[40, 40] == 0

    # a stack B of another depth is refused, naming both layers
    row.b.value = viewer.add_image(stack_b[:2], name="short")
    with pytest.raises(ValueError, match="'gfp' .* and 'short' .* differ in shape"):
        widget._request()


def test_a_stopped_run_resumes_where_it_stopped_and_replaces_its_model(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    from napari_fusionmamba.registry import find_model

    viewer = make_napari_viewer()
    a, b = real_looking_pair(64, 64)
    widget = FinetuneWidget(viewer)
    row = widget.rows[0]
    row.a.value, row.b.value = viewer.add_image(a, name="gfp"), viewer.add_image(b, name="phase")
    widget.base.value = "tiny"
    widget.steps.value, widget.crop.value, widget.batch.value, widget.val_every.value = 400, 32, 1, 3
    widget.model_name.value = "resumed"
    widget.run_dir.value = tmp_path / "run"
    resume_offered = lambda: not widget.resume_button.native.isHidden()  # the viewer is not shown
    assert not resume_offered()

    widget.train_button.native.click()
    qtbot.waitUntil(lambda: len(widget.history) >= 4, timeout=120_000)
    widget.train_button.native.click()  # Stop
    qtbot.waitUntil(lambda: not widget.runner.running and widget.result is not None, timeout=120_000)
    stopped = widget.result.step
    assert widget.result.cancelled and resume_offered()
    widget.steps.value = 5  # what the widget shows now does not change the run being resumed

    # a resume that fails (here: the device goes away) leaves the stopped run resumable
    import napari_fusionmamba.training as train

    real_finetune = train.finetune
    monkeypatch.setattr(train, "finetune", lambda *args, **kwargs: (_ for _ in ()).throw(RuntimeError("device lost")))
    widget.resume_button.native.click()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=120_000)
    assert resume_offered() and widget.result.step == stopped
    monkeypatch.setattr(train, "finetune", real_finetune)

    widget.resume_button.native.click()
    assert not resume_offered() and widget.train_button.text == "Stop"
    qtbot.waitUntil(lambda: len(widget.history) >= stopped + 4, timeout=120_000)
    widget.train_button.native.click()  # Stop again
    qtbot.waitUntil(lambda: not widget.runner.running and widget.result is not None, timeout=120_000)
    steps = [info.step for info in widget.history]
    assert steps == list(range(1, len(steps) + 1))  # the resumed run picks up at the next step
    assert widget.result.cancelled and widget.result.step > stopped
    # the name registered at the first stop now holds the resumed run's best
    assert widget.status.value.endswith("saved as model 'resumed'")
    assert find_model("resumed").path.read_bytes() == widget.result.best.read_bytes()


def test_the_objective_is_chosen_in_the_expert_settings(make_napari_viewer):
    from napari_fusionmamba.napari.widgets.finetune import OBJECTIVE_NAMES
    from napari_fusionmamba.training import OBJECTIVES

    assert list(OBJECTIVE_NAMES) == list(OBJECTIVES)  # the widget offers every registered objective
    viewer = make_napari_viewer()
    a, b = real_looking_pair(64, 64)
    widget = FinetuneWidget(viewer)
    widget.rows[0].a.value = viewer.add_image(a, name="gfp")
    widget.rows[0].b.value = viewer.add_image(b, name="phase")
    widget.crop.value = 32
    assert widget._request().settings.objective == "paper"
    widget.objective.value = "keep-both"
    assert widget._request().settings.objective == "keep-both"


def test_pair_rows_default_to_two_layers_of_one_shape_and_refuse_one_layer_twice(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-fusionmamba", "neurons")  # phase is a stack: MAP2 and DAPI share a shape
    widget = FinetuneWidget(viewer)
    row = widget.rows[0]
    assert (row.a.value.name, row.b.value.name) == ("MAP2", "DAPI")
    row.b.value = row.a.value
    with pytest.raises(InputError, match="layer 'MAP2' is chosen as both A and B"):
        widget._request()


def test_a_row_trains_on_two_channels_of_one_layer(make_napari_viewer, qtbot):
    """A two-channel layer (fluorescence, phase contrast along its first axis) as A and B of one
    pair, through the channel lists that appear for it."""
    gfp, phase = real_looking_pair(64, 64)
    viewer = make_napari_viewer()
    widget = FinetuneWidget(viewer)
    qtbot.addWidget(widget.native)
    row = widget.rows[0]
    both = viewer.add_image(np.stack([gfp, phase]), name="both", axis_labels=("c", "y", "x"))
    row.a.value = row.b.value = both
    assert row.channel_a.native.isVisibleTo(widget.native) and row.channel_b.native.isVisibleTo(widget.native)
    row.channel_a.value, row.channel_b.value = 0, 1
    widget.crop.value = 32
    [pair] = widget._request().pairs
    np.testing.assert_array_equal(pair.a, gfp)
    np.testing.assert_array_equal(pair.b, phase)
    assert pair.name == "both [0] + both [1]"
