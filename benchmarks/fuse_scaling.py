"""How fusing files scales with image size: time per pixel and peak memory.

Writes synthetic uint16 fluorescence / phase-contrast-like pairs of each size as tiled TIFFs,
then fuses each pair to zarr on disk in a fresh process (``fuse_files`` with the default model
on the CPU, default tile, overlap, batch and chunk) and reports that process's wall time,
pixels per second (after loading the model and compiling the scan once, reported apart) and peak
resident memory, next to a process that only imports the package and torch (the fixed cost).
Ratios are against the smallest size of the same run.

    python benchmarks/fuse_scaling.py                 # 1024, 2048, 4096
    python benchmarks/fuse_scaling.py --sizes 8192    # larger
Goal: peak RSS within 1.5x from 1k^2 to 4k^2 and under 2 GiB; time linear in pixels.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

CHILD = """
import json, sys, time
import numpy as np
from napari_fusionmamba.engine import fuse, fuse_files
args = json.loads(sys.argv[1])
start = time.perf_counter()
fuse(np.zeros((64, 64)), np.zeros((64, 64)), tile=64, overlap=16, device="cpu")  # load + compile once
warm = time.perf_counter() - start
start = time.perf_counter()
report = fuse_files(args["a"], args["b"], args["out"], device="cpu", scheduler=args["scheduler"])
print(json.dumps({"seconds": time.perf_counter() - start, "warm": warm, "chunks": report.chunks_total,
                  "chunk": report.chunk}))
"""

IMPORT_ONLY = "import torch, napari_fusionmamba.engine, napari_fusionmamba.model.network, dask.array, zarr, tifffile"


TILE = 256  # the TIFFs' tile side: the generator makes one tile at a time


def write_synthetic_pair(size: int, a_path: str, b_path: str, seed: int = 0, strips: bool = False) -> None:
    """Write cells from a smooth random field as two uint16 TIFFs, one tile at a time (memory:
    the (size / 8)^2 coarse field and a tile, never the image): Poisson-noisy glowing blobs, and
    bright borders on a textured background (phase-contrast-like). ``strips``: strip TIFFs
    (16 rows per strip) instead of tiled ones."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    coarse = ndimage.gaussian_filter(rng.standard_normal((size // 8, size // 8)), 2.0)
    threshold = np.percentile(coarse, 55)
    margin = 8

    def tile_of(y: int, x: int, which: int) -> np.ndarray:
        yy, xx = np.mgrid[y - margin : y + TILE + margin, x - margin : x + TILE + margin]
        field = ndimage.map_coordinates(coarse, [yy / 8.0, xx / 8.0], order=1, mode="nearest")
        cells = (field > threshold).astype(np.float32)
        noise = np.random.default_rng([seed, which, y, x])
        inner = (slice(margin, margin + TILE), slice(margin, margin + TILE))
        if which == 0:
            glow = ndimage.uniform_filter(cells, 9)[inner]
            return noise.poisson(150 + 3000 * glow).astype(np.uint16)
        border = (np.abs(ndimage.sobel(cells, 0)) + np.abs(ndimage.sobel(cells, 1)))[inner]
        b = 20000 + 6000 * border - 4000 * cells[inner] + 800 * noise.standard_normal((TILE, TILE))
        return b.clip(0, 65535).astype(np.uint16)

    def tiles(which: int):
        for y in range(0, size, TILE):
            for x in range(0, size, TILE):
                yield tile_of(y, x, which)

    def rows(which: int):  # bands of TILE rows, cut into strips by tifffile
        for y in range(0, size, TILE):
            yield np.concatenate([tile_of(y, x, which) for x in range(0, size, TILE)], axis=1)

    import tifffile

    for which, path in enumerate((a_path, b_path)):
        if strips:
            tifffile.imwrite(path, rows(which), shape=(size, size), dtype=np.uint16, rowsperstrip=16)
        else:
            tifffile.imwrite(path, tiles(which), shape=(size, size), dtype=np.uint16, tile=(TILE, TILE))


def run_child(code: str, *args: str) -> tuple[dict | None, float, float]:
    """Run a fresh Python; return its JSON output, wall seconds and peak RSS in MiB."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    output = process.stdout.read()
    process.stdout.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"child failed ({status}): {output}")
    return (json.loads(output.strip().splitlines()[-1]) if output.strip() else None), wall, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--scheduler", default="threads")
    args = parser.parse_args()

    import tifffile
    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, scheduler {args.scheduler}")
    _, _, floor = run_child(IMPORT_ONLY)
    print(f"import-only process: peak RSS {floor:.0f} MiB")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            a, b = synthetic_pair(size)
            pa, pb, out = (
                os.path.join(tmp, f"{n}{size}{ext}") for n, ext in (("a", ".tif"), ("b", ".tif"), ("out", ".zarr"))
            )
            tifffile.imwrite(pa, a, tile=(256, 256))
            tifffile.imwrite(pb, b, tile=(256, 256))
            del a, b
            result, wall, rss = run_child(
                CHILD, json.dumps({"a": pa, "b": pb, "out": out, "scheduler": args.scheduler})
            )
            rows.append((size, result["seconds"], wall, rss, result["chunks"], result["chunk"]))
            print(
                f"  {size}^2 done in {wall:.0f} s (model load and scan compilation {result['warm']:.1f} s)", flush=True
            )

    base_size, base_seconds, _, base_rss, _, _ = rows[0]
    base_rate = base_size**2 / base_seconds
    print(
        f"\n{'size':>7} {'chunks':>6} {'fuse s':>8} {'process s':>9} {'Mpx/s':>7} {'time/px':>8} "
        f"{'peak RSS MiB':>12} {'RSS ratio':>9}"
    )
    for size, seconds, wall, rss, chunks, _chunk in rows:
        rate = size**2 / seconds
        print(
            f"{size:>5}^2 {chunks:>6} {seconds:>8.1f} {wall:>9.1f} {rate / 1e6:>7.3f} {base_rate / rate:>7.2f}x "
            f"{rss:>12.0f} {rss / base_rss:>8.2f}x"
        )
    print(
        f"(time/px and RSS ratio relative to {base_size}^2; chunk {rows[0][5]} px; "
        f"RSS of an import-only process {floor:.0f} MiB)"
    )


if __name__ == "__main__":
    main()
