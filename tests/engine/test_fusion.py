"""The fusion engine driven as a user would: arrays in memory, files on disk, dask schedulers,
a dask.distributed cluster, interrupted runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile
import zarr

from conftest import real_looking_pair
from napari_fusionmamba.engine import fuse, fuse_files
from napari_fusionmamba.engine.resume import PARTIAL_SUFFIX
from napari_fusionmamba.engine.sources import PERCENTILES
from napari_fusionmamba.engine.tiling import TileGrid
from napari_fusionmamba.errors import FusionCancelled, InputError
from napari_fusionmamba.io import open_image
from napari_fusionmamba.io.colour import rgb_to_ycrcb
from napari_fusionmamba.model.devices import available_devices

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "src")


def normalised(x):
    lo, hi = np.percentile(x.astype(np.float64), PERCENTILES)
    return np.clip((x - lo) / (hi - lo), 0, 1).astype(np.float32)


def psnr(x, y):
    return 10 * np.log10(1.0 / np.mean((x.astype(np.float64) - y) ** 2))


def write_pair(tmp_path, a, b, pixel=0.325):
    meta = {"axes": "ZYX"[3 - a.ndim :], "PhysicalSizeX": pixel, "PhysicalSizeY": pixel}
    pa, pb = tmp_path / "a.ome.tif", tmp_path / "b.ome.tif"
    tifffile.imwrite(pa, a, metadata=meta)
    tifffile.imwrite(pb, b, metadata=meta)
    return str(pa), str(pb)


def test_fuse_normalises_each_source_once_not_per_tile(pair):
    a, b = pair
    out = fuse(a, b, method="average", tile=64, overlap=16)
    assert out.dtype == np.float32 and out.shape == a.shape
    assert np.abs(out - (normalised(a) + normalised(b)) / 2).max() < 1e-5


@pytest.mark.slow
def test_tiled_matches_one_shot_on_a_512_pair(network):
    model, _ = network
    a, b = real_looking_pair(512, seed=3)
    one_shot = fuse(a, b, model=model, tile=512, overlap=0)
    tiled = fuse(a, b, model=model, tile=256, overlap=64)
    assert psnr(tiled, one_shot) >= 40
    assert psnr(one_shot, fuse(a, b, method="max")) < 30  # the network is not its pointwise residual


@pytest.mark.slow
def test_constant_pair_through_the_network_has_no_seams(tmp_path, network):
    """Regular tiles of a constant pair get identical predictions, so a seamless blend repeats
    with the tile stride: neighbouring tile regions must agree (here also across chunk borders
    that cut through tiles)."""
    tile, overlap = 64, 16
    stride = tile - overlap
    height, width = tile + 5 * stride, tile + 4 * stride  # every tile on the regular grid
    a = np.full((height, width), 0.3, np.float32)
    b = np.full((height, width), 0.7, np.float32)
    whole = fuse(a, b, model=network[0], tile=tile, overlap=overlap, normalise=None)
    zarr.open_group(str(tmp_path / "a.zarr"), mode="w").create_array("0", data=a)
    zarr.open_group(str(tmp_path / "b.zarr"), mode="w").create_array("0", data=b)
    out = str(tmp_path / "out.zarr")
    fuse_files(
        str(tmp_path / "a.zarr/0"),
        str(tmp_path / "b.zarr/0"),
        out,
        model=network[1],
        tile=tile,
        overlap=overlap,
        normalise=None,
        chunk=100,
    )
    chunked = open_image(out).data.compute()
    for fused in (whole, chunked):
        inner = fused[overlap : height - overlap, overlap : width - overlap]
        assert np.abs(inner[:-stride] - inner[stride:]).max() <= 1e-5
        assert np.abs(inner[:, :-stride] - inner[:, stride:]).max() <= 1e-5
    assert np.abs(whole - chunked).max() <= 1e-5
    assert whole.std() > 0.05  # the network draws a pattern: the check above is not trivial


def test_stack_is_fused_plane_by_plane_with_one_normalisation_per_stack():
    a = np.stack([real_looking_pair(64, seed=s)[0] * (s + 1) for s in range(3)])
    b = np.stack([real_looking_pair(64, seed=s)[1] for s in range(3)])
    out = fuse(a, b, method="max", tile=32, overlap=8)
    assert out.shape == (3, 64, 64)
    # One (lo, hi) for the whole stack: the brighter planes stay brighter.
    assert np.abs(out - np.maximum(normalised(a), normalised(b))).max() < 1e-5


def test_an_image_goes_with_every_plane_of_a_stack_in_memory_and_to_files(tmp_path):
    """A projection (Y, X) with each plane of a Z stack: one fused plane per stack plane, one
    progress count over all of them, the stack's axes and pixel sizes in the file."""
    projection = real_looking_pair(48, seed=9)[0]
    stack = np.stack([real_looking_pair(48, seed=s)[1] for s in range(3)])
    counts = []
    out = fuse(projection, stack, method="max", tile=32, overlap=8, progress=lambda d, t: counts.append((d, t)))
    assert out.shape == (3, 48, 48)
    for z in range(3):
        assert np.abs(out[z] - np.maximum(normalised(projection), normalised(stack)[z])).max() < 1e-5
    totals = {total for _, total in counts}
    assert len(totals) == 1 and counts[-1] == (totals.pop(),) * 2 and counts == sorted(counts)
    tifffile.imwrite(tmp_path / "map2.tif", projection)
    meta = {"axes": "ZYX", "PhysicalSizeZ": 2.0, "PhysicalSizeY": 0.5, "PhysicalSizeX": 0.5}
    tifffile.imwrite(tmp_path / "phase.ome.tif", stack, metadata=meta)
    fuse_files(str(tmp_path / "map2.tif"), str(tmp_path / "phase.ome.tif"), str(tmp_path / "f.ome.zarr"), method="max")
    image = open_image(tmp_path / "f.ome.zarr")
    assert image.axes == "ZYX" and image.pixel_size == pytest.approx((2.0, 0.5, 0.5))
    np.testing.assert_allclose(image.data.compute(), out, atol=1e-6)


