"""The "Fine-tune" widget: a thin shell over ``train.finetune``.

The widget turns layers into arrays on the UI thread (Labels as they are, Shapes rasterised to a
mask), hands them with the settings to a thread worker, and shows what the worker reports: a
progress bar, a live plot of the loss terms (training and validation) and, on validation steps,
a preview layer of the current fusion placed over the validation crop. Train becomes Stop; a
stopped run keeps its last state, and Resume continues it from there. When the run ends (or is
stopped) its best model is registered under the chosen name, and every docked widget's choices
are refreshed so Fuse lists it. Below, models are exported to and imported from bioimage.io
packages (``share.ShareModels``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal

from ...errors import FusionMambaError, InputError
from ._common import (
    Runner,
    ScrollingContainer,
    current_plane,
    follow_pair,
    full_resolution,
    layer_picker,
    persist,
    refresh_models,
    registered_pair,
)
from .share import ShareModels

if TYPE_CHECKING:
    import napari

    from ...training import Pair, TrainResult, TrainSettings

NO_MASK = "(whole image)"
SCRATCH = "scratch"
PREVIEW = "fine-tune preview"
DEVICES = ("auto", "cpu", "cuda", "mps")
#: ``training.OBJECTIVES``' names, written out so that opening the widget does not import torch.
OBJECTIVE_NAMES = ("paper", "keep-both")


def base_choices() -> list[str]:
    from ...registry import list_models

    return [entry.name for entry in list_models()] + [SCRATCH]


@dataclass
class FinetuneRequest:
    """What the worker needs, taken from the viewer on the UI thread."""

    pairs: list[Pair] = field(default_factory=list)  # with arrays
    places: list[Any] = field(default_factory=list)  # (scale, translate) of each pair's A layer
    settings: TrainSettings | None = None
    out: Path | None = None
    name: str = ""


class _Steps(QObject):
    """Carries each StepInfo from the worker thread to the UI thread."""

    step = Signal(object)


class PairRow(Container):
    """One pair: image A, image B, an optional Labels / Shapes mask, and a Remove button."""

    def __init__(self, viewer, on_remove):
        super().__init__(layout="horizontal", labels=False)
        from napari.layers import Labels, Shapes

        self.a = layer_picker(viewer, "A", "Functional image (GFP, CT, PET, SPECT, infrared).")
        self.b = layer_picker(viewer, "B", "Structural image registered to A (phase contrast, MRI, visible).")
        self.mask = layer_picker(
            viewer,
            "Mask",
            "Region to train on: a Labels layer (label 2 = important detail, weighted more) or "
            "a Shapes layer of rectangles / polygons. Crops are taken only inside it.",
            layer_type=(Labels, Shapes),
            none=NO_MASK,
        )
        self.remove = PushButton(text="Remove")
        self.remove.changed.connect(lambda _v=None: on_remove(self))
        self.extend([self.a, self.b, self.mask, self.remove])
        follow_pair(viewer, self.a, self.b)


class FinetuneWidget(ScrollingContainer):
    """Fine-tune a model on pairs of image layers, with optional region masks."""

    def __init__(self, viewer: napari.viewer.Viewer):  # napari injects the viewer by this annotation
        super().__init__()
        self._viewer = viewer
        self.rows = Container(labels=False)
        self.add_pair = PushButton(text="Add pair", tooltip="Train on one more pair of image layers.")
        self.base = ComboBox(
            label="Start from",
            choices=lambda _w=None: base_choices(),
            tooltip="A shipped or fine-tuned model, or 'scratch' (a new network of the 'tiny' config).",
        )
        self.steps = SpinBox(label="Steps", min=1, max=1_000_000, value=300, tooltip="Training steps.")
        self.crop = SpinBox(
            label="Crop", min=32, max=1024, step=32, value=128, tooltip="Edge of the square training crops, in pixels."
        )
        self.batch = SpinBox(label="Batch", min=1, max=64, value=2, tooltip="Crops per step.")
        self.lr = LineEdit(label="Learning rate", value="2e-4", tooltip="Peak learning rate (after warm-up).")
        self.run_dir = FileEdit(
            label="Run folder",
            mode="d",
            nullable=True,
            tooltip="Where checkpoints and the log go (default: a new folder in your user data folder).",
        )
        self.model_name = LineEdit(
            label="Save as", value="", tooltip="Name of the fine-tuned model in every model list."
        )
        self.expert = CheckBox(text="Expert settings", value=False)
        self.expert_box = self._expert_settings()
        self.train_button = PushButton(text="Train", tooltip="Start training; press again to stop (the run is saved).")
        self.resume_button = PushButton(
            text="Resume",
            visible=False,
            tooltip="Continue the stopped run from its last save, with the pairs and settings it started with.",
        )
        self.progress = ProgressBar(label="Progress")
        self.status = Label(value="")
        self.share = ShareModels(viewer)
        self.extend([
            self.rows, self.add_pair, self.base, self.steps, self.crop, self.batch, self.lr,
            self.run_dir, self.model_name, self.expert, self.expert_box, self.train_button, self.resume_button,
            self.progress, self.status, self.share,
        ])  # fmt: skip
        self._plot = LossPlot()
        self.contents.layout().addWidget(self._plot.canvas)

        self.runner = Runner(self.train_button, self.progress, name="Train", stopping="Stopping...")
        self.history: list = []  # StepInfo of the current run
        self.result: TrainResult | None = None  # the last run's
        self._steps = _Steps()
        self._steps.step.connect(self._on_step)
        self.add_pair.changed.connect(lambda _v=None: self._add_row())
        self.expert.changed.connect(lambda value: setattr(self.expert_box, "visible", bool(value)))
        self.train_button.changed.connect(self._on_train)
        self.resume_button.changed.connect(self._on_resume)
        persist(self, "finetune", ["base", "steps", "crop", "batch", "lr", "device", "val_every"])
        self._add_row()

    def _expert_settings(self) -> Container:
        """The objective, its weights, validation and device: hidden until "Expert settings" is
        ticked."""
        self.objective = ComboBox(
            label="Objective",
            choices=OBJECTIVE_NAMES,
            value="paper",
            tooltip="paper: the published loss (close to max(a, b)); keep-both: adds the fluorescence "
            "to the structural image so neither is lost (docs/finetune.md).",
        )
        self.loss_intensity = FloatSpinBox(label="Intensity weight", min=0, max=1000, value=10.0)
        self.loss_texture = FloatSpinBox(label="Texture weight", min=0, max=1000, value=1.0)
        self.loss_structure = FloatSpinBox(label="Structure weight", min=0, max=1000, value=10.0)
        self.region_weight = FloatSpinBox(
            label="Label 2 weight",
            min=0.1,
            max=100,
            value=2.0,
            tooltip="Loss weight of pixels labelled 2 ('important detail').",
        )
        self.val_fraction = FloatSpinBox(
            label="Validation share",
            min=0.05,
            max=0.45,
            step=0.05,
            value=0.15,
            tooltip="Share of each marked region held out for validation.",
        )
        self.val_every = SpinBox(
            label="Validate every",
            min=1,
            max=100_000,
            value=25,
            tooltip="Steps between validations (and preview updates).",
        )
        self.device = ComboBox(label="Device", choices=DEVICES, value="auto")
        return Container(widgets=[
            self.objective, self.loss_intensity, self.loss_texture, self.loss_structure, self.region_weight,
            self.val_fraction, self.val_every, self.device,
        ], visible=False)  # fmt: skip

    # --- pairs ----------------------------------------------------------------------------

    def _add_row(self) -> PairRow:
        row = PairRow(self._viewer, self._remove_row)
        self.rows.append(row)
        return row

    def _remove_row(self, row: PairRow) -> None:
        if len(self.rows) > 1:
            self.rows.remove(row)

    # --- running --------------------------------------------------------------------------

    def _on_train(self, _value=None) -> None:
        self.runner.toggle(self._request, self._start)

    def _request(self) -> FinetuneRequest:
        """Layers to arrays and settings, checked on the UI thread; an ``InputError`` says what is wrong."""
        from ...registry import check_model_name, list_models
        from ...training import Pair, TrainSettings, check_settings

        request = FinetuneRequest()
        for index, row in enumerate(self.rows):
            a, b = row.a.value, row.b.value
            if a is None or b is None:
                raise InputError(f"Fine-tune: pair {index + 1}: choose two image layers.")
            data_a, data_b, shape = registered_pair(a, b, "Fine-tune")
            # a T / Z stack trains on the plane the viewer shows
            plane = current_plane(self._viewer, a)
            name = f"{a.name} + {b.name}" + (f" at {plane}" if plane else "")
            mask = _mask_array(row.mask.value, shape, plane)
            request.pairs.append(Pair(np.asarray(data_a[plane]), np.asarray(data_b[plane]), mask, name=name))
            request.places.append((tuple(a.scale), tuple(a.translate)))
        try:
            lr = float(self.lr.value)
        except ValueError:
            raise InputError(f"Fine-tune: learning rate '{self.lr.value}' is not a number.") from None
        base = self.base.value
        request.settings = TrainSettings(
            steps=self.steps.value, crop=self.crop.value, batch=self.batch.value, lr=lr,
            base=base, config="tiny", device=self.device.value, val_every=self.val_every.value,
            val_fraction=self.val_fraction.value, region_weight=self.region_weight.value,
            objective=self.objective.value,
            loss_weights=(self.loss_intensity.value, self.loss_texture.value, self.loss_structure.value),
            log_every=1,
        )  # fmt: skip
        check_settings(request.settings)
        request.name = self.model_name.value.strip() or f"finetuned-{time.strftime('%Y%m%d-%H%M%S')}"
        check_model_name(request.name)
        if request.name in {e.name for e in list_models()}:
            raise InputError(f"Fine-tune: a model named '{request.name}' exists; choose another name.")
        request.out = Path(self.run_dir.value) if self.run_dir.value else None
        return request

    def _on_resume(self, _value=None) -> None:
        if not self.runner.running and self.result is not None and self.result.cancelled:
            self._start(self._request_now, resume=True)

    def _start(self, request: FinetuneRequest, resume: bool = False) -> None:
        """Train on ``request``, or with ``resume`` continue the stopped run of that request
        (the plot keeps its history)."""
        from ...training import default_run_dir, finetune

        if resume:
            assert self.result is not None  # Resume shows only after a stopped run
            out = self.result.run_dir
        else:
            assert request.settings is not None  # prepare() always sets them
            self.history = []
            self.result = None
            self._request_now = request
            self._plot.reset(request.settings.loss_weights)
            out = request.out or default_run_dir()
        self.resume_button.visible = False
        emit = self._steps.step.emit
        outcome = {}

        def job(progress, cancelled):
            def on_step(info):
                progress(info.step, info.steps)
                emit(info)

            outcome["result"] = finetune(
                request.pairs, request.settings, out, resume=resume, on_step=on_step, cancel=cancelled
            )
            return outcome["result"]

        self.runner.start(
            job,
            on_result=lambda _result: None,
            on_stop=lambda: self._finish(request, outcome.get("result"), replace=resume),
            what="Fine-tuning",
        )
        self.train_button.text = "Stop"
        self.status.value = f"training into {out}"

    def _on_step(self, info) -> None:
        """UI thread: plot, status line and, on validation steps, the preview layer."""
        self.history.append(info)
        self._plot.add(info)
        text = f"step {info.step}/{info.steps}  loss {info.terms['loss']:.4f}"
        if info.val_terms:
            text += f"  validation {info.val_terms['loss']:.4f}"
        self.status.value = text
        if info.preview is not None:
            self._show_preview(info)

    def _show_preview(self, info) -> None:
        pair, y, x = info.preview_origin
        scale, translate = self._request_now.places[pair]
        place = tuple(t + o * s for t, o, s in zip(translate[-2:], (y, x), scale[-2:]))
        if PREVIEW in self._viewer.layers:
            layer = self._viewer.layers[PREVIEW]
            layer.data = info.preview
            layer.translate = place
        else:
            self._viewer.add_image(
                info.preview, name=PREVIEW, scale=scale[-2:], translate=place, colormap="gray", contrast_limits=(0, 1)
            )

    def _finish(self, request: FinetuneRequest, result, replace: bool = False) -> None:
        """Register the best model (also of a stopped run; ``replace`` its earlier registration
        when a resumed run ends) and refresh every docked widget's lists."""
        from ...registry import register_model

        self.train_button.text = "Train"
        if result is not None:
            self.result = result
        # a failed resume leaves the stopped run as it was: it can still be resumed
        self.resume_button.visible = self.result is not None and self.result.cancelled
        if result is None:
            return
        try:
            entry = register_model(result.best, request.name, overwrite=replace)
        except FusionMambaError as error:
            show_error(f"Fine-tune: the run is in {result.run_dir}, but registering it failed: {error}")
            return
        refresh_models(self._viewer)
        self.base.reset_choices()
        how = "stopped" if result.cancelled else "done"
        self.status.value = f"{how} at step {result.step}; saved as model '{entry.name}'"
        show_info(f"Fine-tuning {how}: model '{entry.name}' (run folder {result.run_dir})")


