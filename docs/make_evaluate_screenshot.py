"""Regenerate the screenshot of the Evaluate fusion widget in docs/napari.md: the shipped sample
pair, its `laplacian` fusion, and the table after "Evaluate + classical methods".

    xvfb-run -a python docs/make_evaluate_screenshot.py      # headless; plain `python` on a desktop

Writes docs/images/napari_evaluate.png (window helpers shared with make_screenshots.py).
"""

from __future__ import annotations

import time

from make_screenshots import _save, _settle


def main() -> None:
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication

    import napari
    from napari_fusionmamba.quality.baselines import BASELINES
    from napari_fusionmamba.quality.metrics import fusion_input

    viewer = napari.Viewer(title="napari-fusionmamba")
    viewer.window._qt_window.resize(1800, 960)
    viewer.open_sample("napari-fusionmamba", "gfp_phase")
    gfp, phase = viewer.layers["GFP"], viewer.layers["phase"]
    fused = BASELINES["laplacian"](fusion_input(gfp.data), fusion_input(phase.data))
    viewer.add_image(fused, name="laplacian(GFP, phase)")
    dock, widget = viewer.window.add_plugin_dock_widget("napari-fusionmamba", "Evaluate fusion")
    widget.fused.value = viewer.layers["laplacian(GFP, phase)"]
    widget.a.value, widget.b.value = gfp, phase
    viewer.canvas.grid.enabled = True
    viewer.canvas.grid.shape = (1, -1)
    app = QApplication.instance()
    widget.compare_button.clicked.emit()
    while widget.runner.running:
        app.processEvents()
        time.sleep(0.02)
    if not widget.results:
        raise SystemExit("the evaluation produced no table: see the notification above")
    viewer.window._qt_window.resizeDocks([dock], [820], Qt.Horizontal)  # every column visible
    _settle(app)
    viewer.reset_view()
    _settle(app)
    _save(viewer, "napari_evaluate.png")
    viewer.close()


if __name__ == "__main__":
    main()
