"""Every dock of the plugin fits a 1366 x 768 screen: its contents scroll (down, and sideways when
long layer names make them wide) instead of growing or being cut off."""

from __future__ import annotations

import numpy as np
import pytest

DOCKS = ["Fuse layers", "Fine-tune", "Evaluate fusion"]


@pytest.mark.parametrize("name", DOCKS)
def test_dock_fits_a_small_screen_and_scrolls_to_every_field(make_napari_viewer, qtbot, name):
    from qtpy.QtWidgets import QScrollArea

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1366, 768)
    viewer.open_sample("napari-fusionmamba", "neurons")
    # a long layer name, as results get: the pickers (a row of them in Fine-tune) grow wider than the dock
    viewer.add_image(np.zeros((512, 512), np.float32), name="fused(neurons [MAP2], neurons [phase]) · gfp-pc")
    dock, widget = viewer.window.add_plugin_dock_widget("napari-fusionmamba", name)
    assert dock.sizeHint().height() <= 700 and dock.minimumSizeHint().height() <= 700
    scroll = dock.widget()
    assert isinstance(scroll, QScrollArea)
    inner = scroll.widget()
    # every field is inside the scrolled contents, which keep their full height
    assert all(inner.isAncestorOf(child.native) for child in widget)
    qtbot.waitUntil(lambda: scroll.viewport().height() > 0, timeout=5000)
    if inner.sizeHint().height() > scroll.viewport().height():
        assert scroll.verticalScrollBar().maximum() > 0
    if inner.minimumSizeHint().width() > scroll.viewport().width():  # too wide: scrolls sideways, not cut off
        qtbot.waitUntil(scroll.horizontalScrollBar().isVisible, timeout=3000)
        assert scroll.horizontalScrollBar().maximum() > 0
