"""Time every fusion metric on one fused image and its two sources, side by side, in one run.

The images are real-looking (smooth texture with noise), fused by the classical methods'
average; FMI's cost grows with the number of 3 x 3 windows where F differs from a source.

    python benchmarks/metrics_speed.py --size 1024
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage

from napari_fusionmamba.quality.metrics import METRICS, to_gray8


def source(seed: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.normal(size=(size, size)), 3.0) + 0.05 * rng.normal(size=(size, size))
    return to_gray8((x - x.min()) / (x.max() - x.min()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="image edge in pixels (1024)")
    args = parser.parse_args()
    a, b = source(1, args.size), source(2, args.size)
    fused = np.rint((a + b) / 2)
    wall, cpu = {}, {}
    for key, metric in METRICS.items():
        start, start_cpu = time.perf_counter(), time.process_time()
        metric(fused, a, b)
        wall[key] = time.perf_counter() - start
        cpu[key] = time.process_time() - start_cpu
    total, total_cpu = sum(wall.values()), sum(cpu.values())
    print(
        f"{args.size} x {args.size}: all {len(METRICS)} metrics in {total:.2f} s wall, "
        f"{total_cpu:.2f} s CPU (wall > CPU when other processes share the cores)"
    )
    print(f"  {'metric':<10} {'wall s':>8} {'CPU s':>8} {'share':>7}")
    for key in METRICS:
        print(f"  {key:<10} {wall[key]:8.3f} {cpu[key]:8.3f} {cpu[key] / total_cpu:7.1%}")


if __name__ == "__main__":
    main()
