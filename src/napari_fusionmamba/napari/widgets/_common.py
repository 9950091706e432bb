"""Pieces every widget of the plugin shares: layer pickers, the background runner, saved settings.

Widgets stay thin shells over the library: they collect parameters, hand one job to ``Runner``
(which runs it in a napari thread worker, off the UI thread) and turn its result into layers.
The job never touches the viewer; only the callbacks here, on the UI thread, do.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from magicgui.widgets import ComboBox, Container, ProgressBar, PushButton
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QEvent, QObject, Qt, Signal

from ...errors import FusionCancelled, FusionMambaError, InputError
from ...io.files import atomic_path

SETTINGS_ENV = "NAPARI_FUSIONMAMBA_SETTINGS_DIR"


# --- layer pickers --------------------------------------------------------------------------


def full_resolution(layer):
    """A layer's data, or its first level when it is multiscale."""
    return layer.data[0] if layer.multiscale else layer.data


def current_plane(viewer, layer) -> tuple[int, ...]:
    """Data indices, on ``layer``'s leading (non-spatial) axes, of the plane the viewer shows."""
    shape = full_resolution(layer).shape
    leading = len(shape) - 2 - bool(getattr(layer, "rgb", False))
    point = layer.world_to_data(viewer.dims.point[-layer.ndim :])
    return tuple(int(min(max(round(p), 0), n - 1)) for p, n in zip(point[:leading], shape[:leading]))


def spatial_shape(layer) -> tuple[int, ...]:
    """A layer's shape without its colour axis."""
    shape = full_resolution(layer).shape
    return tuple(shape[:-1] if getattr(layer, "rgb", False) else shape)


def fits(a, b, plane_over_stack: bool = False) -> bool:
    """Whether layers A and B can be fused: one shape, or (``plane_over_stack``) one image over a
    stack of images of its size."""
    return _shapes_fit(spatial_shape(a), spatial_shape(b), plane_over_stack)


def _shapes_fit(shape_a: tuple[int, ...], shape_b: tuple[int, ...], plane_over_stack: bool) -> bool:
    if shape_a == shape_b:
        return True
    return plane_over_stack and shape_a[-2:] == shape_b[-2:] and min(len(shape_a), len(shape_b)) == 2


#: First-axis labels (``layer.axis_labels``, lower case) that make it a channel axis.
CHANNEL_LABELS = ("c", "ch", "channel", "channels")


def channel_count(layer) -> int:
    """How many channels a layer holds along its first axis: only a layer whose first axis is
    labelled a channel one (``viewer.add_image(data, axis_labels=("c", "y", "x"))``, a reader
    that keeps channels together) has any. 0 otherwise, nothing to pick: a Z or T stack (napari's
    unlabelled axes, as ``io.guess_axes`` reads a 3-D array) is fused plane by plane, and the
    colour of an RGB layer is no channel axis."""
    if layer is None or getattr(layer, "rgb", False):
        return 0
    shape, labels = spatial_shape(layer), tuple(getattr(layer, "axis_labels", ()))
    if len(shape) < 3 or not labels or str(labels[0]).lower() not in CHANNEL_LABELS:
        return 0
    return shape[0]


def channel_picker(viewer, layers: ComboBox, side: str) -> ComboBox:
    """A list of the channels of the layer picked in ``layers`` (see :func:`channel_count`), after
    "all channels" (each channel fused in turn): one multichannel layer can then give both A and
    B. It lists the picked layer's again whenever the pick or the layer list changes; call
    :func:`show_channels` once it sits in its container."""
    picker = ComboBox(
        label=f"Channel ({side})",
        choices=lambda _widget=None: (
            [("all channels", None)] + [(str(i), i) for i in range(channel_count(layers.value))]
        ),
        tooltip=f"For a layer with a channel axis: every channel in turn, or the one to use as {side}, "
        "e.g. fluorescence and phase contrast as two channels of one image.",
        visible=False,
    )

    def refresh(_event=None):
        show_channels(picker)

    layers.changed.connect(refresh)
    inserted = viewer.layers.events.inserted
    inserted.connect(refresh, position="last")  # after the layer pickers have settled
    picker.native.destroyed.connect(lambda *_: inserted.disconnect(refresh))
    return picker


