"""How fusing files scales with image size: time per pixel and peak memory, side by side with
another version of the package or with a speed-up switched off.

Writes synthetic uint16 fluorescence / phase-contrast-like pairs of each size (one tile at a
time, so even 16384^2 never sits in memory here) as tiled TIFFs, strip TIFFs, zarr or OME-Zarr,
then fuses each pair to zarr on disk in a fresh process (``fuse_files`` with the default model on
the CPU, default tile, overlap, batch and chunk) and reports its pixels per second and peak
resident memory: the process's own high-water mark (``VmHWM``) or, with worker processes, the
sampled sum of the proportional set sizes of the process and its workers (they share torch's
libraries, and the imports of the server they are forked from). The fusion is timed after a
warm-up, timed apart as the cold start: a small pair fused in memory (model load, scan compile)
and a 256 x 256 file pair (the file readers' imports). CPU time counts the workers too. Ratios
are against the smallest size of the same run.

``--baseline REF`` runs every size with the package as it is at git ref REF too (extracted to a
temporary folder), ``--switch NAME=VALUE`` with this package and the environment variable NAME
set to VALUE (``FUSIONMAMBA_FAST_INFERENCE=0``: the network's general path instead of its
inference path; ``FUSIONMAMBA_BALANCED_TASKS=0``: a chunk's tiles in whole rows),
alternating, and prints the throughput ratio new / each: today's figure and the new one
measured on the same machine in the same minutes.

    python benchmarks/fuse_scaling.py                                  # 1024, 2048, 4096
    python benchmarks/fuse_scaling.py --sizes 1024 8192 16384 --baseline main
    python benchmarks/fuse_scaling.py --sizes 1024 --repeats 5 --switch FUSIONMAMBA_FAST_INFERENCE=0 --baseline main
    python benchmarks/fuse_scaling.py --source strips --scheduler processes
Goal: peak RSS within 1.5x of the 1024^2 run and under 2 GiB up to 16384^2; time linear in
pixels; at least 0.5 Mpx/s on a 2-core CPU.

Measured on the shared 2-core development machine (docs/engine.md has the tables):
``--sizes 1024 --repeats 5 --switch FUSIONMAMBA_FAST_INFERENCE=0 --baseline main``: 0.324 Mpx/s
(3.2 CPU s) against 0.240 with the network's general path and 0.260 for main, every run on about
one core; ``--scheduler processes --sizes 1024 8192``: peak 1018 and 1224 MiB (1.20x).
``--sizes 1024 --repeats 3 --baseline main --switch FUSIONMAMBA_BALANCED_TASKS=0`` after the
scan's float32 rounding, the balanced tasks and batch 6: 0.83x main's CPU time, 1.26x its
throughput at load average 6 (about one core for the run).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import numpy as np

SOURCES = ("tiled", "strips", "zarr", "ome-zarr")

CHILD = """
import json, os, resource, sys, threading, time
import psutil
args = json.loads(sys.argv[1])
peak, workers_cpu = [0], {}
def sample():  # the process and its workers (the processes scheduler), every 0.2 s
    me = psutil.Process()
    while True:
        total, processes = 0, [me] + me.children(recursive=True)
        for process in processes:  # several: each one's share of the pages they share (PSS)
            try:
                total += process.memory_full_info().pss if len(processes) > 1 else process.memory_info().rss
                if process is not me:  # workers forked by a server are not our children for rusage
                    times = process.cpu_times()
                    workers_cpu[process.pid] = times.user + times.system
            except psutil.Error:
                pass
        peak[0] = max(peak[0], total)
        time.sleep(0.2)