def test_time_and_z_stack_keeps_its_axes_through_files(tmp_path):
    a = np.stack([np.stack([real_looking_pair(48, seed=t * 2 + z)[0] for z in range(2)]) for t in range(3)])
    b = np.stack([np.stack([real_looking_pair(48, seed=t * 2 + z)[1] for z in range(2)]) for t in range(3)])
    meta = {"axes": "TZYX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.3, "PhysicalSizeZ": 1.2}
    tifffile.imwrite(tmp_path / "a.ome.tif", a, metadata=meta)
    tifffile.imwrite(tmp_path / "b.ome.tif", b, metadata=meta)
    out = str(tmp_path / "fused.ome.zarr")
    fuse_files(str(tmp_path / "a.ome.tif"), str(tmp_path / "b.ome.tif"), out, method="max")
    image = open_image(out)
    assert image.axes == "TZYX" and image.data.shape == (3, 2, 48, 48)
    assert image.pixel_size == pytest.approx((1.0, 1.2, 0.3, 0.3))
    assert np.abs(image.data.compute() - np.maximum(normalised(a), normalised(b))).max() < 1e-5


def test_colour_source_is_fused_on_luminance_and_keeps_its_colour(pair):
    a, b = pair
    green = np.zeros(a.shape + (3,), np.uint16)
    green[..., 1] = a
    out = fuse(green, b, method="average", tile=64, overlap=16)
    assert out.shape == a.shape + (3,)
    luma = rgb_to_ycrcb(green.astype(np.float64))[0]
    expected = (normalised(luma) + normalised(b)) / 2
    fused_luma = rgb_to_ycrcb(out)[0]
    unclipped = (out > 0.001).all(axis=-1) & (out < 0.999).all(axis=-1)
    assert unclipped.mean() > 0.5
    assert np.abs(fused_luma - expected)[unclipped].max() < 1e-4
    bright = a > np.percentile(a, 90)
    assert (out[..., 1] >= out[..., 0])[bright].all()  # GFP stays green


def test_nan_and_inf_are_replaced_as_documented(pair):
    a, b = (x.astype(np.float32) for x in pair)
    a[5:9, 5:9] = np.nan
    a[20, 20] = np.inf
    a[30, 30] = -np.inf
    with pytest.warns(UserWarning, match="NaN and -Inf are fused as 0, \\+Inf as 1"):
        out = fuse(a, b, method="average", tile=64, overlap=16)
    assert np.isfinite(out).all()
    nb = normalised(b)
    assert np.allclose(out[5:9, 5:9], nb[5:9, 5:9] / 2, atol=1e-5)
    assert np.isclose(out[20, 20], (1 + nb[20, 20]) / 2, atol=1e-5)
    assert np.isclose(out[30, 30], nb[30, 30] / 2, atol=1e-5)


def test_a_model_object_is_used_as_given(pair, network):
    a, b = pair
    out = fuse(a, b, model=network[0], tile=64, overlap=16)
    assert out.shape == a.shape and out.min() >= 0 and out.max() <= 1
    assert not np.allclose(out, fuse(a, b, tile=64, overlap=16), atol=1e-3)  # not the default model


# --- files, chunks, schedulers --------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pair")
    a, b = real_looking_pair(300, 260, seed=5)
    return write_pair(tmp, a, b)


@pytest.fixture(scope="module")
def reference(files, network, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ref") / "whole.zarr")
    report = fuse_files(*files, out, model=network[1], tile=64, overlap=16, chunk=1000, scheduler="synchronous")
    assert report.chunks_total == 1 and report.tiles_computed == 6 * 6  # each tile of the 6 x 6 grid once
    return open_image(out).data.compute()


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [48, 100, 256, 512])
def test_output_does_not_depend_on_chunk_size(files, network, reference, tmp_path, chunk):
    out = str(tmp_path / "out.ome.zarr")
    report = fuse_files(*files, out, model=network[1], tile=64, overlap=16, chunk=chunk, scheduler="threads")
    assert report.chunks_computed == report.chunks_total == -(-300 // chunk) * -(-260 // chunk)
    assert report.tiles_computed == 36  # each tile once, however many chunks it straddles
    assert zarr.open_array(out + "/0").chunks == (min(chunk, 300), min(chunk, 260))
    assert np.abs(open_image(out).data.compute() - reference).max() <= 1e-5


def test_in_memory_fuse_matches_the_file_pipeline(files, network, reference):
    a, b = (open_image(p).data for p in files)
    assert np.abs(fuse(a, b, model=network[0], tile=64, overlap=16) - reference).max() <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["synchronous", "threads", "processes"])
def test_output_does_not_depend_on_the_scheduler(files, network, reference, tmp_path, scheduler):
    out = str(tmp_path / "out.zarr")
    fuse_files(*files, out, model=network[1], tile=64, overlap=16, chunk=100, scheduler=scheduler)
    assert np.abs(open_image(out).data.compute() - reference).max() <= 1e-5


@pytest.mark.slow
def test_distributed_cluster_gives_the_same_output_and_loads_the_model_once_per_worker(
    files, network, reference, tmp_path
):
    from napari_fusionmamba.cli import main

    distributed = pytest.importorskip("distributed")

    def _loaded_networks() -> list[int]:  # nested: sent to the workers by value
        from napari_fusionmamba.engine.predictors import _PREDICTORS

        return [id(predict) for predict, _ in _PREDICTORS.values()]

    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):
        by_client = str(tmp_path / "client.zarr")
        report = fuse_files(*files, by_client, model=network[1], tile=64, overlap=16, chunk=96, scheduler=client)
        loaded = client.run(_loaded_networks)
        by_address = str(tmp_path / "address.zarr")  # the CLI connects to the scheduler's address
        assert (
            main(
                [
                    "fuse",
                    *files,
                    "-o",
                    by_address,
                    "--model",
                    network[1],
                    "--tile",
                    "64",
                    "--overlap",
                    "16",
                    "--chunk",
                    "150",
                    "--scheduler",
                    cluster.scheduler_address,
                    "--no-progress",
                ]
            )
            == 0
        )
        assert client.run(_loaded_networks) == loaded  # the second run reused each worker's network
    assert report.chunks_computed == 12
    assert [len(ids) for ids in loaded.values()] == [1, 1]  # two workers: one network each
    for out in (by_client, by_address):
        assert np.abs(open_image(out).data.compute() - reference).max() <= 1e-5


