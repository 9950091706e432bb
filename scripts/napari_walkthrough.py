"""Regenerate the walk-through pictures of docs/napari.md: the plugin's real widgets in a real
napari viewer on the shipped neuron sample, at a 1366 x 768 laptop's window size.

    xvfb-run -a python scripts/napari_walkthrough.py      # headless; plain `python` on a desktop

Writes docs/images/walk_*.png (256-colour PNGs, to keep the repository small): the sample with
the Fuse layers widget; MAP2 fused with each phase plane; a two-channel OME-TIFF opened as two
layers; a folder of pairs fused in one go; the Evaluate fusion table; the Evaluate fusion and
Fine-tune docks. ``--model`` picks what fuses (default: the shipped default model;
``method:average`` is quick). Saved widget settings are left alone (a temporary settings folder
is used), and the example files go to a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"


def settle(app) -> None:
    """Let the window draw, and close notification toasts that would hide the view."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    for toast in app.allWidgets():
        if isinstance(toast, NapariQtNotification):
            toast.close()
    app.processEvents()


def save(pixels, path: Path) -> None:
    """An RGB(A) array as a 256-colour PNG."""
    from PIL import Image

    Image.fromarray(pixels[..., :3]).quantize(256).save(path, optimize=True)


def save_window(viewer, app, path: Path) -> None:
    viewer.reset_view()
    settle(app)
    save(viewer.screenshot(canvas_only=False, flash=False), path)


def save_widget(qt_widget, path: Path) -> None:
    """One widget alone (``QWidget.grab``)."""
    import numpy as np

    image = qt_widget.grab().toImage().convertToFormat(4)  # QImage.Format_RGB32: B, G, R, 255
    pixels = np.frombuffer(image.constBits().asstring(image.sizeInBytes()), np.uint8)
    pixels = pixels.reshape(image.height(), image.bytesPerLine() // 4, 4)[:, : image.width()]
    save(np.ascontiguousarray(pixels[..., [2, 1, 0]]), path)


def save_table(table, app, path: Path) -> None:
    """A table widget at the size of all its rows and columns."""
    table.resizeColumnsToContents()
    header, columns = table.verticalHeader(), table.horizontalHeader()
    frame = 2 * table.frameWidth()
    table.setFixedSize(header.width() + columns.length() + frame, columns.height() + header.length() + frame)
    settle(app)
    save_widget(table, path)


def wait(runner, app) -> None:
    while runner.running:
        app.processEvents()
        time.sleep(0.02)


def example_files(folder: Path) -> Path:
    """From the sample: a two-channel OME-TIFF (MAP2, a phase plane) and two folders of pairs
    (the phase planes and MAP2 quarters), one of them not registered (a size that differs)."""
    import numpy as np
    import tifffile

    from napari_fusionmamba.napari.sample_data import load_neurons

    images = load_neurons()
    map2, phase = images["MAP2"], images["phase"]
    both = folder / "neurons.ome.tif"
    channels = {"Name": ["MAP2", "phase"], "Color": [-16711681, -1]}  # RGBA magenta, white
    tifffile.imwrite(both, np.stack([map2, phase[1]]), metadata={"axes": "CYX", "Channel": channels})
    a_dir, b_dir = folder / "MAP2", folder / "phase"
    a_dir.mkdir(), b_dir.mkdir()
    for z in range(3):
        tifffile.imwrite(a_dir / f"field{z + 1}.tif", map2[z * 128 : z * 128 + 256])
        tifffile.imwrite(b_dir / f"field{z + 1}.tif", phase[z][z * 128 : z * 128 + 256])
    tifffile.imwrite(b_dir / "field3.tif", phase[2][:200])  # not registered: refused, the rest fuses
    return both


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model:NAME or method:NAME (default: the shipped default model)")
    parser.add_argument("--out", type=Path, default=IMAGES, help="folder for the pictures (docs/images)")
    args = parser.parse_args()
    os.environ["NAPARI_FUSIONMAMBA_SETTINGS_DIR"] = tempfile.mkdtemp(prefix="fusionmamba-settings-")
    from qtpy.QtWidgets import QApplication

    import napari
    from napari_fusionmamba.registry import DEFAULT_MODEL

    model = args.model or f"model:{DEFAULT_MODEL}"
    args.out.mkdir(parents=True, exist_ok=True)
    files = Path(tempfile.mkdtemp(prefix="fusionmamba-walkthrough-"))
    both = example_files(files)
    app = QApplication.instance() or QApplication([])

    viewer = napari.Viewer(title="napari-fusionmamba")
    viewer.window._qt_window.resize(1366, 768)
    viewer.open_sample("napari-fusionmamba", "neurons")
    fuse_dock, fuse = viewer.window.add_plugin_dock_widget("napari-fusionmamba", "Fuse layers")
    fuse.model.value = model
    viewer.dims.set_point(0, 1)
    save_window(viewer, app, args.out / "walk_1_sample.png")

    started = time.perf_counter()
    fuse.run_button.clicked.emit()
    wait(fuse.runner, app)
    print(f"fused MAP2 with 3 phase planes in {time.perf_counter() - started:.1f} s")
    for name in ("DAPI", "phase"):
        viewer.layers[name].visible = False
    save_window(viewer, app, args.out / "walk_2_fused_stack.png")

    viewer.layers.clear()
    viewer.open(str(both), plugin="napari-fusionmamba")
    save_window(viewer, app, args.out / "walk_3_channels.png")

    fuse.folder_a.value, fuse.folder_b.value, fuse.folder_out.value = files / "MAP2", files / "phase", files / "fused"
    fuse.folder_button.clicked.emit()
    wait(fuse.folder_runner, app)
    save_table(fuse.folder_results.native, app, args.out / "walk_4_folder.png")

    viewer.layers.clear()
    viewer.open_sample("napari-fusionmamba", "neurons")
    viewer.dims.set_point(0, 1)
    fuse.stack.value, fuse.gray_output.value = "current plane only", True
    fuse.run_button.clicked.emit()
    wait(fuse.runner, app)
    evaluate_dock, evaluate = viewer.window.add_plugin_dock_widget("napari-fusionmamba", "Evaluate fusion")
    evaluate.fused.value = viewer.layers[-1]  # the plane shown, against the planes of MAP2 and phase shown
    evaluate.a.value, evaluate.b.value = viewer.layers["MAP2"], viewer.layers["phase"]
    started = time.perf_counter()
    evaluate.compare_button.clicked.emit()
    wait(evaluate.runner, app)
    print(f"scored the fused plane and 5 classical methods in {time.perf_counter() - started:.1f} s")
    settle(app)
    save_table(evaluate.table.native, app, args.out / "walk_5_evaluate.png")
    viewer.window.remove_dock_widget(fuse_dock)  # each of the other docks alone, as a laptop shows it
    save_window(viewer, app, args.out / "walk_6_evaluate_dock.png")
    viewer.window.remove_dock_widget(evaluate_dock)
    viewer.window.add_plugin_dock_widget("napari-fusionmamba", "Fine-tune")
    save_window(viewer, app, args.out / "walk_7_finetune_dock.png")
    for path in sorted(args.out.glob("walk_*.png")):
        print(f"{path}: {path.stat().st_size / 1024:.0f} KB")
    viewer.close()


if __name__ == "__main__":
    main()