threading.Thread(target=sample, daemon=True).start()
import numpy as np
from napari_fusionmamba.engine import fuse, fuse_files
start = time.perf_counter()  # load + compile once, and the file readers' imports (a small file pair)
fuse(np.zeros((64, 64)), np.zeros((64, 64)), tile=64, overlap=16, device="cpu")
fuse_files(args["warm_a"], args["warm_b"], args["out"] + ".warm.zarr", device="cpu", scheduler=args["scheduler"])
warm = time.perf_counter() - start
def cpu():  # user + system seconds of this process and of its workers (as last sampled, or as reaped)
    own, reaped = (resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + max(reaped.ru_utime + reaped.ru_stime, sum(workers_cpu.values()))
start, cpu_start = time.perf_counter(), cpu()
report = fuse_files(args["a"], args["b"], args["out"], device="cpu", scheduler=args["scheduler"])
seconds, cpu_seconds = time.perf_counter() - start, cpu() - cpu_start
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024
print(json.dumps({"seconds": seconds, "cpu": cpu_seconds, "warm": warm, "chunks": report.chunks_total,
                  "chunk": report.chunk, "rss": max(hwm, peak[0] / 2**20)}))
"""

IMPORT_ONLY = """
import torch, napari_fusionmamba.engine, napari_fusionmamba.model.network, dask.array, zarr, tifffile
print('{"rss": %f}' % (next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024))
"""


TILE = 256  # the sources' tile side: the generator makes one tile at a time


def synthetic_tiles(size: int, seed: int, which: int) -> Iterator[tuple[tuple[int, int], np.ndarray]]:
    """Tiles ((y, x), uint16 TILE x TILE) of cells from a smooth random field, row by row
    (memory: the (size / 8)^2 coarse field and a tile, never the image): ``which`` 0 gives
    Poisson-noisy glowing blobs, 1 bright borders on a textured background (phase-contrast-like)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    coarse = ndimage.gaussian_filter(rng.standard_normal((size // 8, size // 8)), 2.0)
    threshold = np.percentile(coarse, 55)
    margin = 8
    inner = (slice(margin, margin + TILE), slice(margin, margin + TILE))
    for y in range(0, size, TILE):
        for x in range(0, size, TILE):
            yy, xx = np.mgrid[y - margin : y + TILE + margin, x - margin : x + TILE + margin]
            field = ndimage.map_coordinates(coarse, [yy / 8.0, xx / 8.0], order=1, mode="nearest")
            cells = (field > threshold).astype(np.float32)
            noise = np.random.default_rng([seed, which, y, x])
            if which == 0:
                glow = ndimage.uniform_filter(cells, 9)[inner]
                yield (y, x), noise.poisson(150 + 3000 * glow).astype(np.uint16)
            else:
                border = (np.abs(ndimage.sobel(cells, 0)) + np.abs(ndimage.sobel(cells, 1)))[inner]
                b = 20000 + 6000 * border - 4000 * cells[inner] + 800 * noise.standard_normal((TILE, TILE))
                yield (y, x), b.clip(0, 65535).astype(np.uint16)


def write_synthetic_pair(size: int, a_path: str, b_path: str, seed: int = 0, strips: bool = False) -> None:
    """The pair as two uint16 TIFFs, tiled (TILE x TILE) or in uncompressed strips of 16 rows
    (``strips``: memory-mapped when read; tifffile compresses only whole pages from a
    generator), written one tile or one band of tiles at a time."""
    import tifffile

    def bands(which: int) -> Iterator[np.ndarray]:
        row: list[np.ndarray] = []
        for _, tile in synthetic_tiles(size, seed, which):
            row.append(tile)
            if len(row) * TILE == size:
                yield np.concatenate(row, axis=1)
                row = []

    for which, path in enumerate((a_path, b_path)):
        if strips:
            tifffile.imwrite(path, bands(which), shape=(size, size), dtype=np.uint16, rowsperstrip=16)
        else:
            tiles = (tile for _, tile in synthetic_tiles(size, seed, which))
            tifffile.imwrite(path, tiles, shape=(size, size), dtype=np.uint16, tile=(TILE, TILE))


def write_source(kind: str, size: int, folder: str, seed: int = 0) -> tuple[str, str]:
    """The pair of one size as ``kind`` (tiled / strips TIFF, zarr, OME-Zarr) in ``folder``."""
    import zarr

    suffix = {"tiled": ".tif", "strips": ".tif", "zarr": ".zarr", "ome-zarr": ".ome.zarr"}[kind]
    paths = tuple(os.path.join(folder, f"{name}{size}{suffix}") for name in "ab")
    if kind in ("tiled", "strips"):
        write_synthetic_pair(size, *paths, seed=seed, strips=kind == "strips")
        return paths
    for which, path in enumerate(paths):
        if kind == "zarr":
            array = zarr.create_array(path, shape=(size, size), chunks=(TILE, TILE), dtype=np.uint16)
        else:
            group = zarr.open_group(path, mode="w", zarr_format=2)
            array = group.create_array("0", shape=(size, size), chunks=(TILE, TILE), dtype=np.uint16)
            axes = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
            scale = [{"type": "scale", "scale": [1.0, 1.0]}]
            datasets = [{"path": "0", "coordinateTransformations": scale}]
            group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": datasets}]
        for (y, x), tile in synthetic_tiles(size, seed, which):
            array[y : y + TILE, x : x + TILE] = tile
    return paths


def run_child(code: str, *args: str, path: str | None = None, env: dict[str, str] | None = None) -> tuple[dict, float]:
    """Run a fresh Python (with ``path`` first on its PYTHONPATH, ``env`` added to its
    environment); return its last line as JSON and its wall seconds."""
    env = {**os.environ, **(env or {})}
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [path, env.get("PYTHONPATH")]))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"child failed ({done.returncode}): {done.stdout}")
    return json.loads(done.stdout.strip().splitlines()[-1]), time.perf_counter() - start


def extract(ref: str, folder: str) -> str:
    """The package's source at git ref ``ref``, extracted into ``folder``; returns its src path."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    archive = subprocess.run(["git", "-C", root, "archive", ref, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    return os.path.join(folder, "src")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--scheduler", default="threads")
    parser.add_argument("--source", choices=SOURCES, default="tiled", help="how the pairs are stored")
    parser.add_argument("--baseline", metavar="REF", help="also run the package as at this git ref, side by side")
    parser.add_argument("--repeats", type=int, default=1, help="runs per size and version, alternating (median)")
    parser.add_argument(
        "--switch",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        help="also run this package with the environment variable NAME=VALUE (a speed-up switched off), side by side",
    )
    args = parser.parse_args()

    import torch

    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, scheduler {args.scheduler}, {args.source} sources")
    floor = run_child(IMPORT_ONLY, path=here)[0]["rss"]
    print(f"import-only process: peak RSS {floor:.0f} MiB")
    with tempfile.TemporaryDirectory() as tmp:
        versions: dict[str, tuple[str, dict[str, str]]] = {"new": (here, {})}  # name: (source path, environment)
        for switch in args.switch:
            name, _, value = switch.partition("=")
            versions[switch] = (here, {name: value})
        if args.baseline:
            versions[args.baseline] = (extract(args.baseline, tmp), {})
        results: dict[str, list[dict]] = {name: [] for name in versions}
        os.mkdir(os.path.join(tmp, "warm"))
        warm_a, warm_b = write_source(args.source, TILE, os.path.join(tmp, "warm"))
        for size in args.sizes:
            a, b = write_source(args.source, size, tmp)
            runs: dict[str, list[dict]] = {name: [] for name in versions}
            for repeat, (name, (path, env)) in itertools.product(range(args.repeats), versions.items()):
                out = os.path.join(tmp, f"out{size}-{list(versions).index(name)}-{repeat}.zarr")
                task = {"a": a, "b": b, "warm_a": warm_a, "warm_b": warm_b, "out": out, "scheduler": args.scheduler}
                result, wall = run_child(CHILD, json.dumps(task), path=path, env=env)
                runs[name].append({"size": size, "wall": wall, **result})
                print(
                    f"  {size}^2 {name}: {result['seconds']:.1f} s, {result['cpu']:.1f} CPU s "
                    f"(cold start {result['warm']:.1f} s)",
                    flush=True,
                )
            for name, done in runs.items():  # the run of median time, and the largest peak
                done.sort(key=lambda run: run["seconds"])
                results[name].append({**done[len(done) // 2], "rss": max(run["rss"] for run in done)})
    for name, rows in results.items():
        _table(name, rows, floor)
    for other in list(versions)[1:]:
        print(f"\nnew / {other}, same run: throughput (wall, median of {args.repeats}), CPU time per pixel, peak RSS")
        for new, old in zip(results["new"], results[other]):
            rates = (new["size"] ** 2 / new["seconds"] / 1e6, old["size"] ** 2 / old["seconds"] / 1e6)
            print(
                f"  {new['size']:>5}^2  {rates[0]:.3f} vs {rates[1]:.3f} Mpx/s: {rates[0] / rates[1]:.2f}x faster, "
                f"{new['cpu'] / old['cpu']:.2f}x the CPU time, {new['rss']:.0f} vs {old['rss']:.0f} MiB"
            )


def _table(name: str, rows: list[dict], floor: float) -> None:
    base = rows[0]
    base_rate = base["size"] ** 2 / base["seconds"]
    print(f"\n{name}: chunk {base['chunk']} px, import-only process {floor:.0f} MiB")
    print(
        f"{'size':>7} {'chunks':>6} {'fuse s':>8} {'CPU s':>7} {'cold s':>6} {'Mpx/s':>7} {'time/px':>8} "
        f"{'peak RSS MiB':>12} {'RSS ratio':>9}"
    )
    for row in rows:
        rate = row["size"] ** 2 / row["seconds"]
        print(
            f"{row['size']:>5}^2 {row['chunks']:>6} {row['seconds']:>8.1f} {row['cpu']:>7.1f} {row['warm']:>6.1f} "
            f"{rate / 1e6:>7.3f} "
            f"{base_rate / rate:>7.2f}x {row['rss']:>12.0f} {row['rss'] / base['rss']:>8.2f}x"
        )


if __name__ == "__main__":
    main()