@pytest.mark.slow
def test_killed_run_resumes_without_redoing_finished_chunks(files, network, reference, tmp_path):
    out = str(tmp_path / "out.zarr")
    done = out + PARTIAL_SUFFIX + "/done"
    command = [
        sys.executable,
        "-m",
        "napari_fusionmamba.cli",
        "fuse",
        *files,
        "-o",
        out,
        "--model",
        network[1],
        "--tile",
        "64",
        "--overlap",
        "16",
        "--chunk",
        "96",
        "--scheduler",
        "synchronous",
        "--no-progress",
    ]
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    process = subprocess.Popen(command, env=env)
    deadline = time.time() + 180
    while time.time() < deadline and not (os.path.isdir(done) and len(os.listdir(done)) >= 3):
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = len(os.listdir(done))
    total = 4 * 3
    assert 3 <= finished < total and not os.path.exists(out)

    report = fuse_files(*files, out, model=network[1], tile=64, overlap=16, chunk=96, scheduler="synchronous")
    assert (report.chunks_skipped, report.chunks_computed) == (finished, total - finished)
    assert not os.path.exists(out + PARTIAL_SUFFIX)
    assert zarr.open_group(out).attrs["fusionmamba"]["complete"] is True
    assert np.abs(open_image(out).data.compute() - reference).max() <= 1e-5


