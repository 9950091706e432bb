"""benchmarks/fuse_scaling.py, cold_start.py, resume_check.py and cancel_latency.py as a user runs
them, and the generator they share, which must never hold a whole image."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np

from conftest import load_script
from napari_fusionmamba.io import open_image

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SRC = str(BENCHMARKS.parent / "src")


def test_every_source_kind_holds_the_same_pair(tmp_path):
    bench = load_script(BENCHMARKS / "fuse_scaling.py")
    images = {}
    for kind in bench.SOURCES:
        folder = tmp_path / kind
        folder.mkdir()
        a, b = bench.write_source(kind, 512, str(folder))
        images[kind] = [open_image(path).data.compute() for path in (a, b)]
    first = images["tiled"]
    assert first[0].shape == (512, 512) and first[0].dtype == np.uint16 and first[0].std() > 100
    for kind, pair in images.items():
        assert all(np.array_equal(x, y) for x, y in zip(pair, first)), kind


def test_the_generator_never_holds_the_image(tmp_path):
    bench = load_script(BENCHMARKS / "fuse_scaling.py")
    peaks = []
    for size in (1024, 2048):  # 2 and 8 MiB images
        tracemalloc.start()
        bench.write_synthetic_pair(size, str(tmp_path / "a.tif"), str(tmp_path / "b.tif"))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < peaks[0] + (1 << 20), peaks  # a tile and the (size / 8)^2 field, not 4x more


def test_the_benchmarks_run_as_a_user_runs_them():
    env = {"PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    scaling = [sys.executable, str(BENCHMARKS / "fuse_scaling.py"), "--sizes", "256", "--source", "strips"]
    scaling += ["--switch", "FUSIONMAMBA_FAST_INFERENCE=0"]
    done = subprocess.run(scaling, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "256^2      1" in done.stdout and "peak RSS MiB" in done.stdout, done.stdout
    assert "new / FUSIONMAMBA_FAST_INFERENCE=0, same run" in done.stdout and "Mpx/s:" in done.stdout, done.stdout
    cold = [sys.executable, str(BENCHMARKS / "cold_start.py"), "--repeats", "1"]
    done = subprocess.run(cold, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "new: median imports" in done.stdout and "256 x 256 pair" in done.stdout, done.stdout


def test_the_resume_and_cancel_benchmarks_run_as_a_user_runs_them():
    """On a 512 x 512 pair (rows of 3 tiles, one tile a batch) with the default model: the
    cancelled run starts at most one batch after the cancel (a worker that had just passed its
    check), and nothing runs once it has returned."""
    import re

    env = {"PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    resume = [sys.executable, str(BENCHMARKS / "resume_check.py"), "--size", "512", "--methods", "average"]
    done = subprocess.run(resume, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert re.search(r"average +1 ", done.stdout), done.stdout
    cancel = [sys.executable, str(BENCHMARKS / "cancel_latency.py"), "--size", "512", "--repeats", "1"]
    done = subprocess.run([*cancel, "--batch", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    late, returned, stopped = re.search(r"new: ([\d.]+) s, (\d+) batches, ([\d.]+) s", done.stdout).group(2, 1, 3)
    assert int(late) <= 1 and returned == stopped, done.stdout
