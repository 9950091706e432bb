"""How soon a cancelled file fusion stops, side by side with another version of the package.

Fuses a synthetic uint16 pair (tiled TIFFs) to zarr with the default model on the CPU
(``fuse_files``, default tile, overlap and chunk) in a fresh process per run, on the given
scheduler, and turns ``cancel()`` true when ``--after`` batches of tiles have ended. It counts
the network's forward passes (batches) through a wrapper of the batch predictor, and reports
the seconds from the cancel to ``FusionCancelled``, the batches started after the cancel, and
the seconds until the last of them ended (the run's thread pool drained: work that goes on
after the call has returned counts too).

    python benchmarks/cancel_latency.py --baseline main                # threads, batch 4
    python benchmarks/cancel_latency.py --baseline main --batch 1 --repeats 3
Goal: on the synchronous and threads schedulers, at most one more batch per worker after the
cancel, and nothing left running once the call has returned.

Measured on the shared 2-core development machine (load average 4-5), medians of 3, seconds to
return / batches started after the cancel / seconds until every task had stopped:
``--baseline main`` (threads, batch 4): 0.21 / 0 / 0.21 against 0.45 / 1 / 0.55;
``--batch 1 --after 3``: 0.02 / 0 / 0.02 against 0.88 / 6 / 1.02;
``--batch 1 --scheduler synchronous``: 0.01 / 0 / 0.01 against 0.72 / 3 / 0.72.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fuse_scaling import extract, run_child, write_synthetic_pair

CHILD = """
import json, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
import dask
import numpy as np
from napari_fusionmamba.engine import execute, fuse, fuse_files
from napari_fusionmamba.errors import FusionCancelled
args = json.loads(sys.argv[1])
fuse(*np.random.default_rng(0).random((2, 256, 256), dtype=np.float32), device="cpu")  # model load, scan compile
built, lock, batches, stop = execute.predictor, threading.Lock(), {"ended": 0, "late": 0}, {}

def counting(engine):
    predict, multiple = built(engine)
    def counted(a, b):
        with lock:
            late = "at" in stop
            batches["late"] += late
        fused = predict(a, b)
        with lock:
            batches["ended"] += 1
            if batches["ended"] == args["after"]:
                stop["at"] = time.perf_counter()
            if late:
                stop["last"] = time.perf_counter()
        return fused
    return counted, multiple

execute.predictor = counting
pool = ThreadPoolExecutor(args["workers"])
try:
    with dask.config.set(pool=pool, num_workers=args["workers"]):
        fuse_files(args["a"], args["b"], args["out"], device="cpu", batch=args["batch"],
                   scheduler=args["scheduler"], cancel=lambda: "at" in stop)
    raise SystemExit("the run ended before the cancel")
except FusionCancelled:
    returned = time.perf_counter()
pool.shutdown(wait=True)
drained = max(returned, stop.get("last", 0.0))
print(json.dumps({"latency": returned - stop["at"], "late": batches["late"], "drained": drained - stop["at"]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--scheduler", default="threads", choices=["threads", "synchronous"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--after", type=int, default=2, help="cancel when this many batches have ended")
    parser.add_argument("--baseline", metavar="REF", help="also run the package as at this git ref, side by side")
    parser.add_argument("--repeats", type=int, default=3, help="runs per version, alternating (median)")
    args = parser.parse_args()

    workers = 1 if args.scheduler == "synchronous" else 2
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    print(f"{args.size}^2 pair, {args.scheduler} ({workers} workers), batch {args.batch}, cancel after {args.after}")
    with tempfile.TemporaryDirectory() as tmp:
        versions = {"new": here}
        if args.baseline:
            versions[args.baseline] = extract(args.baseline, tmp)
        a, b = os.path.join(tmp, "a.tif"), os.path.join(tmp, "b.tif")
        write_synthetic_pair(args.size, a, b)
        runs: dict[str, list[dict]] = {name: [] for name in versions}
        for repeat, (name, path) in itertools.product(range(args.repeats), versions.items()):
            out = os.path.join(tmp, f"out-{name.replace('/', '_')}-{repeat}.zarr")
            task = {**vars(args), "a": a, "b": b, "out": out, "workers": workers}
            result, _ = run_child(CHILD, json.dumps(task), path=path, env={"OMP_NUM_THREADS": "1"})
            runs[name].append(result)
            print(
                f"  {name}: returned {result['latency']:.2f} s after the cancel, {result['late']} batches "
                f"started after it, the last ended {result['drained']:.2f} s after it",
                flush=True,
            )
    medians = {}
    for name, done in runs.items():
        medians[name] = {key: statistics.median(run[key] for run in done) for key in done[0]}
    print(f"\nmedian of {args.repeats}: seconds to return, batches started after the cancel, seconds until all stopped")
    for name, row in medians.items():
        print(f"  {name:>8}: {row['latency']:.2f} s, {row['late']:.0f} batches, {row['drained']:.2f} s")
    for other in list(versions)[1:]:
        new, old = medians["new"], medians[other]
        print(
            f"new / {other}: {new['latency'] / old['latency']:.2f}x the time to return, "
            f"{new['drained'] / old['drained']:.2f}x the time until every task stopped"
        )


if __name__ == "__main__":
    main()
