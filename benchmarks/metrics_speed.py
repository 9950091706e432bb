"""Time every fusion metric on one fused image and its two sources, the FMI loop beside the
numpy tables it replaced, and the Evaluate widget's "Evaluate + classical methods" job, in one run.

The metric images are real-looking (smooth texture with noise), fused by the classical methods'
average; FMI's cost grows with the number of 3 x 3 windows where F differs from a source. The
widget's job (``widgets.evaluate.score``: a fused layer and the five classical methods, every
metric) runs on the neuron sample (MAP2 and a phase plane, tiled to the size), fused by the
Laplacian pyramid, each run in a fresh process. ``--baseline REF`` runs that job with the package
as it is at git ref REF too (extracted to a temporary folder), alternating, checks that both give
the same numbers and prints the wall and CPU ratios: on a shared machine only ratios measured
side by side mean much.

    python benchmarks/metrics_speed.py --size 1024
    python benchmarks/metrics_speed.py --size 1024 --baseline REF --repeats 3
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np
from _fmi_numpy import feature_mutual_information as numpy_fmi
from fuse_scaling import extract, run_child
from scipy import ndimage

from napari_fusionmamba.io.samples import load_neurons
from napari_fusionmamba.quality.baselines import BASELINES
from napari_fusionmamba.quality.metrics import METRICS, feature_mutual_information, fusion_input, to_gray8

#: The widget's job in a fresh process: (fused, A, B) from .npy files, the numba load outside the
#: timing, then ``score`` as the Evaluate widget's worker calls it; prints wall, CPU and numbers.
CHILD = """
import json, sys, time
import numpy as np
from napari_fusionmamba.napari.widgets.evaluate import score
from napari_fusionmamba.quality.metrics import feature_mutual_information
planes = [np.load(path) for path in sys.argv[1:4]]
feature_mutual_information(*(np.full((8, 8), 1.0) for _ in range(3)))
start, start_cpu = time.perf_counter(), time.process_time()
results = score(planes, ("fused", "A", "B"), True, lambda done, total: None, lambda: False)
wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
print(json.dumps({"wall": wall, "cpu": cpu, "results": results}))
"""


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
    parser.add_argument("--baseline", metavar="REF", help="also run the widget's job as at this git ref, side by side")
    parser.add_argument("--repeats", type=int, default=1, help="runs of the widget's job per version, alternating")
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

    widget_job(args.size, args.baseline, args.repeats)


def widget_job(size: int, baseline: str | None, repeats: int) -> None:
    """The Evaluate widget's "Evaluate + classical methods" on the neuron sample at ``size``^2,
    alternating with the package at git ref ``baseline``; medians of ``repeats`` runs each."""
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    neurons = load_neurons()
    reps = [-(-size // n) for n in neurons["MAP2"].shape]
    a, b = (np.tile(image, reps)[:size, :size] for image in (neurons["MAP2"], neurons["phase"][1]))
    fused = BASELINES["laplacian"](fusion_input(a), fusion_input(b))
    runs: dict[str, list[dict]] = {"new": []}
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name, plane in (("fused", fused), ("a", a), ("b", b)):
            paths.append(os.path.join(tmp, f"{name}.npy"))
            np.save(paths[-1], plane)
        versions = {"new": here}
        if baseline:
            versions[baseline] = extract(baseline, tmp)
            runs[baseline] = []
        for _, (name, path) in itertools.product(range(repeats), versions.items()):
            runs[name].append(run_child(CHILD, *paths, path=path)[0])
    wall, cpu = (
        {name: statistics.median(run[key] for run in done) for name, done in runs.items()} for key in ("wall", "cpu")
    )
    print(
        f"Evaluate + classical methods on the neuron sample at {size}^2 (the fused layer and "
        f"{len(BASELINES)} methods, {len(METRICS)} metrics each), median of {repeats}, {os.cpu_count()} CPUs:"
    )
    for name in runs:
        print(f"  {name:<12} {wall[name]:7.2f} s wall {cpu[name]:7.2f} s CPU")
    if baseline:
        same = all(run["results"] == runs["new"][0]["results"] for run in runs["new"] + runs[baseline])
        print(
            f"  new / {baseline}: wall x{wall['new'] / wall[baseline]:.2f}, CPU x{cpu['new'] / cpu[baseline]:.2f}; "
            f"every number {'the same' if same else 'DIFFERENT'}"
        )


if __name__ == "__main__":
    main()
