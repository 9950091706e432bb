"""The "Fuse layers" widget: a thin shell over ``pipeline.fuse`` (in memory) and ``pipeline.fuse_files`` (to zarr).

The widget checks the two layers on the UI thread, hands plain arrays and settings to a thread
worker, and adds the result as a layer that keeps the sources' scale and translate. Everything
about fusing itself (normalisation, tiling, batching, cancelling within one batch, writing zarr)
lives in the library, shared with the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, ProgressBar, PushButton, SpinBox, Table
from napari.utils.notifications import show_info

from ...errors import FusionMambaError, InputError
from ...io.colour import Tint, colormap_tint
from ...io.files import free_path
from ._common import (
    Runner,
    ScrollingContainer,
    channel_picker,
    current_plane,
    follow_pair,
    layer_picker,
    persist,
    refresh_on_open,
    registered_pair,
    show_channels,
    spatial_shape,
)

if TYPE_CHECKING:
    import napari

FROM_FILE = "file:"
DEVICES = ("auto", "cpu", "cuda", "mps")
WHOLE, PLANE = "whole stack", "current plane only"
IN_MEMORY, TO_ZARR = "new layer (in memory)", "zarr file"


def model_choices() -> list[tuple[str, str]]:
    """(label, value) for the model picker: shipped and fine-tuned models, classical methods, a file.

    Listing reads checkpoint headers only (no network is built), so opening the widget stays fast.
    """
    from ...quality.baselines import BASELINES
    from ...registry import list_models

    kinds = {"bundled": "shipped", "user": "your model", "config": "untrained"}
    choices = [
        (f"{entry.name} ({kinds.get(entry.source, entry.source)})", f"model:{entry.name}") for entry in list_models()
    ]
    choices += [(f"{name} (classical)", f"method:{name}") for name in BASELINES]
    return choices + [("from file...", FROM_FILE)]


def scan_backend(device: str) -> str:
    """The selective-scan backend the network would use on ``device`` (FUSIONMAMBA_SCAN_BACKEND included)."""
    from ...model.devices import resolve_device
    from ...model.scan import resolve_backend

    try:
        return resolve_backend("auto", resolve_device(device))
    except FusionMambaError as error:
        return f"unavailable ({error})"


@dataclass
class FuseRequest:
    """Everything the worker needs, taken from the viewer on the UI thread (the worker never reads it)."""

    a: object
    b: object
    name: str
    scale: tuple
    translate: tuple
    model: str = ""
    method: str | None = None
    checkpoint: Path | None = None
    tile: int = 256
    overlap: int = 64
    batch: int = 6
    device: str = "auto"
    out: Path | None = None
    rgb: bool = False  # A is an RGB layer
    tint: Tint | None = None  # A's colormap and contrast limits, to colour the result with
    tint_b: Tint | None = None  # B's, when a source is shown in colour
    names: tuple[str, str] = ("A", "B")
    metadata: dict = field(default_factory=dict)

    @property
    def colour_out(self) -> bool:
        return self.rgb or self.tint is not None


class FuseWidget(ScrollingContainer):
    """Fuse two registered image layers, e.g. GFP fluorescence (A) with phase contrast (B)."""

    #: Results larger than this (bytes of float32 output) must go to a zarr file.
    in_memory_limit = 2 * 1024**3

    def __init__(self, viewer: napari.viewer.Viewer):  # napari injects the viewer by this annotation
        super().__init__()
        self._viewer = viewer
        self._add_sources()
        self._add_engine()
        self._add_tiling()
        self._add_output()
        self._add_folder()
        self.runner = Runner(self.run_button, self.progress, name="Run")
        self.folder_runner = Runner(self.folder_button, self.folder_progress, name="Fuse folder")
        persist(
            self,
            "fuse",
            ["model", "checkpoint", "device", "tile", "overlap", "batch", "stack", "output", "out_path", "gray_output"],
        )
        self._disable_missing_devices()  # after restoring: a device saved on another machine may be missing here
        self.model.changed.connect(self._on_model)
        self.device.changed.connect(self._on_device)
        self.output.changed.connect(self._on_output)
        self.run_button.changed.connect(self._on_run)
        self.folder_button.changed.connect(self._on_folder)
        self._on_model()
        self._on_device()
        self._on_output()

    def _add_sources(self) -> None:
        """Pick the two registered layers."""
        self.a = layer_picker(
            self._viewer, "Fluorescence (A)", "Functional image: GFP fluorescence, CT / PET / SPECT, infrared."
        )
        self.b = layer_picker(
            self._viewer, "Structure (B)", "Structural image registered to A: phase contrast, MRI, visible light."
        )
        self.channel_a, self.channel_b = (
            channel_picker(self._viewer, picker, side) for picker, side in ((self.a, "A"), (self.b, "B"))
        )
        self.extend([self.a, self.channel_a, self.b, self.channel_b])
        follow_pair(self._viewer, self.a, self.b, plane_over_stack=True, kept=self._two_channels)
        show_channels(self.channel_a)
        show_channels(self.channel_b)

    def _add_engine(self) -> None:
        """The model (or classical method) and where it runs."""
        self.model = refresh_on_open(
            ComboBox(
                label="Model",
                choices=lambda _widget=None: model_choices(),
                tooltip="Shipped models, models you fine-tuned, classical methods, or a checkpoint file.",
            )
        )
        self.checkpoint = FileEdit(
            label="Checkpoint",
            mode="r",
            filter="*.safetensors",
            nullable=True,
            visible=False,
            tooltip="A .safetensors checkpoint saved by fine-tuning (used with 'from file...').",
        )
        self.device = ComboBox(
            label="Device",
            choices=DEVICES,
            value="auto",
            tooltip="Where the network runs; devices missing on this machine are greyed out.",
        )
        self.backend = Label(label="Scan backend", tooltip="The selective-scan implementation the device will use.")
        self.extend([self.model, self.checkpoint, self.device, self.backend])

    def _add_tiling(self) -> None:
        """How the planes are cut into tiles, and which planes run."""
        self.tile = SpinBox(
            label="Tile",
            min=32,
            max=4096,
            step=32,
            value=256,
            tooltip="Tile edge in pixels (a multiple of 32); bigger tiles are faster but need more memory.",
        )
        self.overlap = SpinBox(
            label="Overlap",
            min=0,
            max=1024,
            step=8,
            value=64,
            tooltip="Pixels shared by neighbouring tiles, blended smoothly so no seams show.",
        )
        self.batch = SpinBox(
            label="Batch",
            min=1,
            max=256,
            value=6,
            tooltip="Tiles run together; Cancel takes effect after the current batch.",
        )
        self.stack = ComboBox(
            label="Stacks",
            choices=(WHOLE, PLANE),
            value=WHOLE,
            tooltip="For T / Z stacks: fuse every plane, or only the plane the viewer shows now.",
        )
        self.extend([self.tile, self.overlap, self.batch, self.stack])

    def _add_output(self) -> None:
        """Where the result goes, and the Run button."""
        self.output = ComboBox(
            label="Output",
            choices=(IN_MEMORY, TO_ZARR),
            value=IN_MEMORY,
            tooltip="A new layer held in memory, or a zarr file for big data (shown as a lazy layer while it fills).",
        )
        self.out_path = FileEdit(
            label="Zarr path",
            mode="w",
            filter="*.zarr",
            nullable=True,
            visible=False,
            tooltip="Where the fused zarr goes; an existing path is not overwritten.",
        )
        self.gray_output = CheckBox(
            label="Gray output",
            value=False,
            tooltip="Off: when A or B is shown in colour, a result coloured the way they are shown (their colormaps "
            "and contrast limits). On: the fused gray.",
        )
        self.run_button = PushButton(text="Run", tooltip="Fuse A with B; press again to cancel.")
        self.progress = ProgressBar(
            label="Progress",
            tooltip="Tiles fused so far, the time elapsed and about how long is left.",
        )
        self.extend([self.output, self.out_path, self.gray_output, self.run_button, self.progress])

    def _add_folder(self) -> None:
        """Fuse every pair of two folders matched by name, with the model and tiling above (what
        ``fusionmamba fuse-folder`` does): a pair that cannot be fused is reported and skipped."""
        self.folder_a = FileEdit(
            label="A folder", mode="d", tooltip="Folder of A images (fluorescence ...): NAME.tif, NAME.ome.zarr ..."
        )
        self.folder_b = FileEdit(
            label="B folder", mode="d", tooltip="Folder of B images under the same names (the extension may differ)."
        )
        self.folder_out = FileEdit(
            label="Output folder",
            mode="d",
            tooltip="Where NAME.ome.zarr (or NAME.ome.tif) go; outputs already there are kept.",
        )
        self.folder_format = ComboBox(
            label="Format", choices=("zarr", "tif"), value="zarr", tooltip="NAME.ome.zarr or NAME.ome.tif outputs."
        )
        self.folder_button = PushButton(
            text="Fuse folder", tooltip="Fuse every pair of the two folders; press again to cancel."
        )
        self.folder_progress = ProgressBar(label="Folder", tooltip="Tiles of the pair being fused.")
        self.folder_results = Table(label="Pairs", tooltip="Each name: fused, kept (already there), skipped or failed.")
        self.folder_results.visible = False
        self.folder_section = Container(
            label="Folder of pairs",
            widgets=[
                self.folder_a,
                self.folder_b,
                self.folder_out,
                self.folder_format,
                self.folder_button,
                self.folder_progress,
                self.folder_results,
            ],
        )
        self.folder_section.tooltip = "Fuse every pair of two folders matched by name, with the settings above."
        self.extend([self.folder_section])

    # --- view updates ---------------------------------------------------------------------

    def _disable_missing_devices(self) -> None:
        from ...model.devices import available_devices

        present = {"auto", *available_devices()}
        items = self.device.native.model()
        for row, name in enumerate(DEVICES):
            items.item(row).setEnabled(name in present)
        if self.device.value not in present:
            self.device.value = "auto"

    def _on_model(self, _value=None) -> None:
        self.checkpoint.visible = self.model.value == FROM_FILE
        network = not str(self.model.value).startswith("method:")
        for widget in (self.device, self.backend):  # classical methods run on the CPU, tiled alike
            widget.enabled = network

    def _two_channels(self) -> bool:
        """Whether one layer picked as A and B is meant: two of its channels are picked."""
        return self.channel_a.value != self.channel_b.value

    def _on_device(self, _value=None) -> None:
        self.backend.value = scan_backend(self.device.value)

    def _on_output(self, _value=None) -> None:
        self.out_path.visible = self.output.value == TO_ZARR

    # --- running --------------------------------------------------------------------------

    def _on_run(self, _value=None) -> None:
        self.runner.toggle(self._request, self._start)

    def _request(self) -> FuseRequest:
        """Check the layers and settings on the UI thread; an ``InputError`` names what is wrong."""
        a, b = self.a.value, self.b.value
        if a is None or b is None:
            raise InputError("Fuse: choose two image layers (Fluorescence (A) and Structure (B)).")
        channels = (self.channel_a.value, self.channel_b.value)
        data_a, data_b, shape = registered_pair(a, b, "Fuse", plane_over_stack=True, channels=channels)
        if not np.allclose(a.scale[-2:], b.scale[-2:]):
            raise InputError(
                f"Fuse: layers '{a.name}' (scale {_fmt(a.scale)}) and '{b.name}' (scale {_fmt(b.scale)}) "
                "have different pixel sizes."
            )
        # the result lies where the stack lies (A, when both are stacks or single images); a
        # picked channel's axis is no axis of the result
        dims = [len(spatial_shape(layer)) - (channel is not None) for layer, channel in zip((a, b), channels)]
        placed, channel = (a, channels[0]) if dims[0] == len(shape) else (b, channels[1])
        skip = channel is not None
        scale, translate = tuple(placed.scale)[skip:], list(placed.translate)[skip:]
        if self.stack.value == PLANE and len(shape) > 2:
            plane = current_plane(self._viewer, placed)[skip:]
            # one plane, kept where it was: its leading axes become length 1, its translate moves
            data_a, data_b = (
                data[plane].reshape((1,) * len(plane) + data.shape[len(plane) :]) if ndim > 2 else data
                for data, ndim in zip((data_a, data_b), dims)
            )
            for axis, index in enumerate(plane):
                translate[axis] += index * scale[axis]
        choice = str(self.model.value)
        names = tuple(layer.name + ("" if c is None else f" [{c}]") for layer, c in zip((a, b), channels))
        request = FuseRequest(
            a=data_a,
            b=data_b,
            name=f"fused({names[0]}, {names[1]})",  # the model's name follows once it is chosen
            scale=scale,
            translate=tuple(translate),
            tile=self.tile.value,
            overlap=self.overlap.value,
            batch=self.batch.value,
            device=self.device.value,
            rgb=a.rgb,
            names=names,
        )
        shown_in_colour = [not layer.colormap.name.startswith(("gray", "grey")) for layer in (a, b)]
        if not self.gray_output.value and not a.rgb and any(shown_in_colour):
            # both as shown: a coloured A over a gray B keeps B's pixels gray where A is dark
            request.tint, request.tint_b = (_tint_of(layer) for layer in (a, b))
        self._choose_engine(request, choice)
        request.name += f" · {request.method or (request.checkpoint.stem if request.checkpoint else request.model)}"
        self._choose_output(request, shape)
        request.metadata = {
            "fused_from": list(names),
            "model": choice if request.checkpoint is None else str(request.checkpoint),
            "tile": request.tile,
            "overlap": request.overlap,
            "batch": request.batch,
        }
        if request.tint is not None:
            request.metadata["tint"] = {
                side: {"colormap": layer.colormap.name, "contrast_limits": list(layer.contrast_limits)}
                for side, layer in (("A", a), ("B", b))
            }
        return request

    def _on_folder(self, _value=None) -> None:
        self.folder_runner.toggle(self._folder_request, self._start_folder)

    def _folder_request(self) -> FolderRequest:
        """The folders and the engine and tiling chosen above, checked on the UI thread."""
        folders = [self.folder_a.value, self.folder_b.value, self.folder_out.value]
        if any(not folder or not str(folder).strip(". ") for folder in folders):
            raise InputError("Fuse folder: choose the A folder, the B folder and the output folder.")
        engine = FuseRequest(a=None, b=None, name="", scale=(), translate=())
        self._choose_engine(engine, str(self.model.value))
        a_dir, b_dir, out_dir = (Path(folder) for folder in folders)
        return FolderRequest(
            a_dir,
            b_dir,
            out_dir,
            output_format=self.folder_format.value,
            model=None if engine.method else str(engine.checkpoint or engine.model),
            method=engine.method,
            tile=self.tile.value,
            overlap=self.overlap.value,
            batch=self.batch.value,
            device=self.device.value,
        )

    def _start_folder(self, request: FolderRequest) -> None:
        self.folder_runner.start(
            lambda progress, cancelled: run_folder(request, progress, cancelled),
            on_result=self._show_folder,
            what=f"Fusing the pairs of {request.a_dir.name} and {request.b_dir.name}",
            unit="tiles of this pair",
        )

    def _show_folder(self, report) -> None:
        """Each name's outcome in the table; failures stay listed with their one-line reason."""
        self.folder_results.value = {
            "data": [[r.status, r.message] for r in report.results],
            "index": [r.name for r in report.results],
            "columns": ["status", "what happened"],
        }
        self.folder_results.visible = True
        show_info(f"Fuse folder: {report.summary()}")

    def _choose_engine(self, request: FuseRequest, choice: str) -> None:
        """The model, checkpoint file or classical method picked in the Model list."""
        if choice.startswith("method:"):
            request.method = choice.split(":", 1)[1]
        elif choice == FROM_FILE:
            if not self.checkpoint.value or not Path(self.checkpoint.value).is_file():
                raise InputError(f"Fuse: checkpoint file '{self.checkpoint.value or ''}' not found.")
            request.checkpoint = Path(self.checkpoint.value)
        else:
            request.model = choice.split(":", 1)[1]

    def _choose_output(self, request: FuseRequest, shape: tuple[int, ...]) -> None:
        """A new zarr path, or a new layer when the result fits the in-memory limit."""
        if self.output.value == TO_ZARR:
            if not self.out_path.value:
                raise InputError("Fuse: choose a zarr path for the output, or output to a new layer.")
            request.out = free_path(self.out_path.value)  # never over an earlier result
            return
        size = int(np.prod(shape, dtype=np.int64)) * 4 * (3 if request.colour_out else 1)
        if size > self.in_memory_limit:
            raise InputError(
                f"Fuse: {request.name} would take {size / 1024**2:.0f} MB, more than the "
                f"in-memory limit of {self.in_memory_limit / 1024**2:.0f} MB; choose Output: zarr file."
            )

    def _start(self, request: FuseRequest) -> None:
        self._live = None

        def job(progress, cancelled):
            return run_fusion(request, progress, cancelled)

        self.runner.start(
            job,
            on_result=lambda result: self._add_result(request, result),
            on_progress=lambda done, total: self._on_fill(request, done, total),
            on_stop=lambda: self._on_stop(request),
            what=f"Fusing {request.name}",
            unit="tiles",
        )

    def _on_fill(self, request: FuseRequest, done: int, total: int) -> None:
        """Show a zarr output as a lazy layer while it fills (from the run's partial store)."""
        if request.out is None:
            return
        if self._live is None:
            store = _partial_store(request.out)
            if (store / ".zattrs").exists():
                data = _open_lazy(store, request.colour_out)
                self._live = self._viewer.add_image(data, **_layer_options(request, data))
        else:
            self._live.refresh()

    def _add_result(self, request: FuseRequest, outcome) -> None:
        result, engine = outcome
        request.metadata = {**request.metadata, "engine": engine}  # model name, version, parameters
        if request.out is None:
            self._viewer.add_image(result, **_layer_options(request))
            return
        data = _open_lazy(request.out, request.colour_out)  # the finished store, moved into place
        if self._live is None or isinstance(data, list) != self._live.multiscale:
            if self._live is not None:
                self._viewer.layers.remove(self._live)
            self._viewer.add_image(data, **_layer_options(request, data))
        else:
            self._live.data = data
            self._live.metadata = request.metadata
        self._live = None
        show_info(f"{request.name}: {result.summary()}")  # where, how big, how long, chunks resumed

    def _on_stop(self, request: FuseRequest) -> None:
        """A cancelled or failed zarr run leaves no half layer behind (its partial store stays
        beside the output so the same run resumes where it stopped)."""
        if self._live is not None:
            if self._live in self._viewer.layers:
                self._viewer.layers.remove(self._live)
            self._live = None