def show_channels(picker: ComboBox) -> None:
    """List the channels again; the list shows only for a layer that has several."""
    picker.reset_choices()
    picker.visible = len(picker.choices) > 1


def registered_pair(
    a, b, who: str, plane_over_stack: bool = False, channels: tuple[int | None, int | None] = (None, None)
) -> tuple[Any, Any, tuple[int, ...]]:
    """The full-resolution data of image layers A and B (one channel of each, when ``channels``
    picks one along a multichannel layer's first axis) and the shape of their result without the
    colour axis, after the checks every widget makes: two layers (or two channels of one), one
    shape, and a gray B. An ``InputError`` names the layers, after ``who`` (the widget).

    With ``plane_over_stack``, a single image may go with every plane of a stack (a MAP2
    projection over a Z stack of phase-contrast planes, say): the result has the stack's shape.
    """
    if a is b and channels[0] == channels[1]:
        raise InputError(f"{who}: layer '{a.name}' is chosen as both A and B; choose two different layers.")
    if b.rgb:
        raise InputError(f"{who}: the structure layer '{b.name}' is RGB; choose a gray image for B.")
    views = []
    for layer, channel in zip((a, b), channels):
        data, shape = full_resolution(layer), spatial_shape(layer)
        if channel is not None:
            data, shape = data[channel], shape[1:]
        views.append((data, shape))
    (data_a, shape_a), (data_b, shape_b) = views
    if not _shapes_fit(shape_a, shape_b, plane_over_stack):
        raise InputError(
            f"{who}: layers '{a.name}' {shape_a} and '{b.name}' {shape_b} differ in shape; "
            "they must be registered images of the same size."
        )
    return data_a, data_b, max(shape_a, shape_b, key=len)


def _looks_gray(layer) -> bool:
    return not layer.rgb and layer.colormap.name.startswith(("gray", "grey"))


def choose_pair(
    a: ComboBox, b: ComboBox, plane_over_stack: bool = False, kept: Callable[[], bool] = lambda: False
) -> None:
    """Unless the user picked two different layers, point pickers ``a`` and ``b`` at two different
    image layers that fit together: a coloured layer (fluorescence) for A and a gray one for B
    when there are such."""
    from itertools import permutations

    if a.value is not None and b.value is not None and (a.value is not b.value or kept()):
        return
    images = [layer for layer in a.choices if layer is not None]
    pairs = [(x, y) for x, y in permutations(images, 2) if not y.rgb and fits(x, y, plane_over_stack)]
    if pairs:
        a.value, b.value = max(pairs, key=lambda p: (not _looks_gray(p[0])) + _looks_gray(p[1]))


def follow_pair(
    viewer, a: ComboBox, b: ComboBox, plane_over_stack: bool = False, kept: Callable[[], bool] = lambda: False
) -> None:
    """``choose_pair`` now and whenever layers are added (a sample opened after the widget);
    ``kept()`` says when one layer picked as both A and B is the user's choice (two channels)."""

    def choose(_event=None):
        a.reset_choices()  # the new layer may not be listed yet
        b.reset_choices()
        choose_pair(a, b, plane_over_stack, kept)

    choose()
    viewer.layers.events.inserted.connect(choose, position="last")
    a.native.destroyed.connect(lambda *_: viewer.layers.events.inserted.disconnect(choose))


def layer_picker(viewer, label: str, tooltip: str, layer_type=None, none: str | None = None) -> ComboBox:
    """A combo box of the viewer's layers (of ``layer_type``, a class or tuple of classes; images
    by default), led by a ``none`` entry (value None) when one is named.

    Its choices follow the layer list (added, removed, reordered, renamed layers), whether or not
    the widget is docked in the viewer.
    """
    from napari.layers import Image

    kind = layer_type or Image
    first = [(none, None)] if none is not None else []

    def choices(_widget=None):
        return first + [(layer.name, layer) for layer in viewer.layers if isinstance(layer, kind)]

    picker = ComboBox(label=label, choices=choices, tooltip=tooltip, nullable=False)
    emitters = [getattr(viewer.layers.events, name) for name in ("inserted", "removed", "reordered")]

    def refresh(event=None):
        picker.reset_choices()
        layer = getattr(event, "value", None)
        if getattr(event, "type", "") == "inserted" and isinstance(layer, kind):
            layer.events.name.connect(refresh)
            emitters.append(layer.events.name)

    def disconnect(*_):
        """Once the widget is gone, stop listening (a closed widget must not react to layers)."""
        for emitter in emitters:
            emitter.disconnect(refresh)

    for layer in viewer.layers:
        if isinstance(layer, kind):
            emitters.append(layer.events.name)
    for emitter in emitters:
        emitter.connect(refresh)
    picker.native.destroyed.connect(disconnect)
    return picker


