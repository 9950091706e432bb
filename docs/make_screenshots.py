"""Regenerate the screenshots of docs/napari.md: the Fuse layers widget in a real napari viewer,
before and after fusing the shipped sample pair with the default model.

    xvfb-run -a python docs/make_screenshots.py      # headless; plain `python` on a desktop

Writes docs/images/napari_fuse_before.png and docs/images/napari_fuse_after.png. Saved widget
settings are left alone (a temporary settings folder is used).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

IMAGES = Path(__file__).resolve().parent / "images"


def _settle(app) -> None:
    """Let the window draw, and close notification toasts (start-up warnings) that would hide the view."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    for toast in app.allWidgets():
        if isinstance(toast, NapariQtNotification):
            toast.close()
    app.processEvents()


def _save(viewer, name: str) -> None:
    """The whole window (widget included), as a 256-colour PNG to keep the repository small."""
    from PIL import Image

    pixels = viewer.screenshot(canvas_only=False, flash=False)
    Image.fromarray(pixels[..., :3]).quantize(256).save(IMAGES / name, optimize=True)


def main() -> None:
    os.environ["NAPARI_FUSIONMAMBA_SETTINGS_DIR"] = tempfile.mkdtemp(prefix="fusionmamba-settings-")
    from qtpy.QtWidgets import QApplication

    import napari
    from napari_fusionmamba.registry import DEFAULT_MODEL

    viewer = napari.Viewer(title="napari-fusionmamba")
    viewer.window._qt_window.resize(1500, 860)
    viewer.open_sample("napari-fusionmamba", "gfp_phase")
    _, widget = viewer.window.add_plugin_dock_widget("napari-fusionmamba", "Fuse layers")
    widget.a.value, widget.b.value = viewer.layers["GFP"], viewer.layers["phase"]
    widget.model.value = f"model:{DEFAULT_MODEL}"
    widget.tile.value, widget.overlap.value, widget.batch.value = 256, 64, 4
    viewer.grid.enabled = True
    viewer.grid.shape = (1, -1)
    app = QApplication.instance()
    _settle(app)
    viewer.reset_view()  # once the window has its size
    _settle(app)
    IMAGES.mkdir(exist_ok=True)
    _save(viewer, "napari_fuse_before.png")

    started = time.perf_counter()
    widget.run_button.clicked.emit()
    while widget.runner.running:
        app.processEvents()
        time.sleep(0.02)
    name = f"fused(GFP, phase) · {DEFAULT_MODEL}"
    if name not in viewer.layers:
        raise SystemExit("the fusion did not produce a layer: see the notification above")
    print(f"fused the 320x320 sample pair in {time.perf_counter() - started:.1f} s")
    viewer.reset_view()
    _settle(app)
    _save(viewer, "napari_fuse_after.png")
    for path in sorted(IMAGES.glob("napari_fuse_*.png")):
        print(f"{path}: {path.stat().st_size / 1024:.0f} KB")
    viewer.close()


if __name__ == "__main__":
    main()
