"""Fuse two registered stacks on a dask.distributed cluster (here a LocalCluster of processes).

    python examples/fuse_stack_distributed.py GFP_STACK.tif PHASE_STACK.tif fused.ome.zarr --workers 2

The same graph runs on any cluster: pass a scheduler address instead (``--scheduler
tcp://HOST:8786``, or ``fusionmamba fuse ... --scheduler tcp://HOST:8786``). Each worker loads the
model once; output chunks are written straight to the store by the workers.
"""

import argparse

from dask.distributed import Client, LocalCluster

from napari_fusionmamba import fuse_files

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("a")
parser.add_argument("b")
parser.add_argument("out", help="output .ome.zarr / .zarr / .tif")
parser.add_argument("--workers", type=int, default=2)
parser.add_argument("--scheduler", help="address of a running scheduler (default: start a LocalCluster)")
parser.add_argument("--tile", type=int, default=256)
parser.add_argument("--overlap", type=int, default=64)
parser.add_argument("--overwrite", action="store_true")
args = parser.parse_args()

if __name__ == "__main__":  # worker processes import this file: start the cluster only once
    if args.scheduler:
        client = Client(args.scheduler)
    else:
        client = Client(LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True))
    with client:
        report = fuse_files(
            args.a, args.b, args.out, tile=args.tile, overlap=args.overlap, scheduler=client, overwrite=args.overwrite
        )
    print(report.summary())
