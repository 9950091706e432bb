"""How soon a fresh process fuses a small pair on the command line, after its imports.

Each run is a fresh Python that imports the heavy libraries (torch, numpy, dask, zarr, tifffile)
and the CLI, then runs ``fusionmamba fuse A B -o OUT`` on a 256 x 256 pair (one tile, the
default model): the second figure is the cold start that is the package's own (model load,
scan kernels loaded from numba's cache, dask's first computation). ``--baseline REF`` runs the
package as at git ref REF too, alternating.

    python benchmarks/cold_start.py --baseline main --repeats 5
Goal: the fuse under 1.5 s after the imports.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile

from fuse_scaling import extract, run_child, write_synthetic_pair

CHILD = """
import json, sys, time
start = time.perf_counter()
import numpy, torch, dask.array, zarr, tifffile
from napari_fusionmamba import cli
imported = time.perf_counter()
code = cli.main(["fuse", sys.argv[1], sys.argv[2], "-o", sys.argv[3], "--no-progress"])
print(json.dumps({"imports": imported - start, "fuse": time.perf_counter() - imported, "code": code}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", metavar="REF", help="also run the package as at this git ref, alternating")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    with tempfile.TemporaryDirectory() as tmp:
        versions = {"new": here}
        if args.baseline:
            versions[args.baseline] = extract(args.baseline, tmp)
        a, b = os.path.join(tmp, "a.tif"), os.path.join(tmp, "b.tif")
        write_synthetic_pair(256, a, b)
        runs: dict[str, list[dict]] = {name: [] for name in versions}
        for repeat, (name, path) in itertools.product(range(args.repeats), versions.items()):
            out = os.path.join(tmp, f"out-{name}-{repeat}.zarr")
            result, _ = run_child(CHILD, a, b, out, path=path)
            runs[name].append(result)
            print(f"  {name}: imports {result['imports']:.2f} s, fuse {result['fuse']:.2f} s", flush=True)
    for name, done in runs.items():
        imports, fuse = (statistics.median(run[key] for run in done) for key in ("imports", "fuse"))
        print(f"{name}: median imports {imports:.2f} s, then the fuse of a 256 x 256 pair {fuse:.2f} s")


if __name__ == "__main__":
    main()