class _RefreshOnOpen(QObject):
    """Event filter: recompute a combo box's choices just before its list opens."""

    def __init__(self, combo: ComboBox):
        super().__init__(combo.native)  # lives and dies with the Qt widget
        self._combo = combo

    def eventFilter(self, watched, event):
        if event.type() in (QEvent.MouseButtonPress, QEvent.KeyPress):
            self._combo.reset_choices()
        return False


def refresh_on_open(combo: ComboBox) -> ComboBox:
    """Recompute ``combo``'s choices each time the user opens it (e.g. models registered since
    the widget opened, by the Fine-tune widget or the command line)."""
    combo.native.installEventFilter(_RefreshOnOpen(combo))
    return combo


def refresh_models(viewer) -> None:
    """Refresh every docked widget's choices, so a model registered just now is listed."""
    for widget in getattr(viewer.window, "dock_widgets", {}).values():  # napari >= 0.5
        if hasattr(widget, "reset_choices"):
            widget.reset_choices()


# --- docks -----------------------------------------------------------------------------------


class ScrollingContainer(Container):
    """A Container in a scroll area, so its dock fits a small screen (1366 x 768) however many
    fields it has, and however wide they are (a metric table, a row of pickers): it scrolls
    sideways too, where magicgui's vertical scroll area would cut them off.

    napari docks a widget's ``native``; magicgui's ``scrollable`` keeps the scroll area apart
    (``root_native_widget``), so ``native`` is that scroll area here.
    """

    def __init__(self, **kwargs):
        super().__init__(scrollable=True, **kwargs)
        self.root_native_widget.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)

    @property
    def native(self):
        return self.root_native_widget

    @property
    def contents(self):
        """The Qt widget inside the scroll area that holds the fields (and their layout)."""
        return self.root_native_widget.widget()


# --- saved parameters -----------------------------------------------------------------------


def settings_dir() -> Path:
    """Where widget parameters are kept between sessions (env NAPARI_FUSIONMAMBA_SETTINGS_DIR wins)."""
    override = os.environ.get(SETTINGS_ENV)
    if override:
        return Path(override)
    from platformdirs import user_config_dir

    return Path(user_config_dir("napari-fusionmamba", appauthor=False))


def load_settings(name: str) -> dict:
    """The saved parameters of widget ``name``; an unreadable file counts as none saved."""
    path = settings_dir() / f"{name}.json"
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return values if isinstance(values, dict) else {}


def save_settings(name: str, values: dict) -> None:
    """Write atomically, so a crash never leaves a half-written settings file."""
    with atomic_path(settings_dir() / f"{name}.json") as tmp:
        tmp.write_text(json.dumps(values, indent=1, sort_keys=True))


def persist(container: Container, name: str, fields: list[str]) -> None:
    """Restore ``fields`` of ``container`` from the settings file and save them on every change.

    Values are stored as JSON: numbers, strings and paths (as strings). A saved value that the
    widget no longer accepts (a model that was removed, say) is skipped.
    """
    saved = load_settings(name)
    for field in fields:
        if field in saved:
            with contextlib.suppress(ValueError, TypeError):
                getattr(container, field).value = saved[field]

    def save(_event=None):
        values = {}
        for field in fields:
            value = getattr(container, field).value
            values[field] = str(value) if isinstance(value, Path) else value
        save_settings(name, values)

    for field in fields:
        getattr(container, field).changed.connect(save)


# --- background work ------------------------------------------------------------------------


