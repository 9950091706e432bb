"""A real dask cluster: ``dask scheduler`` and two ``dask worker`` processes on the loopback
address, a 4096 x 4096 pair fused through ``fusionmamba fuse --scheduler ADDRESS``, and one
worker killed in the middle of the run. The other worker takes over its chunks; the result must
equal the local run bit for bit, with every block written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_fusionmamba.cli import main
from napari_fusionmamba.engine.resume import PARTIAL_SUFFIX
from napari_fusionmamba.io.samples import load_neurons

distributed = pytest.importorskip("distributed")

SRC = str(Path(__file__).resolve().parents[2] / "src")
DASK = str(Path(sys.executable).with_name("dask"))
SIDE = 4096
#: Tiles of 512 px, 32 px overlap (stride 480), chunks of three strides: 3 x 3 chunks to share out
#: (each computes the 16 tiles that touch it).
FLAGS = ["--tile", "512", "--overlap", "32", "--chunk", "1440", "--no-progress"]
CHUNKS = 9


@pytest.fixture(scope="module")
def big_pair(tmp_path_factory):
    """The neuron sample (MAP2 fluorescence, middle phase plane) tiled 8 x 8 into 4096 x 4096
    TIFFs, and a cheap network for it: one DFFM per level and no DVSS blocks, with a small
    random head so its output depends on the network (the model is the test's cost, not its
    point)."""
    import torch

    from napari_fusionmamba.model import FusionMamba, ModelConfig
    from napari_fusionmamba.registry import save_checkpoint

    folder = tmp_path_factory.mktemp("cluster")
    images = load_neurons()
    a, b = (np.tile(x, (SIDE // x.shape[0], SIDE // x.shape[1])) for x in (images["MAP2"], images["phase"][1]))
    tifffile.imwrite(folder / "a.tif", a, tile=(512, 512))
    tifffile.imwrite(folder / "b.tif", b, tile=(512, 512))
    config = ModelConfig(
        name="cheap", embed_dim=2, encoder_depths=(0,) * 4, decoder_depths=(0,) * 4, d_state=2, expand=1
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        model = FusionMamba(config)
        model.head.reset_parameters()
    checkpoint = save_checkpoint(folder / "cheap.safetensors", model.eval())
    return folder, [str(folder / "a.tif"), str(folder / "b.tif"), "--model", str(checkpoint)]


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "w") as stream:
        return subprocess.Popen([DASK, *args], env=env, stdout=stream, stderr=subprocess.STDOUT)


def _wait_for(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_cluster_that_loses_a_worker_mid_run_gives_the_local_result_bit_for_bit(big_pair, tmp_path):
    folder, inputs = big_pair

    def loaded_networks() -> int:  # nested: sent to the workers by value
        from napari_fusionmamba.engine.predictors import _PREDICTORS

        return len(_PREDICTORS)

    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    cli = [sys.executable, "-m", "napari_fusionmamba.cli", "fuse", *inputs, *FLAGS]
    local = tmp_path / "local.zarr"
    subprocess.run([*cli, "-o", str(local), "--scheduler", "threads"], env=env, check=True)

    address_file = tmp_path / "scheduler.json"
    scheduler = ["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
    processes = [_start([*scheduler, "--scheduler-file", str(address_file)], env, tmp_path / "scheduler.log")]
    try:
        _wait_for(address_file.exists, "the scheduler")
        address = json.loads(address_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        for name in ("w1", "w2"):
            worker = ["worker", address, "--name", name, "--nthreads", "1", "--no-nanny", "--no-dashboard"]
            processes.append(_start([*worker, "--host", "127.0.0.1"], env, tmp_path / f"{name}.log"))

        out = tmp_path / "cluster.zarr"
        run = subprocess.Popen([*cli, "-o", str(out), "--scheduler", address], env=env)
        done = Path(str(out) + PARTIAL_SUFFIX) / "done"
        _wait_for(lambda: done.is_dir() and len(os.listdir(done)) >= 1, "the first chunk", timeout=120)
        processes[1].send_signal(signal.SIGKILL)  # no nanny: the worker stays dead
        killed_at = len(os.listdir(done))
        assert run.wait(timeout=180) == 0
        assert processes[1].wait() == -signal.SIGKILL and processes[2].poll() is None
        with distributed.Client(address, timeout=30) as client:
            loaded = client.run(loaded_networks)
    finally:
        for process in processes:
            process.kill()
            process.wait()

    assert killed_at < CHUNKS  # the worker died with chunks still to do
    assert list(loaded.values()) == [1]  # the worker left loaded the model once for all its chunks
    ours, theirs = zarr.open_group(str(out), mode="r")["0"], zarr.open_group(str(local), mode="r")["0"]
    assert ours.shape[-2:] == (SIDE, SIDE) and ours.nchunks_initialized == ours.nchunks
    np.testing.assert_array_equal(ours[...], theirs[...])
    assert main(["verify", str(out)]) == 0  # every chunk present and as its worker wrote it
