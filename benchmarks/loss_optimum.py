"""What the training objective can reach at best: the fused image that minimises the paper's loss,
found by optimising its pixels directly (no network), scored like every classical method.

Training drives a network towards that minimum, so the minimiser shows where more training, data
or width lead with that loss: if it does not beat the classical methods, fitting the loss better
will not either. Use it to judge loss weights in minutes before training for hours.

    python benchmarks/loss_optimum.py --data ../shared/data/gfp_pc --weights 10,1,10 --weights 10,1,10,0.8,0.2

``--weights a1,a2,a3[,b,g]``: the intensity, texture and structure weights and, optionally, the
SSIM weights of source A and B (default 0.5 each); repeat it to compare weightings.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_fusionmamba.cli import read_plane
from napari_fusionmamba.quality.baselines import BASELINES
from napari_fusionmamba.quality.metrics import SCORED_METRICS, evaluate, fusion_input, wins
from napari_fusionmamba.training.objectives import DEFAULT_WEIGHTS, SSIM_MODES, FusionLoss
from quality import find_pairs, format_table, write_json


def parse_weights(text: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in text.split(","))
    if len(values) not in (3, 5) or min(values) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a1,a2,a3 or a1,a2,a3,b,g, none negative")
    return values if len(values) == 5 else (*values, 0.5, 0.5)


def _tensor(plane: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(plane, np.float32))[None, None]


def loss_minimiser(a: np.ndarray, b: np.ndarray, loss: FusionLoss, steps: int) -> tuple[np.ndarray, float]:
    """The [0, 1] image of lowest loss that projected Adam finds from two starts, max(a, b) and
    (a + b) / 2 (the loss is not convex: SSIM), and its loss."""
    ta, tb = _tensor(a), _tensor(b)
    best_value, best = float("inf"), None
    for start in (np.maximum(a, b), (a + b) / 2):
        fused = _tensor(start).requires_grad_(True)
        optimiser = torch.optim.Adam([fused], lr=0.01)
        for step in range(steps + 1):
            optimiser.zero_grad()
            value = loss(fused, ta, tb)[0]
            if value.item() < best_value:  # Adam does not descend at every step: keep the best
                best_value, best = value.item(), fused.detach()[0, 0].numpy().copy()
            if step == steps:
                break
            value.backward()
            optimiser.step()
            with torch.no_grad():
                fused.clamp_(0, 1)
    return best, best_value


def run(data: Path, weightings: list[tuple[float, ...]], ssim: str, steps: int, limit: int | None) -> dict:
    names = find_pairs(data)[:limit]
    planes = [
        (fusion_input(read_plane(data / "A" / n), f"A/{n}"), fusion_input(read_plane(data / "B" / n), f"B/{n}"))
        for n in names
    ]
    methods = {name: (lambda a, b, fuse=fuse: (fuse(a, b), None)) for name, fuse in BASELINES.items()}
    for weights in weightings:
        loss = FusionLoss(*weights, ssim=ssim)
        label = "optimum " + ",".join(f"{w:g}" for w in weights)
        methods[label] = lambda a, b, loss=loss: loss_minimiser(a, b, loss, steps)
    results, spread, seconds, losses = {}, {}, {}, {}
    for label, method in methods.items():
        started = time.perf_counter()
        rows, values = [], []
        for a, b in planes:
            fused, value = method(a, b)
            rows.append(evaluate(fused, a, b, SCORED_METRICS))
            values.append(value)
        seconds[label] = (time.perf_counter() - started) / len(planes)
        results[label] = {key: float(np.mean([row[key] for row in rows])) for key in SCORED_METRICS}
        spread[label] = {
            key: float(np.std([row[key] for row in rows], ddof=1)) if len(rows) > 1 else None for key in SCORED_METRICS
        }
        if values[0] is not None:
            losses[label] = float(np.mean(values))
        print(f"{label}: {seconds[label]:.1f} s / pair", file=sys.stderr)
    baselines = {name: results[name] for name in BASELINES}
    return {
        "model": None,
        "metrics": list(SCORED_METRICS),
        "results": results,
        "std": spread,
        "pairs": len(names),
        "data": str(data),
        "seconds": seconds,
        "ssim": ssim,
        "steps": steps,
        "minimum_loss": losses,
        "wins": {label: wins({**baselines, label: results[label]}, label) for label in losses},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with A/ and B/ subfolders")
    parser.add_argument(
        "--weights",
        type=parse_weights,
        action="append",
        metavar="A1,A2,A3[,B,G]",
        help=f"loss weights (repeatable; default: the paper's {','.join(f'{w:g}' for w in DEFAULT_WEIGHTS)})",
    )
    parser.add_argument(
        "--ssim",
        choices=SSIM_MODES,
        default="ssim",
        help="structure measure (default: ssim, what training on 128-px crops uses)",
    )
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps per start (default: 300)")
    parser.add_argument("--limit", type=int, help="use only the first N pairs (sorted by name)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.steps < 1 or (args.limit is not None and args.limit < 1):
        parser.error("--steps and --limit must be at least 1")
    try:
        report = run(args.data, args.weights or [(*DEFAULT_WEIGHTS, 0.5, 0.5)], args.ssim, args.steps, args.limit)
    except (OSError, ValueError) as error:
        print(f"loss_optimum: error: {error}", file=sys.stderr)
        return 2
    print(format_table(report))
    print()
    for label, won in report["wins"].items():
        print(
            f"{label} (loss {report['minimum_loss'][label]:.4f}) wins {len(won)}/{len(SCORED_METRICS)} "
            f"against the best baseline: {', '.join(won) or 'none'}"
        )
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