class _Progress(QObject):
    """Carries (done, total) from the worker thread to the UI thread (a queued Qt connection)."""

    changed = Signal(int, int)


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def progress_text(done: int, total: int, elapsed: float, unit: str) -> str:
    """What the progress bar says: how far, how long so far, and about how long is left (from
    the pace so far, once something is done)."""
    text = f"{done}/{total} {unit} · {_clock(elapsed)} elapsed"
    if 0 < done < total:
        text += f" · about {_clock(elapsed * (total - done) / done)} left"
    return text


class Runner:
    """Runs one job at a time off the UI thread, with a progress bar and a Run / Cancel button.

    ``job(progress, cancelled)`` runs in a napari thread worker: it reports with
    ``progress(done, total)`` and stops early when ``cancelled()`` turns true (the library's
    ``cancel=`` hooks take it as is). ``on_result`` gets the return value on the UI thread;
    failures become an error notification; a cancelled job calls neither.
    """

    def __init__(self, button: PushButton, bar: ProgressBar, name: str = "Run", stopping: str = "Cancelling..."):
        self.button = button
        self.bar = bar
        self.name = name
        self.stopping = stopping
        self.worker = None
        self._cancel = threading.Event()
        self._progress = _Progress()
        self._progress.changed.connect(self._show_progress)
        self._on_progress: Callable[[int, int], None] | None = None
        self.bar.visible = False
        self.button.text = name

    @property
    def running(self) -> bool:
        return self.worker is not None

    def cancel(self) -> None:
        """Ask the job to stop; it does so at its next check (one batch at most)."""
        if self.running:
            self._cancel.set()
            self.button.text = self.stopping
            self.button.enabled = False

    def toggle(self, prepare: Callable[[], Any], start: Callable[[Any], None]) -> None:
        """The button's handler: cancel the running job, or check the inputs on the UI thread
        (``prepare`` raises an ``InputError``, shown as an error notification) and ``start`` them."""
        if self.running:
            self.cancel()
            return
        try:
            request = prepare()
        except FusionMambaError as error:
            show_error(str(error))
            return
        start(request)

    def start(
        self,
        job: Callable[[Callable[[int, int], None], Callable[[], bool]], Any],
        on_result: Callable[[Any], None],
        on_progress: Callable[[int, int], None] | None = None,
        on_stop: Callable[[], None] | None = None,
        what: str = "the job",
        unit: str = "steps",
    ):
        """Start ``job`` in a thread worker; ``on_stop`` runs on the UI thread however it ended.
        The bar counts ``unit`` (tiles, chunks...) with the time elapsed and left."""
        from napari.qt.threading import create_worker

        if self.running:
            raise RuntimeError("a job is already running")
        self._cancel = threading.Event()
        self._on_progress = on_progress
        self._unit, self._started = unit, time.monotonic()
        cancel = self._cancel
        emit = self._progress.changed.emit

        def work():
            return job(lambda done, total: emit(int(done), int(total)), cancel.is_set)

        def returned(result):
            if cancel.is_set():
                show_info(f"{what} cancelled")
            else:
                on_result(result)

        def errored(error):
            if isinstance(error, FusionCancelled) or cancel.is_set():
                show_info(f"{what} cancelled")
            elif isinstance(error, FusionMambaError):  # the user can fix it: the message says how
                show_error(f"{what} failed: {error}")
            else:  # a bug: say so, with the traceback in the console
                traceback.print_exception(error)
                show_error(
                    f"{what} failed: unexpected {type(error).__name__}: {error} (a bug; traceback in the console)"
                )

        def finished():
            self.worker = None
            self.bar.visible = False
            self.button.text = self.name
            self.button.enabled = True
            if on_stop is not None:
                on_stop()

        worker = create_worker(work, _start_thread=False, _connect={"errored": errored})
        worker.returned.connect(returned)
        worker.finished.connect(finished)
        self.worker = worker
        self.bar.max = 1
        self.bar.value = 0
        self.bar.native.setFormat("starting...")
        self.bar.visible = True
        self.button.text = "Cancel"
        worker.start()
        return worker

    def _show_progress(self, done: int, total: int) -> None:
        if not self.running:
            return
        self.bar.max = max(total, 1)
        self.bar.value = min(done, self.bar.max)
        self.bar.native.setFormat(progress_text(done, total, time.monotonic() - self._started, self._unit))
        if self._on_progress is not None:
            self._on_progress(done, total)
