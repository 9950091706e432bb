"""Share models through the BioImage Model Zoo, in the Fine-tune dock: export a model as a
bioimage.io package and import one, a thin shell over ``zoo.export_model`` / ``zoo.import_model``
(the same functions as ``fusionmamba export`` / ``fusionmamba import``). Both run off the UI
thread: exporting traces the network and validates the package, which takes seconds."""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import ComboBox, Container, FileEdit, LineEdit, ProgressBar, PushButton
from napari.utils.notifications import show_info

from ...errors import InputError
from ._common import Runner, refresh_models, refresh_on_open

if TYPE_CHECKING:
    import napari


def trained_models() -> list[str]:
    """Models with weights (bundled or fine-tuned): untrained configs have nothing to share."""
    from ...registry import list_models

    return [entry.name for entry in list_models() if entry.path is not None]


class ShareModels(Container):
    """Export a model to a bioimage.io package (.zip), or import a package exported here."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(label="bioimage.io")
        self._viewer = viewer
        self.model = refresh_on_open(
            ComboBox(label="Model", choices=lambda _w=None: trained_models(), tooltip="The model to export.")
        )
        self.package = FileEdit(label="Package", mode="w", filter="*.zip", tooltip="The .zip to write.")
        self.export_button = PushButton(text="Export to bioimage.io")
        self.export_progress = ProgressBar(label="Export")
        self.source = FileEdit(label="Import", mode="r", filter="*.zip", tooltip="A package written by Export.")
        self.import_name = LineEdit(label="Import as", value="", tooltip="Name (empty: the name it was exported with).")
        self.import_button = PushButton(text="Import package")
        self.import_progress = ProgressBar(label="Import")
        self.extend([
            self.model, self.package, self.export_button, self.export_progress,
            self.source, self.import_name, self.import_button, self.import_progress,
        ])  # fmt: skip
        self.exporting = Runner(self.export_button, self.export_progress, name="Export to bioimage.io")
        self.importing = Runner(self.import_button, self.import_progress, name="Import package")
        self.export_button.changed.connect(lambda _v=None: self.exporting.toggle(self._export_request, self._export))
        self.import_button.changed.connect(lambda _v=None: self.importing.toggle(self._import_request, self._import))

    def _export_request(self) -> tuple[str, str]:
        if not self.model.value:
            raise InputError("Export: no trained model to export (fine-tune one first)")
        if not str(self.package.value).lower().endswith(".zip"):
            raise InputError("Export: choose the package file to write (a .zip)")
        return self.model.value, str(self.package.value)

    def _export(self, request: tuple[str, str]) -> None:
        from ...zoo import export_model

        self.exporting.start(
            lambda progress, cancelled: export_model(*request),
            on_result=lambda out: show_info(f"Exported model '{request[0]}' to {out}"),
            what="Exporting the model",
        )

    def _import_request(self) -> tuple[str, str | None]:
        if not str(self.source.value).lower().endswith(".zip"):
            raise InputError("Import: choose a bioimage.io package (.zip) written by Export")
        return str(self.source.value), self.import_name.value.strip() or None

    def _import(self, request: tuple[str, str | None]) -> None:
        from ...zoo import import_model

        def imported(entry) -> None:
            refresh_models(self._viewer)
            show_info(f"Imported model '{entry.name}' from {request[0]}")

        self.importing.start(
            lambda progress, cancelled: import_model(*request), on_result=imported, what="Importing the package"
        )