def run_fusion(request: FuseRequest, progress, cancelled):
    """The worker's job: fuse in memory or into zarr (never touches the viewer). The library loads
    the model by name or path and keeps it loaded for the next run. Returns the fused array (or
    the file's report) and what fused it (``describe_engine``)."""
    from ...engine import describe_engine, fuse, fuse_files

    options = dict(
        tile=request.tile,
        overlap=request.overlap,
        batch=request.batch,
        device=request.device,
        progress=progress,
        cancel=cancelled,
        method=request.method,
        model=None if request.method else str(request.checkpoint or request.model),
        tint=request.tint,
        tint_b=request.tint_b,
    )
    # Named, placed sources: errors name the layers, a zarr output keeps the scale and translate.
    a, b = (
        _as_image(data, name, request.scale, request.translate, rgb)
        for data, name, rgb in zip((request.a, request.b), request.names, (request.rgb, False))
    )
    if request.out is not None:
        report = fuse_files(a, b, str(request.out), **options)
        return report, report.engine
    return fuse(a, b, **options), describe_engine(options["model"], options["method"])


@dataclass
class FolderRequest:
    """A folder run: the three folders, the output format and the engine and tiling."""

    a_dir: Path
    b_dir: Path
    out_dir: Path
    output_format: str = "zarr"
    model: str | None = None
    method: str | None = None
    tile: int = 256
    overlap: int = 64
    batch: int = 6
    device: str = "auto"


