"""Fusion quality of the network against each classical method, judged by paired tests over images.

The folder is laid out like the development data: ``DIR/A/NAME`` and ``DIR/B/NAME`` are one
registered pair (A: GFP / CT / PET / infrared, B: phase contrast / MRI / visible). As in the
fusion literature, a colour source is reduced to its luminance Y, both sources go in as 8-bit
gray scaled to [0, 1], and every method fuses exactly those two planes; the metrics
(docs/metrics.md) compare the fused plane with them.

A mean over pairs hides whether a method is better on most images or on a few, so the model is
compared with each classical method on its own, metric by metric, by a two-sided Wilcoxon
signed-rank test over the per-image values: significant at p < 0.01 and in its favour is a win,
against it a loss, anything else a tie. A method that is at least as good on the means of all ten
scored metrics Pareto-dominates the model. ``--validation RECIPE`` restricts the pairs to a
recipe's held-out validation wells. ``--loss`` also scores every output with the paper's loss.

    python benchmarks/quality.py --data ../shared/data/gfp_pc --validation recipes/gfp-pc.json --json q.json
    python benchmarks/quality.py --data ../shared/data/ct_mri --limit 40 --model my-model
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

from napari_fusionmamba.cli import json_number, read_plane
from napari_fusionmamba.io.files import atomic_path
from napari_fusionmamba.quality.baselines import BASELINES
from napari_fusionmamba.quality.metrics import METRICS, SCORED_METRICS, compare_methods

ALPHA = 0.01
"""Significance level of the paired test: a difference with a larger p-value is a tie."""


def find_pairs(data: Path, only: list[str] | None = None) -> list[str]:
    """Names present in both DIR/A and DIR/B (those of ``only`` when given), sorted; names on
    one side only are reported."""
    folders = [data / "A", data / "B"]
    for folder in folders:
        if not folder.is_dir():
            raise SystemExit(f"quality: {folder} is not a folder (expected DIR/A and DIR/B)")
    names_a = {p.name for p in folders[0].iterdir() if p.is_file() and not p.name.startswith(".")}
    names_b = {p.name for p in folders[1].iterdir() if p.is_file() and not p.name.startswith(".")}
    unpaired = sorted(names_a ^ names_b)
    if unpaired:
        print(f"quality: skipping {len(unpaired)} unpaired file(s), e.g. {unpaired[0]}", file=sys.stderr)
    names = sorted(names_a & names_b)
    if only is not None:
        missing = sorted(set(only) - set(names))
        if missing:
            raise SystemExit(f"quality: {len(missing)} validation pair(s) not in {data}, e.g. {missing[0]}")
        names = sorted(only)
    if not names:
        raise SystemExit(f"quality: no pair in {data} (same file name under A/ and B/)")
    return names


def validation_names(recipe: Path) -> list[str]:
    """The pair names a training recipe holds out for validation (its ``"validation"`` list)."""
    from napari_fusionmamba.errors import PreflightError
    from napari_fusionmamba.training.runs import validation_names as held_out

    try:
        names = held_out(recipe)
    except PreflightError as error:
        raise SystemExit(f"quality: {error}") from None
    if not names:
        raise SystemExit(f'quality: {recipe} names no validation pairs ("validation": {{"names": [...]}})')
    return names


def resolve_model(name: str | None):
    """(label, loaded network) for --model, or (None, None) when no network is benchmarked.

    Without --model the shipped default is used, but only once trained weights ship with the
    package: an untrained config is no comparison.
    """
    from napari_fusionmamba import registry

    if name is None:
        entries = {entry.name: entry for entry in registry.list_models()}
        default = entries.get(registry.DEFAULT_MODEL)
        if default is None or default.source == "config":
            return None, None
        name = default.name
    if name.lower() == "none":
        return None, None
    label = Path(name).stem if name.endswith(".safetensors") else name
    return label, registry.load_model(name, device="cpu")


def network_method(model):
    """The network as a ``fuse(a, b)`` method, through the same tiled engine users run, on the
    same [0, 1] planes every classical method gets (no normalisation of its own)."""
    from napari_fusionmamba.engine import fuse

    return lambda a, b: fuse(a, b, model=model, device="cpu", normalise=None)


def paper_loss(fused: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """The paper's loss (and weights) of one fused plane, and its terms; the structure measure
    is the one training picks for that size (MS-SSIM from 161 px)."""
    import torch

    from napari_fusionmamba.training.objectives import FusionLoss

    planes = [torch.from_numpy(np.ascontiguousarray(x, np.float32))[None, None] for x in (np.clip(fused, 0, 1), a, b)]
    with torch.no_grad():
        total, terms = FusionLoss()(*planes)
    return {"loss": float(total), **{key: float(value) for key, value in terms.items()}}


def paired_outcome(ours, theirs, alpha: float = ALPHA) -> str:
    """ "win", "tie" or "loss" of per-image values ``ours`` against ``theirs`` (same pairs, same
    order, higher is better) by a two-sided Wilcoxon signed-rank test at ``alpha``."""
    as_array = lambda values: np.array([np.nan if v is None else v for v in values], np.float64)
    differences = as_array(ours) - as_array(theirs)  # an image without a value (None) is left out
    differences = differences[np.isfinite(differences) & (differences != 0)]
    if differences.size == 0 or stats.wilcoxon(differences).pvalue >= alpha:
        return "tie"
    ranks = stats.rankdata(np.abs(differences))
    return "win" if ranks[differences > 0].sum() > ranks[differences < 0].sum() else "loss"


def compare(report: dict, model: str, method: str) -> dict:
    """The model against one method: the scored metrics it wins, ties and loses, and whether
    that method Pareto-dominates it (at least as good on every scored mean)."""
    outcome: dict = {"wins": [], "ties": [], "losses": []}
    for key in SCORED_METRICS:
        result = paired_outcome(report["per_image"][model][key], report["per_image"][method][key])
        outcome[{"win": "wins", "tie": "ties", "loss": "losses"}[result]].append(key)
    means = report["results"]
    outcome["dominated"] = all(
        means[method][key] is not None and means[model][key] is not None and means[method][key] >= means[model][key]
        for key in SCORED_METRICS
    )
    return outcome


def _capturing(method, store: dict, name: str):
    """``method`` that also keeps its last inputs and output, so the loss is scored outside the
    timed fusion."""

    def fuse(a, b):
        store[name] = (fused := method(a, b)), a, b
        return fused

    return fuse


def run(data: Path, methods: list[str], model_name: str | None, names: list[str], loss: bool = False) -> dict:
    label, model = resolve_model(model_name)
    fusers = {method: BASELINES[method] for method in methods}
    if label:
        fusers[label] = network_method(model)
    last: dict[str, tuple] = {}
    if loss:
        fusers = {method: _capturing(fuse, last, method) for method, fuse in fusers.items()}
    per_image: dict[str, dict[str, list]] = {method: {key: [] for key in METRICS} for method in fusers}
    losses: dict[str, list[dict[str, float]]] = {method: [] for method in fusers}
    seconds: dict[str, float] = {}
    for index, name in enumerate(names, 1):
        started = time.perf_counter()
        a, b = read_plane(data / "A" / name), read_plane(data / "B" / name)
        scores = compare_methods(a, b, fusers, names=(f"A/{name}", f"B/{name}"), seconds=seconds)
        for method, values in scores.items():
            for key, value in values.items():
                per_image[method][key].append(json_number(float(value)))
            if loss:
                losses[method].append(paper_loss(*last[method]))
        print(f"pair {index}/{len(names)} {name}: {time.perf_counter() - started:.1f} s", file=sys.stderr)

    report = {
        "model": label,
        "metrics": list(METRICS),
        "scored": list(SCORED_METRICS),
        "alpha": ALPHA,
        "names": names,
        "results": {m: {k: _summary(v, np.mean) for k, v in table.items()} for m, table in per_image.items()},
        "std": {m: {k: _summary(v, _sd) for k, v in table.items()} for m, table in per_image.items()},
        "per_image": per_image,
        "pairs": len(names),
        "data": str(data),
        "seconds": {method: seconds[method] / len(names) for method in fusers},
    }
    if label:
        report["comparisons"] = {method: compare(report, label, method) for method in methods}
    if loss:
        report["loss"] = {
            method: {key: float(np.mean([row[key] for row in table])) for key in table[0]}
            for method, table in losses.items()
        }
    return report


def _sd(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1)) if values.size > 1 else 0.0


def _summary(values: list, statistic) -> float | None:
    """``statistic`` of the finite per-image values (None when there are none)."""
    finite = np.array([v for v in values if v is not None], np.float64)
    return json_number(float(statistic(finite))) if finite.size else None


def format_table(report: dict) -> str:
    methods = list(report["results"])
    lines = [
        f"{report['pairs']} pair(s) from {report['data']}; mean ± SD over pairs, best in bold",
        "",
        "| metric | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for key in report["metrics"]:
        means = [report["results"][m][key] for m in methods]
        finite = [v for v in means if v is not None]
        best = max(finite) if finite else None
        cells = []
        for method, mean in zip(methods, means):
            if mean is None:
                cells.append("n/a")
                continue
            sd = report["std"][method][key]
            cell = f"{mean:.4g} ± {sd:.2g}" if sd is not None else f"{mean:.4g}"
            cells.append(f"**{cell}**" if mean == best else cell)
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    for key, values in _loss_rows(report):
        best = min(values)
        cells = [f"**{v:.4g}**" if v == best else f"{v:.4g}" for v in values]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines.append("| seconds / pair | " + " | ".join(f"{report['seconds'][m]:.3f}" for m in methods) + " |")
    if "comparisons" in report:
        lines += ["", comparison_table(report)]
    return "\n".join(lines)


def comparison_table(report: dict) -> str:
    """One row per classical method: what the model wins, ties and loses against it."""
    lines = [
        f"{report['model']} against each method, Wilcoxon signed-rank over {report['pairs']} pairs, "
        f"p < {report['alpha']}:",
        "",
        "| against | wins | ties | losses | dominated |",
        "|---|---|---|---|---|",
    ]
    for method, outcome in report["comparisons"].items():
        cells = [f"{len(outcome[k])}: {', '.join(outcome[k]) or '-'}" for k in ("wins", "ties", "losses")]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {'yes' if outcome['dominated'] else 'no'} |")
    return "\n".join(lines)


def _loss_rows(report: dict):
    """(label, value per method) for the training-objective rows, when they were computed."""
    if "loss" not in report:
        return
    losses = report["loss"]
    for key in next(iter(losses.values())):
        label = "paper loss (lower is better)" if key == "loss" else f"loss: {key} term"
        yield label, [losses[method][key] for method in report["results"]]


def write_json(path: Path, report: dict) -> None:
    """Atomically: an interrupted run never leaves a half-written file."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(report, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with A/ and B/ subfolders")
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=list(BASELINES),
        default=list(BASELINES),
        help="classical methods to run (default: all)",
    )
    parser.add_argument(
        "--model",
        help="network: a model name or .safetensors path, or 'none' "
        "(default: the shipped default model when trained weights ship)",
    )
    parser.add_argument(
        "--validation", type=Path, metavar="RECIPE", help="only the pairs a training recipe holds out for validation"
    )
    parser.add_argument("--limit", type=int, help="use only the first N pairs (sorted by name)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    parser.add_argument("--loss", action="store_true", help="also score every output with the paper's loss")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    names = find_pairs(args.data, validation_names(args.validation) if args.validation else None)[: args.limit]
    try:
        report = run(args.data, args.methods, args.model, names, args.loss)
    except (OSError, ValueError) as error:  # unreadable image, mismatched pair, unknown model
        print(f"quality: error: {error}", file=sys.stderr)
        return 2
    print(format_table(report))
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
