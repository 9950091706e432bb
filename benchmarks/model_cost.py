"""Time two models fusing the same pair, side by side in one run, and print the ratio.

Runs alternate between the models (A, B, A, B, ...) after one warm-up each, so a busy or
throttled machine slows both alike; the ratio of the medians is the figure to quote.

    python benchmarks/model_cost.py --models gfp-pc old-gfp-pc.safetensors --size 1024 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
from scipy import ndimage


def test_pair(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random pair in [0, 1]: the network's cost does not depend on the content."""
    rng = np.random.default_rng(seed)
    planes = [ndimage.gaussian_filter(rng.random((size, size)), 2.0) for _ in range(2)]
    return tuple(((p - p.min()) / np.ptp(p)).astype(np.float32) for p in planes)  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", nargs=2, required=True, metavar=("A", "B"), help="two model names or .safetensors paths"
    )
    parser.add_argument("--size", type=int, default=1024, help="side of the square test pair (px)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per model")
    args = parser.parse_args(argv)

    from napari_fusionmamba import fuse, load_model

    a, b = test_pair(args.size)
    models = {name: load_model(name, device="cpu") for name in args.models}
    times: dict[str, list[float]] = {name: [] for name in models}
    for repeat in range(args.repeats + 1):
        for name, model in models.items():
            started = time.perf_counter()
            fuse(a, b, model=model, device="cpu", normalise=None)
            if repeat:  # the first round warms up (scan compilation, allocator)
                times[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, values in times.items():
        print(
            f"{name}: median {medians[name]:.2f} s (min {min(values):.2f}, max {max(values):.2f}) "
            f"for a {args.size} x {args.size} pair"
        )
    first, second = args.models
    print(f"ratio {first} / {second}: {medians[first] / medians[second]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