@pytest.mark.parametrize("scheduler", ["synchronous", "threads"])
def test_cancelled_run_leaves_no_output_and_resumes(files, tmp_path, scheduler):
    out = str(tmp_path / "out.tif")
    done = out + PARTIAL_SUFFIX + "/done"
    seen = []
    with pytest.raises(FusionCancelled):
        fuse_files(
            *files,
            out,
            method="average",
            chunk=64,
            scheduler=scheduler,
            progress=lambda d, t: seen.append((d, t)),
            cancel=lambda: len(os.listdir(done)) >= 3,
        )
    assert not os.path.exists(out)
    assert seen[0] == (0, 4) and {total for _, total in seen} == {4}  # the 2 x 2 tiles of 256 px
    report = fuse_files(*files, out, method="average", chunk=64, scheduler=scheduler)
    assert report.chunks_skipped >= 3 and report.chunks_skipped + report.chunks_computed == 25
    expected = fuse(*files, method="average")
    assert np.abs(tifffile.imread(out) - expected).max() <= 1e-6
    whole = fuse_files(*files, str(tmp_path / "whole.tif"), method="average", chunk=64, scheduler=scheduler)
    np.testing.assert_array_equal(tifffile.imread(out), tifffile.imread(whole.out))  # the same bytes


def test_progress_counts_tiles_as_their_tasks_end(files, tmp_path):
    """One output chunk of many tiles: the progress moves tile task by tile task, up to the
    tile count; a resumed run starts at the tiles it need not run again."""
    seen = []
    report = fuse_files(
        *files, str(tmp_path / "one.zarr"), method="average", tile=64, overlap=16, progress=lambda *p: seen.append(p)
    )
    tiles = report.tiles_computed
    assert report.chunks_computed == 1 and tiles == len(TileGrid(300, 260, 64, 16))
    assert seen[0] == (0, tiles) and seen[-1] == (tiles, tiles) and len(seen) > 3
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)

    out, seen = str(tmp_path / "resumed.zarr"), []
    done = out + PARTIAL_SUFFIX + "/done"
    options = dict(method="average", tile=64, overlap=16, chunk=96, scheduler="synchronous")
    with pytest.raises(FusionCancelled):
        fuse_files(*files, out, **options, cancel=lambda: os.path.isdir(done) and len(os.listdir(done)) >= 4)
    resumed = fuse_files(*files, out, **options, progress=lambda *p: seen.append(p))
    assert resumed.chunks_skipped >= 4 and seen[-1] == (tiles, tiles)
    assert seen[0] == (tiles - resumed.tiles_computed, tiles)  # tiles not run again count as done


def test_on_a_cluster_a_chunk_counts_the_tiles_it_waited_on():
    """A cluster reports chunk tasks only: each counts the tile tasks it needed, once."""
    from napari_fusionmamba.engine.files import TileCounter

    seen = []
    counter = TileCounter(
        10, {"t1": 3, "t2": 3, "t3": 2}, {"c1": ["t1", "t2"], "c2": ["t2", "t3"]}, lambda d, t: seen.append(d)
    )
    counter("c1")
    counter("c2")
    assert seen == [2, 8, 10]


def test_cancel_and_progress_do_not_touch_other_dask_computations(tmp_path, monkeypatch):
    """A viewer computes its own dask layers while a run fills a store in a worker thread:
    the run's progress and cancel hooks must stay with the run."""
    import threading

    import dask.array as da

    from napari_fusionmamba.quality import baselines

    def slow_average(a, b):
        time.sleep(0.2)
        return baselines.average(a, b)

    monkeypatch.setitem(baselines.BASELINES, "slow", slow_average)
    rng = np.random.default_rng(6)
    a, b = rng.random((2, 16, 64, 64), dtype=np.float32)
    stop, seen, outcome = threading.Event(), [], []

    def run():
        try:
            fuse_files(
                a,
                b,
                str(tmp_path / "out.zarr"),
                method="slow",
                scheduler="threads",
                progress=lambda d, t: seen.append(d) or (d >= 3 and stop.set()),  # however slow the loop below
                cancel=stop.is_set,
            )
        except FusionCancelled:
            outcome.append("cancelled")

    worker = threading.Thread(target=run)
    worker.start()
    other = da.ones((256, 256), chunks=32)
    sums = []
    while worker.is_alive():
        sums.append(float(other.sum().compute(scheduler="threads")))
    worker.join()
    assert outcome == ["cancelled"] and len(sums) > 0 and set(sums) == {256.0 * 256}
    assert seen == sorted(seen) and max(seen) < 16


