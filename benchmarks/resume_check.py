"""What content-keyed resume costs: fusing every chunk of a TIFF pair into zarr, next to checking
every finished chunk on a resume (reading its source windows and its stored data again and
comparing their digests with the ones recorded), and the part of that check spent hashing.

    python benchmarks/resume_check.py                      # 2048 x 2048, the default model and average
    python benchmarks/resume_check.py --size 4096 --methods average
Goal: a resume's check costs a small fraction of fusing (it reads, it does not fuse).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fuse_scaling import write_synthetic_pair

from napari_fusionmamba.engine.execute import running
from napari_fusionmamba.engine.files import _run_blocks, output_layout, plan_blocks
from napari_fusionmamba.engine.job import prepare_job
from napari_fusionmamba.engine.options import FuseOptions
from napari_fusionmamba.engine.resume import open_partial, run_record, sound_chunks
from napari_fusionmamba.engine.verify import digest


def measure(a: str, b: str, out: str, method: str | None) -> dict[str, float]:
    """Seconds to fuse every chunk, to check them all as a resume does, and to hash the windows."""
    options = FuseOptions(method=method, device="cpu", names=(a, b))
    job = prepare_job(a, b, options)
    layout = output_layout(job, options)
    partial = open_partial(out, run_record(job, layout, "zarr"), layout, overwrite=True)
    blocks = plan_blocks(job, layout.chunk)
    start = time.perf_counter()
    with running(None) as run_id:
        _run_blocks(job, layout, partial, blocks, "threads", None, None, run_id)
    fused = time.perf_counter() - start
    start = time.perf_counter()
    kept, redone = sound_chunks(job, layout, partial, blocks)
    checked = time.perf_counter() - start
    assert len(kept) == len(blocks) and redone == 0
    windows = [job.read(plane, *job.grid().reach(*region)) for plane, region in blocks]
    start = time.perf_counter()
    for pair in windows:
        digest(*pair)
    hashed = time.perf_counter() - start
    return {"chunks": len(blocks), "fuse": fused, "check": checked, "hash": hashed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--methods", nargs="+", default=["model", "average"], help="'model' is the default model")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        paths = os.path.join(folder, "a.tif"), os.path.join(folder, "b.tif")
        write_synthetic_pair(args.size, *paths)
        print(f"{args.size}^2 uint16 TIFFs -> zarr, threads scheduler")
        print(f"{'engine':>8} {'chunks':>6} {'fuse s':>8} {'check s':>8} {'check/fuse':>10} {'hash s':>7}")
        for method in args.methods:
            out = os.path.join(folder, f"{method}.zarr")
            row = measure(*paths, out, None if method == "model" else method)
            print(
                f"{method:>8} {row['chunks']:>6} {row['fuse']:>8.2f} {row['check']:>8.2f} "
                f"{row['check'] / row['fuse']:>10.3f} {row['hash']:>7.3f}"
            )


if __name__ == "__main__":
    main()
