"""Fusion quality of every classical method, and of the network, on a folder of image pairs.

The folder is laid out like the development data: ``DIR/A/NAME`` and ``DIR/B/NAME`` are one
registered pair (A: GFP / CT / PET / infrared, B: phase contrast / MRI / visible). As in the
fusion literature, a colour source is reduced to its luminance Y, both sources go in as 8-bit
gray scaled to [0, 1], and every method fuses exactly those two planes; the metrics
(docs/metrics.md) compare the fused plane with them. Prints a Markdown table of mean ± SD per
metric and method (best per row in bold) and, for the network, how many of the ten
paper-style metrics it wins against the best baseline. With ``--loss`` it also prints the
training objective (the paper's loss, lower is better) of every method's output, which shows
what the loss itself prefers next to what the metrics prefer.

    python benchmarks/quality.py --data ../shared/data/gfp_pc --json gfp_pc.json --loss
    python benchmarks/quality.py --data ../shared/data/ct_mri --limit 40 --model my-model
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from napari_fusionmamba.cli import json_number, read_plane
from napari_fusionmamba.io.files import atomic_path
from napari_fusionmamba.quality.baselines import BASELINES
from napari_fusionmamba.quality.metrics import METRICS, SCORED_METRICS, compare_methods, wins


def find_pairs(data: Path) -> list[str]:
    """Names present in both DIR/A and DIR/B, sorted; names on one side only are reported."""
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
    if not names:
        raise SystemExit(f"quality: no pair in {data} (same file name under A/ and B/)")
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
    """The network as a ``fuse(a, b)`` method, through the same tiled engine users run."""
    from napari_fusionmamba.engine import fuse

    return lambda a, b: fuse(a, b, model=model, device="cpu", normalise=None)


def paper_loss(fused: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """The training objective (the paper's loss and weights) of one fused plane, and its terms;
    the structure measure is the one training picks for that size (MS-SSIM from 161 px)."""
    import torch

    from napari_fusionmamba.training.objectives import FusionLoss

    planes = [torch.from_numpy(np.ascontiguousarray(x, np.float32))[None, None] for x in (np.clip(fused, 0, 1), a, b)]
    with torch.no_grad():
        total, terms = FusionLoss()(*planes)
    return {"loss": float(total), **{key: float(value) for key, value in terms.items()}}


def _capturing(method, store: dict, name: str):
    """``method`` that also keeps its last inputs and output, so the loss is scored outside the
    timed fusion."""

    def fuse(a, b):
        store[name] = (fused := method(a, b)), a, b
        return fused

    return fuse


def run(data: Path, methods: list[str], model_name: str | None, limit: int | None, loss: bool = False) -> dict:
    names = find_pairs(data)[:limit]
    label, model = resolve_model(model_name)
    fusers = {method: BASELINES[method] for method in methods}
    if label:
        fusers[label] = network_method(model)
    last: dict[str, tuple] = {}
    if loss:
        fusers = {method: _capturing(fuse, last, method) for method, fuse in fusers.items()}
    rows: dict[str, list[dict[str, float]]] = {method: [] for method in fusers}
    losses: dict[str, list[dict[str, float]]] = {method: [] for method in fusers}
    seconds: dict[str, float] = {}
    for index, name in enumerate(names, 1):
        started = time.perf_counter()
        a, b = read_plane(data / "A" / name), read_plane(data / "B" / name)
        scores = compare_methods(a, b, fusers, names=(f"A/{name}", f"B/{name}"), seconds=seconds)
        for method, values in scores.items():
            rows[method].append(values)
            if loss:
                losses[method].append(paper_loss(*last[method]))
        print(f"pair {index}/{len(names)} {name}: {time.perf_counter() - started:.1f} s", file=sys.stderr)

    keys = list(METRICS)
    results, spread = {}, {}
    for method, table in rows.items():
        values = np.array([[row[key] for key in keys] for row in table], dtype=np.float64)
        means = values.mean(axis=0)
        sds = values.std(axis=0, ddof=1) if len(table) > 1 else np.zeros(len(keys))
        results[method] = {key: json_number(float(v)) for key, v in zip(keys, means)}
        spread[method] = {key: json_number(float(v)) for key, v in zip(keys, sds)}
    report = {
        "model": label,
        "metrics": keys,
        "results": results,
        "std": spread,
        "pairs": len(names),
        "data": str(data),
        "seconds": {method: seconds[method] / len(names) for method in fusers},
    }
    if loss:
        report["loss"] = {
            method: {key: float(np.mean([row[key] for row in table])) for key in table[0]}
            for method, table in losses.items()
        }
    return report


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
        best = max(finite) if finite else None  # every metric: higher is better
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
    if report["model"]:
        won = wins(report["results"], report["model"])
        lines += [
            "",
            f"{report['model']} wins {len(won)}/{len(SCORED_METRICS)} against the best "
            f"baseline: {', '.join(won) or 'none'}",
        ]
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
    parser.add_argument("--limit", type=int, help="use only the first N pairs (sorted by name)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    parser.add_argument(
        "--loss", action="store_true", help="also score every output with the training objective (the paper's loss)"
    )
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    try:
        report = run(args.data, args.methods, args.model, args.limit, args.loss)
    except (OSError, ValueError) as error:  # unreadable image, mismatched pair, unknown model
        print(f"quality: error: {error}", file=sys.stderr)
        return 2
    print(format_table(report))
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