@pytest.mark.parametrize("scheduler", ["synchronous", "threads"])
def test_a_cancelled_file_fusion_stops_within_a_batch_and_resumes(files, tmp_path, monkeypatch, scheduler):
    """One task runs a row of six tiles: a cancel lands after the batch under way, not after the
    row; tasks still running when the run ends stop at their next batch without building a batch
    runner; the resumed run writes the bytes of an uninterrupted one."""
    from concurrent.futures import ThreadPoolExecutor

    import dask

    from napari_fusionmamba.engine import execute
    from napari_fusionmamba.quality import baselines

    batches, stop_after = [], 2

    def counted(a, b):
        batches.append(1)
        time.sleep(0.05)  # the other worker starts its row meanwhile
        return baselines.average(a, b)

    method = f"counted-{scheduler}"  # a name of its own: each process keeps the predictor it built
    monkeypatch.setitem(baselines.BASELINES, method, counted)
    options = dict(method=method, tile=64, overlap=16, batch=1, scheduler=scheduler)
    out, pool = str(tmp_path / "out.zarr"), ThreadPoolExecutor(2)
    with dask.config.set(pool=pool), pytest.raises(FusionCancelled):
        fuse_files(*files, out, **options, cancel=lambda: len(batches) >= stop_after)
    pool.shutdown(wait=True)  # every task dask started has ended
    workers = 1 if scheduler == "synchronous" else 2
    assert stop_after <= len(batches) <= stop_after + workers  # not the 6 batches of a row
    assert execute._RUNS == {} and execute._RUNNERS == {}
    fuse_files(*files, out, **options)
    whole = fuse_files(*files, str(tmp_path / "whole.zarr"), **options).out
    np.testing.assert_array_equal(zarr.open_group(out)["0"][:], zarr.open_group(whole)["0"][:])


