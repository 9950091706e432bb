"""The "Evaluate fusion" widget in a real (headless) napari viewer, driven by its buttons."""

import csv

import numpy as np
import pytest

from conftest import real_looking_pair
from napari_fusionmamba.napari.widgets import evaluate as evaluate_module
from napari_fusionmamba.napari.widgets.evaluate import EvaluateWidget
from napari_fusionmamba.quality.baselines import BASELINES
from napari_fusionmamba.quality.metrics import METRICS, evaluate, fusion_input


@pytest.fixture()
def viewer_with_pair(make_napari_viewer):
    viewer = make_napari_viewer()
    gfp, phase = real_looking_pair(96, 112)
    fused = BASELINES["max"](fusion_input(gfp), fusion_input(phase))
    viewer.add_image(gfp, name="gfp")
    viewer.add_image(phase, name="phase")
    viewer.add_image(fused, name="fused")
    viewer.add_image(np.zeros((50, 60), np.float32), name="other size")
    widget = EvaluateWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.fused.value = viewer.layers["fused"]
    widget.a.value = viewer.layers["gfp"]
    widget.b.value = viewer.layers["phase"]
    return viewer, widget, (fused, gfp, phase)


def click_and_wait(qtbot, widget, button):
    button.native.click()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=120_000)


def test_scores_the_fused_layer_then_every_classical_method_and_exports_csv(qtbot, viewer_with_pair, tmp_path):
    viewer, widget, (fused, gfp, phase) = viewer_with_pair
    click_and_wait(qtbot, widget, widget.run_button)
    assert list(widget.results) == ["fused"]
    assert widget.results["fused"] == pytest.approx(evaluate(fused, gfp, phase))
    assert widget.table.row_headers == tuple(METRICS)
    assert widget.table.column_headers == ("fused",)

    click_and_wait(qtbot, widget, widget.compare_button)
    assert list(widget.results) == ["fused", *BASELINES]
    # the fused layer *is* the max fusion of the two sources: both columns must agree
    assert widget.results["max"] == pytest.approx(widget.results["fused"])
    assert widget.table.column_headers == ("fused", *BASELINES)
    assert widget.compare_button.enabled

    out = tmp_path / "metrics.csv"
    widget.csv_path.value = out
    widget.export_button.native.click()
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["metric", "fused", *BASELINES]
    assert [row[0] for row in rows[1:]] == list(METRICS)
    for row in rows[1:]:
        for column, text in zip(rows[0][1:], row[1:]):
            assert float(text) == pytest.approx(widget.results[column][row[0]])


def test_a_source_of_another_size_is_refused_naming_the_layers(qtbot, viewer_with_pair, monkeypatch):
    viewer, widget, _ = viewer_with_pair
    errors = []
    monkeypatch.setattr(evaluate_module, "show_error", errors.append)
    widget.b.value = viewer.layers["other size"]
    widget.run_button.native.click()
    assert not widget.runner.running and widget.results == {}
    assert "'other size' is 50 x 60" in errors[0] and "'fused'" in errors[0]


def test_cancel_stops_the_comparison(qtbot, viewer_with_pair):
    viewer, widget, _ = viewer_with_pair
    widget.compare_button.native.click()
    widget.run_button.native.click()  # the running job's Cancel
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=120_000)
    assert widget.results == {} and widget.run_button.text == "Evaluate"


def test_stacks_are_scored_on_the_plane_the_viewer_shows(qtbot, make_napari_viewer):
    viewer = make_napari_viewer()
    pairs = [real_looking_pair(64, 64, seed) for seed in range(3)]
    gfp = np.stack([p[0] for p in pairs])
    phase = np.stack([p[1] for p in pairs])
    fused = np.stack([BASELINES["average"](fusion_input(a), fusion_input(b)) for a, b in pairs])
    for name, data in (("gfp", gfp), ("phase", phase), ("fused", fused)):
        viewer.add_image(data, name=name)
    viewer.dims.set_current_step(0, 2)
    widget = EvaluateWidget(viewer)
    widget.fused.value, widget.a.value, widget.b.value = (viewer.layers[n] for n in ("fused", "gfp", "phase"))
    click_and_wait(qtbot, widget, widget.run_button)
    assert widget.results["fused"] == pytest.approx(evaluate(fused[2], gfp[2], phase[2]))


def test_the_widget_opens_from_the_plugin_menu(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-fusionmamba", "Evaluate fusion")
    assert isinstance(widget, EvaluateWidget)


def test_rows_explain_their_metric_and_the_best_value_of_each_is_bold(qtbot, viewer_with_pair):
    from napari_fusionmamba.quality.metrics import METRIC_INFO

    assert set(METRIC_INFO) == set(METRICS)  # every metric has its explanation
    viewer, widget, _ = viewer_with_pair
    click_and_wait(qtbot, widget, widget.compare_button)
    native = widget.table.native
    columns = list(widget.results)
    for row, key in enumerate(METRICS):
        tooltip = native.verticalHeaderItem(row).toolTip()
        assert tooltip.startswith(METRIC_INFO[key]) and "Higher is better" in tooltip
        best = max(widget.results[column][key] for column in columns)
        bold = [native.item(row, column).font().bold() for column in range(len(columns))]
        assert bold == [widget.results[column][key] == best for column in columns], key