def run_folder(request: FolderRequest, progress, cancelled):
    """The worker's job: ``engine.fuse_folder`` (never touches the viewer); returns its report."""
    from ...engine import FuseOptions, fuse_folder

    options = FuseOptions(
        model=request.model,
        method=request.method,
        tile=request.tile,
        overlap=request.overlap,
        batch=request.batch,
        device=request.device,
    )
    return fuse_folder(
        request.a_dir,
        request.b_dir,
        request.out_dir,
        options,
        progress=lambda _name, done, total: progress(done, total),
        output_format=request.output_format,
        cancel=cancelled,
    )


def _as_image(data, name: str, scale, translate, rgb: bool):
    """A layer's data as the library's image type, with napari's own word on colour."""
    from ...io import OpenedImage, guess_axes

    try:
        axes = guess_axes(data.shape, colour=rgb)
    except InputError as error:
        raise InputError(f"layer '{name}': {error}") from None
    return OpenedImage(
        data=data,
        pixel_size=tuple(float(s) for s in scale),
        axes=axes,
        path=name,
        origin=tuple(float(t) for t in translate),
    )


def _layer_options(request: FuseRequest, data=None) -> dict:
    return dict(
        multiscale=isinstance(data, list),
        name=request.name,
        scale=request.scale,
        translate=request.translate,
        rgb=request.colour_out,
        metadata=request.metadata,
        contrast_limits=(0, 1),
        colormap="gray",
    )


def _partial_store(out: Path) -> Path:
    from ...engine.resume import PARTIAL_SUFFIX

    return Path(f"{out}{PARTIAL_SUFFIX}") / "out.zarr"


def _open_lazy(path: Path, rgb: bool):
    """The fused store as dask arrays in napari's axis order (colour last): a list of levels
    (full resolution first) when the store has a pyramid."""
    import dask.array as da

    from ...io import open_image

    image = open_image(path)
    levels = image.levels or [image.data]
    if rgb and "C" in image.axes:
        levels = [da.moveaxis(level, image.axes.index("C"), -1) for level in levels]
    return levels if len(levels) > 1 else levels[0]


def _tint_of(layer) -> Tint:
    """How a gray layer is shown (its colormap over its contrast limits), as plain data."""
    return colormap_tint(layer.colormap.colors, layer.colormap.controls, layer.contrast_limits)


def _fmt(values) -> str:
    return ", ".join(f"{v:g}" for v in values)
