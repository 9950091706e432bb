"""The "Evaluate fusion" widget: the fusion metrics of a fused layer against its two sources.

A thin shell over ``metrics.evaluate`` and ``metrics.compare_methods``, the functions behind
``fusionmamba evaluate`` and ``benchmarks/quality.py``: the widget picks the three planes on
the UI thread (the plane the viewer shows, for stacks), computes in a thread worker, shows one
column per image in a table (metrics as rows) and exports that table as CSV.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import FileEdit, Label, ProgressBar, PushButton, Table
from napari.utils.notifications import show_error, show_info

from ...errors import FusionMambaError, InputError
from ...io.files import atomic_path
from ._common import Runner, ScrollingContainer, current_plane, full_resolution, layer_picker

if TYPE_CHECKING:
    import napari

#: Images scored at once by "Evaluate + classical methods" (at most one per core): each holds a
#: few float64 copies of the plane while it is scored.
WORKERS = 2


class EvaluateWidget(ScrollingContainer):
    """Score a fused layer against its two sources, and compare it with the classical methods."""

    def __init__(self, viewer: napari.viewer.Viewer):  # napari injects the viewer by this annotation
        super().__init__()
        self._viewer = viewer
        self.fused = layer_picker(viewer, "Fused", "The fused image to score.")
        self.a = layer_picker(viewer, "Source A", "First source: GFP fluorescence, CT / PET / SPECT, infrared.")
        self.b = layer_picker(viewer, "Source B", "Second source: phase contrast, MRI, visible light.")
        self.run_button = PushButton(
            text="Evaluate", tooltip="Metrics of the fused layer (docs/metrics.md); press again to cancel."
        )
        self.compare_button = PushButton(
            text="Evaluate + classical methods",
            tooltip="Also fuse A and B with every classical method and score each result.",
        )
        self.progress = ProgressBar(label="Progress")
        self.note = Label(value="8-bit gray (Y of colour), higher is better for every metric")
        self.table = Table(label="Metrics")
        self.table.min_height = 500  # all 14 metric rows without scrolling
        self.csv_path = FileEdit(label="CSV file", mode="w", filter="*.csv", nullable=True)
        self.export_button = PushButton(text="Export CSV", enabled=False)
        self.extend(
            [
                self.fused,
                self.a,
                self.b,
                self.run_button,
                self.compare_button,
                self.progress,
                self.note,
                self.table,
                self.csv_path,
                self.export_button,
            ]
        )
        self.results: dict[str, dict[str, float]] = {}
        self.runner = Runner(self.run_button, self.progress, name="Evaluate")
        self.run_button.changed.connect(lambda: self._on_run(with_methods=False))
        self.compare_button.changed.connect(lambda: self._on_run(with_methods=True))
        self.export_button.changed.connect(self._on_export)

    # --- running --------------------------------------------------------------------------

    def _on_run(self, with_methods: bool) -> None:
        if self.runner.running:
            self.runner.cancel()
            return
        try:
            planes, names = self._planes()
        except FusionMambaError as error:
            show_error(str(error))
            return
        self.compare_button.enabled = False

        def job(progress, cancelled):
            return score(planes, names, with_methods, progress, cancelled)

        self.runner.start(job, on_result=self._show, on_stop=self._on_stop, what="Evaluating fusion")

    def _on_stop(self) -> None:
        self.compare_button.enabled = True

    def _planes(self) -> tuple[list, tuple[str, str, str]]:
        """The three planes to score (lazy), checked on the UI thread; ``InputError`` names the layer."""
        layers = [self.fused.value, self.a.value, self.b.value]
        if any(layer is None for layer in layers):
            raise InputError("Evaluate: choose three image layers (fused, source A, source B).")
        planes = [self._shown_plane(layer) for layer in layers]
        shapes = [plane.shape[:2] for plane in planes]
        for layer, shape in zip(layers[1:], shapes[1:]):
            if shape != shapes[0]:
                raise InputError(
                    f"Evaluate: '{layer.name}' is {shape[0]} x {shape[1]} but '{layers[0].name}' is "
                    f"{shapes[0][0]} x {shapes[0][1]}; the fused image and its sources must match."
                )
        return planes, tuple(layer.name for layer in layers)

    def _shown_plane(self, layer):
        """The (Y, X[, colour]) plane of ``layer`` that the viewer shows now."""
        return full_resolution(layer)[current_plane(self._viewer, layer)]

    # --- results --------------------------------------------------------------------------

    def _show(self, results: dict[str, dict[str, float]]) -> None:
        self.results = results
        columns = list(results)
        keys = list(next(iter(results.values())))
        self.table.value = {
            "data": [[_cell(results[column][key]) for column in columns] for key in keys],
            "index": keys,
            "columns": columns,
        }
        _explain_and_mark_best(self.table.native, results, keys)
        self.table.native.resizeColumnsToContents()
        self.export_button.enabled = True

    def _on_export(self, _value=None) -> None:
        if not self.csv_path.value or not str(self.csv_path.value).strip(". "):
            show_error("Evaluate: choose a CSV file to export to.")
            return
        path = Path(self.csv_path.value)
        try:
            export_csv(self.results, path)
        except OSError as error:
            show_error(f"Evaluate: cannot write '{path}': {error}")
            return
        show_info(f"Metrics written to {path}")


def score(planes, names, with_methods: bool, progress, cancelled) -> dict[str, dict[str, float]]:
    """The worker's job: metrics of the fused plane, then of each classical method on A and B
    (one ``compare_methods`` call, so the sources' terms are computed once for all, scoring up
    to :data:`WORKERS` images at once on as many cores)."""
    from ...quality.baselines import BASELINES
    from ...quality.metrics import compare_methods, evaluate

    fused, a, b = (np.asarray(plane) for plane in planes)
    if not with_methods:
        results = {names[0]: evaluate(fused, a, b, names=names)}
        progress(1, 1)
        return results
    methods = {names[0]: lambda _a, _b: fused, **BASELINES}
    workers = min(WORKERS, os.cpu_count() or 1)
    return compare_methods(a, b, methods, names=names[1:], cancel=cancelled, progress=progress, workers=workers)


def _explain_and_mark_best(native, results: dict[str, dict[str, float]], keys: list[str]) -> None:
    """Each metric's row header explains it; the best value of each row is bold (higher is better
    for every metric)."""
    from ...quality.metrics import METRIC_INFO

    columns = list(results)
    for row, key in enumerate(keys):
        native.verticalHeaderItem(row).setToolTip(f"{METRIC_INFO.get(key, key)} Higher is better.")
        values = [results[column][key] for column in columns]
        finite = [value for value in values if np.isfinite(value)]
        if len(columns) < 2 or not finite:
            continue
        for column, value in enumerate(values):
            if value == max(finite):
                item = native.item(row, column)
                font = item.font()
                font.setBold(True)
                item.setFont(font)


def _cell(value: float) -> str:
    return f"{value:.4f}" if np.isfinite(value) else str(value)


def export_csv(results: dict[str, dict[str, float]], path: Path) -> None:
    """One row per metric, one column per image; written atomically (no half file on error)."""
    columns = list(results)
    keys = list(next(iter(results.values()))) if results else []
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["metric", *columns])
        for key in keys:
            writer.writerow([key, *(repr(float(results[c][key])) for c in columns)])
