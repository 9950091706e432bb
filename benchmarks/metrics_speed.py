"""Time every fusion metric on one fused image and its two sources, the FMI loop beside the
numpy tables it replaced, and the Evaluate widget's "Evaluate + classical methods" job, in one run.

The images are real-looking (smooth texture with noise), fused by the classical methods'
average; FMI's cost grows with the number of 3 x 3 windows where F differs from a source.

    python benchmarks/metrics_speed.py --size 1024
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
from _fmi_numpy import feature_mutual_information as numpy_fmi
from scipy import ndimage

from napari_fusionmamba.quality.baselines import BASELINES
from napari_fusionmamba.quality.metrics import METRICS, compare_methods, feature_mutual_information, to_gray8


def source(seed: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.normal(size=(size, size)), 3.0) + 0.05 * rng.normal(size=(size, size))
    return to_gray8((x - x.min()) / (x.max() - x.min()))


def timed(job: Callable[[], object]) -> tuple[float, float]:
    """(wall, CPU) seconds of one call."""
    start, start_cpu = time.perf_counter(), time.process_time()
    job()
    return time.perf_counter() - start, time.process_time() - start_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="image edge in pixels (1024)")
    args = parser.parse_args()
    a, b = source(1, args.size), source(2, args.size)
    fused = np.rint((a + b) / 2)
    feature_mutual_information(fused[:8, :8], a[:8, :8], b[:8, :8])  # numba's load (or first compile)
    times = {key: timed(lambda metric=metric: metric(fused, a, b)) for key, metric in METRICS.items()}
    total, total_cpu = (sum(t[i] for t in times.values()) for i in (0, 1))
    print(
        f"{args.size} x {args.size}: all {len(METRICS)} metrics in {total:.2f} s wall, "
        f"{total_cpu:.2f} s CPU (wall > CPU when other processes share the cores)"
    )
    print(f"  {'metric':<10} {'wall s':>8} {'CPU s':>8} {'share':>7}")
    for key, (wall, cpu) in times.items():
        print(f"  {key:<10} {wall:8.3f} {cpu:8.3f} {cpu / total_cpu:7.1%}")

    print("FMI, CPU s: compiled window loop vs the previous numpy tables (benchmarks/_fmi_numpy.py)")
    for feature in ("gradient", "pixel"):
        new = timed(lambda feature=feature: feature_mutual_information(fused, a, b, feature))[1]
        old = timed(lambda feature=feature: numpy_fmi(fused, a, b, feature))[1]
        print(f"  {feature:<10} {new:8.3f} vs {old:8.3f}   {old / new:5.1f}x faster")

    methods = {"fused": lambda _a, _b: fused, **BASELINES}  # as the widget scores them
    wall, cpu = timed(lambda: compare_methods(a, b, methods))
    print(
        f"Evaluate + classical methods (the fused image and the {len(BASELINES)} methods' results): "
        f"{wall:.2f} s wall, {cpu:.2f} s CPU"
    )


if __name__ == "__main__":
    main()