def test_an_unfinished_run_with_other_arguments_is_not_resumed(files, tmp_path):
    out = str(tmp_path / "out.zarr")
    with pytest.raises(FusionCancelled):
        fuse_files(*files, out, method="average", chunk=64, cancel=lambda: True)
    with pytest.raises(InputError, match="unfinished run with other arguments"):
        fuse_files(*files, out, method="max", chunk=64)
    report = fuse_files(*files, out, method="max", chunk=64, overwrite=True)
    assert report.chunks_skipped == 0 and report.chunks_computed == 25


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,expected", [("float32", np.float32), ("source", np.uint16)])
def test_tiff_in_zarr_out_keeps_shape_dtype_choice_and_pixel_size(tmp_path, dtype, expected):
    a, b = real_looking_pair(64, 96, seed=1)
    files = write_pair(tmp_path, np.stack([a, a // 2]), np.stack([b, b]).astype(np.uint16), pixel=0.325)
    out = str(tmp_path / "fused.ome.zarr")
    report = fuse_files(*files, out, tile=64, overlap=16, dtype=dtype)
    image = open_image(out)
    assert image.data.shape == report.shape == (2, 64, 96) and image.data.dtype == expected
    assert image.axes == "ZYX" and image.pixel_size[-2:] == pytest.approx((0.325, 0.325))
    assert image.unit == "micrometer"
    values = image.data.compute()
    if expected == np.uint16:
        assert values.max() > 60000  # the full range of the dtype
    multiscales = zarr.open_group(out).attrs["multiscales"][0]
    assert multiscales["version"] == "0.4" and [a["name"] for a in multiscales["axes"]] == ["z", "y", "x"]


def test_zarr_in_tiff_out_keeps_shape_dtype_choice_and_pixel_size(tmp_path):
    a, b = real_looking_pair(80, 72, seed=2)
    paths = []
    for name, data in (("a.ome.zarr", a), ("b.ome.zarr", b)):
        group = zarr.open_group(str(tmp_path / name), mode="w", zarr_format=2)
        group.create_array("0", data=data, chunks=(32, 32))
        group.attrs["multiscales"] = [
            {
                "version": "0.4",
                "axes": [
                    {"name": "y", "type": "space", "unit": "micrometer"},
                    {"name": "x", "type": "space", "unit": "micrometer"},
                ],
                "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [0.5, 0.5]}]}],
            }
        ]
        paths.append(str(tmp_path / name))
    out = str(tmp_path / "fused.tif")
    fuse_files(*paths, out, tile=64, overlap=16, dtype="source")
    image = open_image(out)
    # uint16 and uint8 sources: the common dtype is uint16.
    assert image.data.shape == (80, 72) and image.data.dtype == np.uint16
    assert image.pixel_size == pytest.approx((0.5, 0.5))


def test_outputs_lie_where_the_source_lies(tmp_path):
    """A's OME-TIFF plane position becomes the OME-Zarr translation (every pyramid level), and
    that becomes the OME-TIFF positions of the next output: a fused file opens over its sources."""
    a = np.stack([real_looking_pair(600, 520, seed=z)[0] for z in range(2)])
    b = np.stack([real_looking_pair(600, 520, seed=z)[1] for z in range(2)])
    meta = {
        "axes": "ZYX",
        "PhysicalSizeX": 0.5,
        "PhysicalSizeY": 0.5,
        "PhysicalSizeZ": 2.0,
        "Plane": {"PositionX": [30.0, 30.0], "PositionY": [-4.0, -4.0], "PositionZ": [7.0, 9.0]},
    }
    tifffile.imwrite(tmp_path / "a.ome.tif", a, metadata=meta)
    tifffile.imwrite(tmp_path / "b.ome.tif", b, metadata={**meta, "Plane": {}})  # B says nothing
    assert open_image(tmp_path / "a.ome.tif").origin == (7.0, -4.0, 30.0)

    zarr_out = str(tmp_path / "fused.ome.zarr")
    fuse_files(str(tmp_path / "a.ome.tif"), str(tmp_path / "b.ome.tif"), zarr_out, method="max")
    assert open_image(zarr_out).origin == (7.0, -4.0, 30.0)
    datasets = zarr.open_group(zarr_out).attrs["multiscales"][0]["datasets"]
    assert len(datasets) > 1  # a pyramid, each level placed like the full resolution
    assert all(d["coordinateTransformations"][1]["translation"] == [7.0, -4.0, 30.0] for d in datasets)

    tiff_out = str(tmp_path / "fused.ome.tif")
    fuse_files(zarr_out, zarr_out, tiff_out, method="max")
    assert open_image(tiff_out).origin == (7.0, -4.0, 30.0)
    with tifffile.TiffFile(tiff_out) as tif:
        planes = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]["Plane"]
    assert [plane["PositionZ"] for plane in planes] == [7.0, 9.0]


def test_png_colour_to_ome_tiff(tmp_path, pair):
    import imageio.v3 as iio

    a, b = pair
    rgb = np.zeros(a.shape + (3,), np.uint8)
    rgb[..., 1] = (a / a.max() * 255).astype(np.uint8)
    iio.imwrite(tmp_path / "gfp.png", rgb)
    iio.imwrite(tmp_path / "pc.png", b)
    out = str(tmp_path / "fused.ome.tif")
    fuse_files(str(tmp_path / "gfp.png"), str(tmp_path / "pc.png"), out, method="average", dtype="source")
    image = open_image(out)
    assert image.axes == "YXS" and image.data.shape == a.shape + (3,) and image.data.dtype == np.uint8


def test_large_zarr_output_gets_a_pyramid_for_viewers(tmp_path):
    a, b = real_looking_pair(600, 530, seed=4)
    green = np.zeros(a.shape + (3,), np.uint16)
    green[..., 1] = a
    out = str(tmp_path / "fused.ome.zarr")
    fuse_files(green, b, out, method="average")
    image = open_image(out)
    assert [level.shape for level in image.levels] == [(3, 600, 530), (3, 300, 265)]
    full = image.levels[0].compute().astype(np.float64)
    assert np.allclose(
        image.levels[1].compute(), full[:, :600, :530].reshape(3, 300, 2, 265, 2).mean(axis=(2, 4)), atol=1e-6
    )
    assert np.allclose(np.moveaxis(full, 0, -1), fuse(green, b, method="average"), atol=1e-6)


# --- bad input: a clear error naming the input, nothing at the output path --------------------


def _save(path, data):
    path = str(path)
    if path.endswith(".zarr"):
        zarr.open_group(path, mode="w").create_array("0", data=data)
        return path + "/0"
    tifffile.imwrite(path, data, metadata={"axes": "ZYX"[3 - data.ndim :]})
    return path


BAD = {
    "shapes differ": (
        np.zeros((64, 64), np.uint8),
        np.zeros((64, 80), np.uint8),
        {},
        "spatial shapes differ.*64x64.*64x80",
    ),
    "planes differ": (
        np.zeros((3, 64, 64), np.uint8),
        np.zeros((4, 64, 64), np.uint8),
        {},
        "different numbers of planes.*3 Z.*4 Z",
    ),
    "one pixel": (np.zeros((1, 1), np.uint8), np.zeros((1, 1), np.uint8), {}, "a.tif: image too small \\(1x1"),
    "empty": (
        np.zeros((0, 64), np.uint8),
        np.zeros((0, 64), np.uint8),
        {"suffix": ".zarr"},
        "a.zarr/0: image too small",
    ),
    "boolean": (np.zeros((64, 64), bool), np.zeros((64, 64), np.uint8), {"suffix": ".zarr"}, "a.zarr/0: boolean"),
    "complex": (
        np.zeros((64, 64), np.complex64),
        np.zeros((64, 64), np.uint8),
        {"suffix": ".zarr"},
        "a.zarr/0: complex",
    ),
    "tile <= overlap": (
        np.zeros((64, 64), np.uint8),
        np.zeros((64, 64), np.uint8),
        {"tile": 32, "overlap": 32},
        "larger than the overlap",
    ),
    "tile not a multiple": (
        np.zeros((64, 64), np.uint8),
        np.zeros((64, 64), np.uint8),
        {"tile": 100},
        "multiple of the network stride",
    ),
    "unknown model": (
        np.zeros((64, 64), np.uint8),
        np.zeros((64, 64), np.uint8),
        {"model": "no-such-model"},
        "no-such-model",
    ),
    "unknown method": (
        np.zeros((64, 64), np.uint8),
        np.zeros((64, 64), np.uint8),
        {"method": "magic"},
        "unknown method 'magic'",
    ),
    "unknown scheduler": (
        np.zeros((64, 64), np.uint8),
        np.zeros((64, 64), np.uint8),
        {"scheduler": "thread"},
        "unknown scheduler 'thread'",
    ),
    "64-bit source dtype": (
        np.zeros((64, 64), np.int64),
        np.zeros((64, 64), np.uint8),
        {"suffix": ".zarr", "dtype": "source", "method": "max"},
        "int64 sources.*use dtype float32",
    ),
    "absent device": (
        np.zeros((64, 64), np.uint8),
        np.zeros((64, 64), np.uint8),
        {"device": "cuda"},
        "cuda.*not available",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_refused_and_nothing_is_written(tmp_path, case):
    a, b, options, message = BAD[case]
    options = dict(options)
    suffix = options.pop("suffix", ".tif")
    if case == "absent device" and "cuda" in available_devices():
        pytest.skip("this machine has CUDA")
    pa, pb = _save(tmp_path / f"a{suffix}", a), _save(tmp_path / f"b{suffix}", b)
    out = tmp_path / "out.zarr"
    with pytest.raises(ValueError, match=message):
        fuse_files(pa, pb, str(out), **options)
    assert not os.path.exists(out) and not os.path.exists(str(out) + PARTIAL_SUFFIX)


def test_bad_files_and_outputs_are_named(tmp_path, pair):
    a, b = write_pair(tmp_path, *pair)
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00garbage")
    unreadable = tmp_path / "folder.tif"  # unreadable as a file (permissions do not stop root)
    unreadable.mkdir()
    cases = [
        ((str(tmp_path / "missing.tif"), b, str(tmp_path / "o1.zarr")), {}, FileNotFoundError, "missing.tif"),
        ((str(corrupt), b, str(tmp_path / "o2.zarr")), {}, ValueError, "corrupt.tif: cannot read"),
        ((a, str(unreadable), str(tmp_path / "o5.zarr")), {}, ValueError, "folder.tif: cannot read"),
        ((a, b, str(tmp_path / "nowhere" / "o3.zarr")), {}, ValueError, "folder .*nowhere does not exist"),
        ((a, b, a), {"overwrite": True}, ValueError, "would overwrite the source"),
        ((a, b, str(tmp_path / "o4.png")), {}, ValueError, "o4.png: write fused images as"),
    ]
    for args, options, error, message in cases:
        with pytest.raises(error, match=message):
            fuse_files(*args, **options)
        assert not os.path.exists(args[2]) or args[2] == a
    existing = tmp_path / "exists.zarr"
    existing.mkdir()
    with pytest.raises(ValueError, match="exists.zarr: already exists"):
        fuse_files(a, b, str(existing), method="average")
    assert os.listdir(existing) == []
    report = fuse_files(a, b, str(existing), method="average", overwrite=True)
    assert open_image(report.out).data.shape == pair[0].shape


def test_a_run_forgets_its_batch_runner_when_it_ends(files, tmp_path):
    """A long napari session runs many fusions: none may leave its runner (and network) behind."""
    from napari_fusionmamba.engine import execute

    fuse_files(*files, str(tmp_path / "done.zarr"), method="average", chunk=64, scheduler="threads")
    assert execute._RUNS == {} and execute._RUNNERS == {}
    chunks = []
    with pytest.raises(FusionCancelled):
        fuse_files(
            *files,
            str(tmp_path / "stopped.zarr"),
            method="average",
            chunk=64,
            scheduler="synchronous",
            progress=lambda done, total: chunks.append(done),
            cancel=lambda: len(chunks) > 2,
        )
    assert len(chunks) > 2 and execute._RUNS == {} and execute._RUNNERS == {}


def test_a_tile_task_started_after_its_run_ended_runs_nothing(files, monkeypatch):
    """dask's thread pool can start a task of a cancelled run after the run has returned: the
    task must stop at once, without building a batch runner (and loading a network) that nobody
    forgets. A task in another process (another process id) has no run record here, and keeps a
    runner of its own."""
    from napari_fusionmamba.engine import FuseOptions, execute
    from napari_fusionmamba.engine.job import prepare_job

    monkeypatch.setattr(execute, "_RUNNERS", {})  # the runner built below stays in this test
    job = prepare_job(*files, FuseOptions(method="average", tile=64, overlap=16))
    with execute.running(lambda: False) as ended:
        pass
    with pytest.raises(FusionCancelled):
        execute.fuse_tiles(job, ended, (), [(0, 0)], 1056)
    with execute.running(lambda: True) as cancelled, pytest.raises(FusionCancelled):
        execute.fuse_tiles(job, cancelled, (), [(0, 0)], 1056)
    assert execute._RUNS == {} and execute._RUNNERS == {}
    forked = (execute._TOKEN, os.getpid() + 1, 0)  # a worker process forked from this one
    remote = ("another machine", os.getpid(), 0)  # a cluster's worker with this process's id
    for elsewhere in (forked, remote):
        assert set(execute.fuse_tiles(job, elsewhere, (), [(0, 0)], 1056)) == {(0, 0)}
    assert len(execute._RUNNERS) == 1


def test_options_and_keywords_say_the_same(files, tmp_path):
    from napari_fusionmamba.engine import FuseOptions

    options = FuseOptions(method="average", tile=64, overlap=16)
    np.testing.assert_array_equal(fuse(*files, options), fuse(*files, method="average", tile=64, overlap=16))
    np.testing.assert_array_equal(fuse(*files, options, tile=128), fuse(*files, method="average", tile=128, overlap=16))
    report = fuse_files(*files, str(tmp_path / "o.zarr"), options, chunk=96)
    assert report.chunk == 96 and report.settings["tile"] == 64
    with pytest.raises(TypeError, match="unknown fusion option.*tiles"):
        fuse(*files, tiles=64)
    with pytest.raises(TypeError, match="fuse\\(\\) takes no chunk"):
        fuse(*files, method="average", chunk=96)


def test_in_memory_fuse_runs_batches_side_by_side_on_one_torch_thread_each():
    """As fuse_files' local workers do: with several batches, dask's ``num_workers`` threads run
    them, each on one torch thread; a single batch keeps torch's threads; torch's setting is put
    back; the result does not depend on it."""
    import threading

    import dask
    import torch

    from napari_fusionmamba.model import MODEL_CONFIGS, FusionMamba

    seen = []

    class Spy(FusionMamba):
        def forward(self, a, b):
            seen.append((threading.get_ident(), torch.get_num_threads()))
            return super().forward(a, b)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)  # weights of its own: the predictor cache knows modules by their weights
        spy = Spy(MODEL_CONFIGS["tiny"]).eval()
        torch.nn.init.normal_(spy.head.weight, std=0.01)
    a, b = real_looking_pair(200, 180, seed=3)
    runs = {}
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # so that one thread differs from torch's setting on any machine
    try:
        for workers in (2, 1):
            with dask.config.set(num_workers=workers):
                runs[workers] = fuse(a, b, model=spy, tile=64, overlap=16, batch=2), list(seen)
            seen.clear()
        fuse(a[:64, :64], b[:64, :64], model=spy, tile=64, overlap=16)  # one tile: one batch
        single, after = list(seen), torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    (together, parallel), (alone, serial) = runs[2], runs[1]
    assert len(parallel) == len(serial) == 8  # 4 x 4 tiles, 2 a batch
    assert {threads for _, threads in parallel} == {1} and {threads for _, threads in serial} == {2}
    assert len({ident for ident, _ in parallel}) == 2 and threading.get_ident() not in {i for i, _ in parallel}
    assert single == [(threading.get_ident(), 2)] and after == 2
    np.testing.assert_allclose(together, alone, atol=1e-5)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forkserver and /proc: Linux")
def test_worker_processes_are_forked_from_a_server_that_imported_torch():
    """The ``processes`` scheduler's workers come from a server process that imported torch and
    the package once (so they share those pages), take one task at a time, one torch thread each."""
    import torch

    from napari_fusionmamba.engine.execute import _one_torch_thread_per_worker

    with _one_torch_thread_per_worker("processes") as keywords:
        pool = keywords["pool"]
        parents = {pool.submit(os.getppid).result() for _ in range(4)}
        threads = {pool.submit(torch.get_num_threads).result() for _ in range(4)}
    assert keywords["chunksize"] == 1 and threads == {1}
    (server,) = parents
    assert server != os.getpid()  # forked by the server, not by this process
    with open(f"/proc/{server}/maps") as maps:
        assert "libtorch_cpu" in maps.read()  # which had imported torch before forking
