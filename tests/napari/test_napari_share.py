"""The bioimage.io section of the Fine-tune dock in a real (headless) viewer: Export writes a
package of a model, Import registers it under a new name that the Fuse widget then lists, and a
file that is not a package is one error notification."""

import zipfile

import pytest

from napari_fusionmamba.napari.widgets.finetune import FinetuneWidget
from napari_fusionmamba.napari.widgets.fuse import FuseWidget

pytest.importorskip("bioimageio.spec")


@pytest.mark.slow
def test_export_then_import_lists_the_model_in_fuse(make_napari_viewer, qtbot, tmp_path, notes):
    viewer = make_napari_viewer()
    fuse = FuseWidget(viewer)
    viewer.window.add_dock_widget(fuse)
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget)
    share = widget.share
    assert "gfp-pc" in share.model.choices and "tiny" not in share.model.choices  # only models with weights

    share.model.value, share.package.value = "gfp-pc", tmp_path / "gfp-pc.zip"
    share.export_button.native.click()
    qtbot.waitUntil(lambda: not share.exporting.running, timeout=180_000)
    assert zipfile.is_zipfile(tmp_path / "gfp-pc.zip")
    assert ("info", f"Exported model 'gfp-pc' to {tmp_path / 'gfp-pc.zip'}") in notes

    assert "model:shared" not in fuse.model.choices
    share.source.value, share.import_name.value = tmp_path / "gfp-pc.zip", "shared"
    share.import_button.native.click()
    qtbot.waitUntil(lambda: not share.importing.running, timeout=180_000)
    assert "model:shared" in fuse.model.choices


def test_importing_a_file_that_is_not_a_package_is_one_error(make_napari_viewer, qtbot, tmp_path, notes):
    viewer = make_napari_viewer()
    widget = FinetuneWidget(viewer)
    share = widget.share
    (tmp_path / "notes.zip").write_text("not a zip")
    share.source.value = tmp_path / "notes.zip"
    share.import_button.native.click()
    qtbot.waitUntil(lambda: not share.importing.running, timeout=60_000)
    errors = [message for severity, message in notes if severity == "error"]
    assert errors == [
        f"Importing the package failed: {tmp_path / 'notes.zip'}: not a bioimage.io model package (not a zip file)"
    ]
