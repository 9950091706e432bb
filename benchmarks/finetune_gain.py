"""What fine-tuning buys: quality on held-back pairs before and after a fixed CPU budget.

Takes one kind of pairs (a folder laid out DIR/A/NAME, DIR/B/NAME), holds back the last pairs,
fine-tunes the default model (or --model) on the others for --budget seconds of this process's
CPU time, and prints every metric on the held-back pairs before and after, side by side, with
the ratio. Fusion and metrics follow benchmarks/quality.py (luminance planes scaled to [0, 1],
the network run through the tiled engine), so the numbers are comparable with its tables.

    python benchmarks/finetune_gain.py --data ../shared/data/gfp_pc --budget 600
    python benchmarks/finetune_gain.py --data ../shared/data/ct_mri --held-out 20 --budget 300
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_fusionmamba.cli import read_plane
from napari_fusionmamba.quality.metrics import METRICS, compare_methods
from napari_fusionmamba.registry import DEFAULT_MODEL, load_checkpoint, load_model
from napari_fusionmamba.training import Pair, TrainSettings, finetune
from quality import network_method


def held_out_scores(model, pairs: list[Pair], label: str) -> dict[str, float]:
    """Mean of every metric over the pairs, the network fusing as in benchmarks/quality.py."""
    network = network_method(model)
    rows = []
    for pair in pairs:
        a, b = read_plane(pair.a), read_plane(pair.b)
        rows.append(compare_methods(a, b, {label: network}, names=(str(pair.a), str(pair.b)))[label])
    return {key: float(np.nanmean([row[key] for row in rows])) for key in METRICS}


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with A/ and B/ of one kind of pairs")
    parser.add_argument("--budget", type=float, default=600.0, help="training budget, seconds of CPU time (600)")
    parser.add_argument(
        "--held-out", type=int, default=None, help="pairs held back for evaluation (default: 20%%, at least 1)"
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"model to start from (default: {DEFAULT_MODEL})")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def _settings(args: argparse.Namespace, steps: int, **more) -> TrainSettings:
    return TrainSettings(
        steps=steps, crop=args.crop, batch=args.batch, lr=args.lr, base=args.model, seed=args.seed, device="cpu", **more
    )


def _steps_for_budget(train_pairs: list, args: argparse.Namespace) -> int:
    """Steps from a short probe, so the cosine schedule ends near the budget (a CPU-time check
    stops the run if the estimate was short)."""
    stamps = []
    with tempfile.TemporaryDirectory() as probe:
        finetune(train_pairs, _settings(args, 4, warmup=1), Path(probe) / "run",
                 on_step=lambda i: stamps.append(time.process_time()))  # fmt: skip
    per_step = float(np.median(np.diff(stamps)))
    return max(10, int(args.budget / per_step))


def _train(train_pairs: list, args: argparse.Namespace, steps: int):
    """Fine-tune within the CPU budget: (result, training losses, CPU s, wall s, the best model)."""
    settings = _settings(args, steps, warmup=max(1, steps // 20), val_every=max(1, steps // 10))
    losses = []
    with tempfile.TemporaryDirectory() as folder:
        started_cpu, started_wall = time.process_time(), time.perf_counter()
        result = finetune(
            train_pairs,
            settings,
            Path(folder) / "run",
            on_step=lambda i: losses.append(i.terms["loss"]),
            cancel=lambda: time.process_time() - started_cpu > args.budget * 1.1,
        )
        cpu, wall = time.process_time() - started_cpu, time.perf_counter() - started_wall
        tuned, _ = load_checkpoint(result.best)
    return result, losses, cpu, wall, tuned


def main() -> int:
    args = _arguments()
    from napari_fusionmamba.training import pairs_from_folder

    pairs = pairs_from_folder(args.data)
    if len(pairs) < 2:
        raise SystemExit(f"finetune_gain: {args.data} has {len(pairs)} pair(s); at least 2 are needed")
    held = args.held_out or max(1, round(0.2 * len(pairs)))
    train_pairs, eval_pairs = pairs[:-held], pairs[-held:]
    print(f"{args.data}: training on {len(train_pairs)} pair(s), evaluating on {len(eval_pairs)} held-back pair(s)")

    before = held_out_scores(load_model(args.model), eval_pairs, "before")
    result, losses, cpu, wall, tuned = _train(train_pairs, args, _steps_for_budget(train_pairs, args))
    after = held_out_scores(tuned, eval_pairs, "after")

    print(
        f"fine-tuned {result.step} steps (crop {args.crop}, batch {args.batch}) in {cpu:.0f} s CPU / {wall:.0f} s wall "
        f"({cpu / max(result.step, 1):.2f} s CPU per step); training loss {np.mean(losses[:5]):.4f} -> "
        f"{np.mean(losses[-5:]):.4f} (mean of first / last 5 steps), best validation loss {result.best_val_loss:.4f}"
    )
    print()
    print(f"| metric | before ({args.model}) | after | after / before |")  # every metric: higher is better
    print("|---|---|---|---|")
    for key in METRICS:
        ratio = after[key] / before[key] if before[key] else float("nan")
        print(f"| {key} | {before[key]:.4f} | {after[key]:.4f} | {ratio:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