def _mask_array(layer, shape, plane: tuple[int, ...] = ()) -> np.ndarray | None:
    """The mask of the images' ``plane`` (their leading indices; ``shape`` is the images' whole
    shape): a Labels layer's data, or a Shapes layer rasterised (every shape = 1). A 2-D mask
    serves every plane of a stack."""
    if layer is None:
        return None
    from napari.layers import Shapes

    if isinstance(layer, Shapes):
        if not len(layer.data):
            raise InputError(f"Fine-tune: the Shapes layer '{layer.name}' has no shapes.")
        data = np.any(layer.to_masks(mask_shape=shape[-layer.ndim :]), axis=0).astype(np.uint8)
    else:
        data = full_resolution(layer)
    if data.shape not in (tuple(shape), tuple(shape[-2:])):
        raise InputError(f"Fine-tune: mask layer '{layer.name}' has shape {data.shape}, the images {tuple(shape)}.")
    return np.asarray(data[plane] if data.ndim > 2 else data)


class LossPlot:
    """Training and validation loss terms against the step, on a log scale (matplotlib's Qt canvas)."""

    #: The paper objective's terms, plotted weighted so the parts add up to the total; the terms
    #: of other objectives are plotted as they come.
    PAPER_TERMS = ("loss", "intensity", "texture", "structure")

    def __init__(self):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 2.6), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(200)
        self.axes = self.figure.add_subplot(1, 1, 1)
        self._drawn = 0.0
        self.reset((10.0, 1.0, 10.0))

    def reset(self, weights) -> None:
        self.weights = dict(zip(self.PAPER_TERMS, (1.0, *weights)))
        self.axes.clear()
        self.axes.set_xlabel("step")
        self.axes.set_yscale("log")
        self.train: dict[str, Any] = {}
        self.val: dict[str, Any] = {}
        self.canvas.draw_idle()

    def _lines(self, term: str) -> tuple[Any, Any]:
        """The training line and validation dots of ``term``, made on its first value."""
        if term not in self.train:
            self.train[term] = line = self.axes.plot([], [], label=term, lw=1)[0]
            self.val[term] = self.axes.plot([], [], "o--", color=line.get_color(), ms=3, lw=0.8)[0]
            self.axes.legend(
                fontsize="x-small", loc="upper right", title="lines: train, dots: validation", title_fontsize="x-small"
            )
        return self.train[term], self.val[term]

    def add(self, info) -> None:
        for term, value in info.terms.items():
            weight = self.weights.get(term, 1.0)
            line, dots = self._lines(term)
            line.set_data([*line.get_xdata(), info.step], [*line.get_ydata(), max(value * weight, 1e-8)])
            if info.val_terms and term in info.val_terms:
                dots.set_data(
                    [*dots.get_xdata(), info.step], [*dots.get_ydata(), max(info.val_terms[term] * weight, 1e-8)]
                )
        now = time.perf_counter()
        if now - self._drawn > 0.25 or info.step == info.steps or info.val_terms:
            self.axes.relim()
            self.axes.autoscale_view()
            self.canvas.draw_idle()
            self._drawn = now
