"""``fusionmamba fuse`` as a user types it: exit codes, one-line errors, the output on disk."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import zarr

from napari_fusionmamba.cli import main
from napari_fusionmamba.engine import fuse
from napari_fusionmamba.io import open_image

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


@pytest.fixture
def files(tmp_path, pair):
    a, b = pair
    meta = {"axes": "YX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2}
    tifffile.imwrite(tmp_path / "gfp.ome.tif", a, metadata=meta)
    tifffile.imwrite(tmp_path / "phase.ome.tif", b, metadata=meta)
    return str(tmp_path / "gfp.ome.tif"), str(tmp_path / "phase.ome.tif")


def test_fuse_writes_the_same_image_as_the_python_api(files, tmp_path, capsys):
    out = str(tmp_path / "fused.ome.zarr")
    assert main(["fuse", *files, "-o", out, "--tile", "64", "--overlap", "16", "--no-progress"]) == 0
    assert "fused.ome.zarr: 128x160 float32" in capsys.readouterr().out
    image = open_image(out)
    assert image.pixel_size == pytest.approx((0.2, 0.2))
    assert np.abs(image.data.compute() - fuse(*files, tile=64, overlap=16)).max() <= 1e-5


def test_method_dtype_and_overwrite(files, tmp_path):
    out = str(tmp_path / "fused.tif")
    assert main(["fuse", *files, "-o", out, "--method", "max", "--dtype", "source", "--no-progress"]) == 0
    first = tifffile.imread(out)
    assert first.dtype == np.uint16
    assert main(["fuse", *files, "-o", out, "--method", "average", "--no-progress"]) == 2
    assert np.array_equal(tifffile.imread(out), first)  # refused: the old output is untouched
    assert main(["fuse", *files, "-o", out, "--method", "average", "--overwrite", "--no-progress"]) == 0
    assert tifffile.imread(out).dtype == np.float32


def test_model_checkpoint_path(files, tmp_path, network):
    model, checkpoint = network
    out = str(tmp_path / "fused.zarr")
    assert (
        main(
            ["fuse", *files, "-o", out, "--model", str(checkpoint), "--tile", "64", "--overlap", "16", "--no-progress"]
        )
        == 0
    )
    expected = fuse(*files, model=model, tile=64, overlap=16)
    assert np.abs(open_image(out).data.compute() - expected).max() <= 1e-5
    # the output says which weights made it: name, version (the file's SHA-256) and size
    engine = zarr.open_group(out, mode="r").attrs["fusionmamba"]["engine"]
    digest = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()[:12]
    assert engine == {
        "model": os.path.basename(checkpoint).removesuffix(".safetensors"),
        "version": f"sha256:{digest}",
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def test_a_tiff_output_names_the_shipped_model_that_made_it(files, tmp_path):
    from napari_fusionmamba.registry import DEFAULT_MODEL, find_model

    out = str(tmp_path / "fused.ome.tif")
    assert main(["fuse", *files, "-o", out, "--tile", "64", "--overlap", "16", "--no-progress"]) == 0
    with tifffile.TiffFile(out) as tiff:
        ome = tiff.ome_metadata
    description = json.loads(re.search(r"<Description>(.*?)</Description>", ome).group(1).replace("&quot;", '"'))
    assert description["fusionmamba"]["engine"]["model"] == DEFAULT_MODEL
    assert description["fusionmamba"]["engine"]["parameters"] == find_model(DEFAULT_MODEL).parameter_count()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--model", "nonexistent-model"], "nonexistent-model"),
        (["--tile", "64", "--overlap", "64"], "tile 64 must be larger than the overlap 64"),
        (["--device", "cuda"], "not available"),
        (["--method", "nope"], "unknown method 'nope'"),
    ],
)
def test_bad_options_exit_2_with_one_line(files, tmp_path, capsys, extra, message):
    if extra == ["--device", "cuda"]:
        from napari_fusionmamba.model.devices import available_devices

        if "cuda" in available_devices():
            pytest.skip("this machine has CUDA")
    out = tmp_path / "out.zarr"
    assert main(["fuse", *files, "-o", str(out), "--no-progress", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fusionmamba fuse: error:") and message in err and "\n" not in err
    assert not out.exists()


def test_missing_source_is_named(files, tmp_path, capsys):
    assert main(["fuse", files[0], str(tmp_path / "gone.tif"), "-o", str(tmp_path / "o.zarr")]) == 2
    assert "gone.tif: no such file" in capsys.readouterr().err


def test_a_bug_is_not_dressed_as_bad_input(files, tmp_path, monkeypatch):
    """Only the package's user-facing errors become a one-line message and exit code 2."""
    import napari_fusionmamba.engine as engine

    def broken(*args, **kwargs):
        raise ValueError("a bug in the engine")

    monkeypatch.setattr(engine, "fuse_files", broken)
    with pytest.raises(ValueError, match="a bug in the engine"):
        main(["fuse", *files, "-o", str(tmp_path / "o.zarr"), "--no-progress"])


@pytest.mark.slow
def test_console_entry_shows_a_progress_bar_of_tiles_with_the_time_left(tmp_path):
    """A 1024 x 1024 pair is one output chunk: the bar counts its 25 tiles (5 x 5) as their
    tasks end, not 0/1 then 1/1."""
    from napari_fusionmamba.io.samples import load_neurons

    neurons = load_neurons()
    files = [str(tmp_path / f"{name}.tif") for name in ("map2", "phase")]
    for path, image in zip(files, (neurons["MAP2"], neurons["phase"][1])):
        tifffile.imwrite(path, np.tile(image, (2, 2)))
    out = str(tmp_path / "fused.zarr")
    result = subprocess.run(
        [sys.executable, "-m", "napari_fusionmamba.cli", "fuse", *files, "-o", out, "--method", "average"],
        env=dict(os.environ, PYTHONPATH=SRC, TQDM_MININTERVAL="0"),  # every update drawn, however quick
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "1 chunks, 25 tiles computed" in result.stdout
    counts = [int(done) for done in re.findall(r"(\d+)/25 ", result.stderr)]
    assert len(set(counts)) > 2 and counts[0] == 0 and counts[-1] == 25 and counts == sorted(counts)
    assert "tile/s" in result.stderr or "s/tile" in result.stderr  # the rate, hence the time left
    assert re.search(r"<\d\d:\d\d", result.stderr)  # tqdm's time left


def test_colormap_colours_the_fused_gray_like_a_green_source(files, tmp_path, capsys):
    gray, green = str(tmp_path / "gray.tif"), str(tmp_path / "green.tif")
    common = ["--method", "average", "--tile", "64", "--overlap", "16", "--no-progress"]
    assert main(["fuse", *files, "-o", gray, *common]) == 0
    assert main(["fuse", *files, "-o", green, "--colormap", "green", *common]) == 0
    rgb = tifffile.imread(green)
    assert rgb.shape == (128, 160, 3)
    np.testing.assert_array_equal(rgb[..., 0], 0)
    np.testing.assert_array_equal(rgb[..., 2], 0)
    np.testing.assert_allclose(rgb[..., 1], tifffile.imread(gray), atol=1e-6)  # black to green: G is the fusion

    # contrast limits: the values of A shown as black and as full green are fused as 0 and 1
    limited = str(tmp_path / "limited.tif")
    assert main(["fuse", *files, "-o", limited, "--colormap", "green", "--contrast-limits", "0", "1", *common]) == 0
    a = tifffile.imread(files[0])
    assert a.min() >= 1
    assert tifffile.imread(green)[..., 1].min() < 0.5  # A's percentiles: dim A pixels stay dim
    assert tifffile.imread(limited)[..., 1][a >= 1].min() >= 0.5  # the average of a saturated A (1) and B

    assert main(["fuse", *files, "-o", str(tmp_path / "x.tif"), "--colormap", "purple", *common]) == 2
    assert "unknown colormap 'purple'" in capsys.readouterr().err


def test_colormaps_for_both_sources_mix_by_how_bright_each_is(files, tmp_path, capsys):
    """--colormap A=magenta --colormap B=blue: the fused gray in magenta where A is bright, blue where B is."""
    from napari_fusionmamba.engine import fuse
    from napari_fusionmamba.io.colour import named_tint

    common = ["--method", "average", "--tile", "64", "--overlap", "16", "--no-progress"]
    gray, both, only_b = (str(tmp_path / name) for name in ("gray.tif", "both.tif", "b.tif"))
    assert main(["fuse", *files, "-o", gray, *common]) == 0
    assert main(["fuse", *files, "-o", both, "--colormap", "A=magenta", "--colormap", "B=blue", *common]) == 0
    rgb, fused = tifffile.imread(both), tifffile.imread(gray)
    np.testing.assert_array_equal(rgb[..., 1], 0)
    np.testing.assert_allclose(rgb[..., 2], fused, atol=1e-6)  # both colours have full blue: B is the fusion
    share_a = rgb[..., 0] / np.maximum(fused, 1e-6)  # red: A's share of the two shown brightnesses
    assert share_a.min() < 0.3 and share_a.max() > 0.7
    expected = fuse(
        *files, method="average", tile=64, overlap=16, tint=named_tint("magenta"), tint_b=named_tint("blue")
    )
    np.testing.assert_allclose(rgb, expected, atol=1e-6)

    assert main(["fuse", *files, "-o", only_b, "--colormap", "B=blue", *common]) == 0
    rgb = tifffile.imread(only_b)
    np.testing.assert_array_equal(rgb[..., :2], 0)
    np.testing.assert_allclose(rgb[..., 2], fused, atol=1e-6)  # black to blue: B is the fusion

    for bad in (["--colormap", "C=red"], ["--colormap", "green", "--colormap", "A=red"]):
        assert main(["fuse", *files, "-o", str(tmp_path / "x.tif"), *bad, *common]) == 2
        assert "give COLOUR or A=COLOUR, and B=COLOUR, once each" in capsys.readouterr().err
    assert main(["fuse", *files, "-o", str(tmp_path / "x.tif"), "--colormap", "B=blue", "--contrast-limits", "0", "1",
                 *common]) == 2  # fmt: skip
    assert "--contrast-limits goes with --colormap for A" in capsys.readouterr().err


@pytest.fixture
def folders(tmp_path, pair):
    """A_DIR and B_DIR holding three good pairs (TIFF, OME-TIFF, PNG), a name only in A, a pair
    whose shapes differ and a pair with a corrupt file."""
    a, b = pair
    a_dir, b_dir = tmp_path / "A", tmp_path / "B"
    a_dir.mkdir()
    b_dir.mkdir()
    tifffile.imwrite(a_dir / "one.tif", a)
    tifffile.imwrite(b_dir / "one.tif", b)
    tifffile.imwrite(a_dir / "two.ome.tif", a[::-1])
    tifffile.imwrite(b_dir / "two.tif", b[:, ::-1])  # matched by name whatever the extension
    iio.imwrite(a_dir / "three.png", (a[:64, :64] >> 8).astype(np.uint8))
    iio.imwrite(b_dir / "three.png", (b[:64, :64] >> 8).astype(np.uint8))
    tifffile.imwrite(a_dir / "lonely.tif", a)
    tifffile.imwrite(a_dir / "mismatch.tif", a)
    tifffile.imwrite(b_dir / "mismatch.tif", b[:100])
    tifffile.imwrite(a_dir / "corrupt.tif", a)
    (b_dir / "corrupt.tif").write_bytes(b"II*\x00 not a tiff at all")
    (a_dir / "notes.txt").write_text("not an image: ignored")
    return a_dir, b_dir


GOOD = {"one": ("one.tif", "one.tif"), "two": ("two.ome.tif", "two.tif"), "three": ("three.png", "three.png")}
FAST = ["--method", "max", "--no-progress"]


def test_fuse_folder_fuses_the_pairs_and_reports_the_rest(folders, tmp_path, capsys):
    a_dir, b_dir = folders
    out_dir = tmp_path / "fused"
    assert main(["fuse-folder", str(a_dir), str(b_dir), str(out_dir), *FAST]) == 1
    out, err = capsys.readouterr()
    assert out.strip().splitlines()[-1] == "fused 3, skipped 1, failed 2"
    lines = err.strip().splitlines()
    assert len(lines) == 3
    lonely, mismatch, corrupt = (
        next(line for line in lines if line.startswith(f"{name}: ")) for name in ("lonely", "mismatch", "corrupt")
    )
    assert "skipped" in lonely and str(b_dir) in lonely
    assert "failed" in mismatch and "shape" in mismatch
    assert "failed" in corrupt and "corrupt.tif" in corrupt
    assert sorted(os.listdir(out_dir)) == ["one.ome.zarr", "three.ome.zarr", "two.ome.zarr"]
    for name, (a, b) in GOOD.items():  # the same pixels as `fusionmamba fuse` gives for the pair
        single = str(tmp_path / f"{name}-single.zarr")
        assert main(["fuse", str(a_dir / a), str(b_dir / b), "-o", single, *FAST]) == 0
        expected = open_image(single).data.compute()
        np.testing.assert_array_equal(open_image(str(out_dir / f"{name}.ome.zarr")).data.compute(), expected)


def test_fuse_folder_keeps_outputs_unless_overwrite_and_exits_0_when_all_fuse(folders, tmp_path, capsys):
    a_dir, b_dir = folders
    out_dir = tmp_path / "fused"
    command = ["fuse-folder", str(a_dir), str(b_dir), str(out_dir), "--format", "tif", *FAST]
    assert main(command) == 1
    first = tifffile.imread(out_dir / "one.ome.tif")
    capsys.readouterr()
    assert main([*command, "--method", "average"]) == 1  # kept: not fused again with another method
    assert capsys.readouterr().out.strip().endswith("fused 3 (3 already there), skipped 1, failed 2")
    np.testing.assert_array_equal(tifffile.imread(out_dir / "one.ome.tif"), first)
    assert main([*command, "--method", "average", "--overwrite"]) == 1
    assert not np.array_equal(tifffile.imread(out_dir / "one.ome.tif"), first)
    for name in ("lonely", "mismatch", "corrupt"):
        os.remove(a_dir / f"{name}.tif")
        if name != "lonely":
            os.remove(b_dir / f"{name}.tif")
    capsys.readouterr()
    assert main(command) == 0
    out, err = capsys.readouterr()
    assert out.strip().splitlines()[-1] == "fused 3 (3 already there), skipped 0, failed 0" and err == ""


def test_fuse_folder_python_api_reports_each_name(folders, tmp_path):
    from napari_fusionmamba.engine import FuseOptions, fuse_folder

    a_dir, b_dir = folders
    heard, chunks = [], set()
    report = fuse_folder(
        a_dir,
        b_dir,
        tmp_path / "fused",
        FuseOptions(method="max"),
        progress=lambda name, done, total: chunks.add(name),
        on_result=heard.append,
    )
    statuses = {result.name: result.status for result in report.results}
    assert statuses == {
        "corrupt": "failed", "lonely": "skipped", "mismatch": "failed", "one": "fused", "three": "fused",
        "two": "fused",
    }  # fmt: skip
    assert heard == report.results and chunks == set(GOOD) and not report.complete
    assert report.results[3].report.shape == (128, 160)  # "one": its FuseReport


@pytest.mark.parametrize(
    "extra,message",
    [(["--method", "nope"], "unknown method 'nope'"), (["--tile", "64", "--overlap", "64"], "tile 64 must be larger")],
)
def test_fuse_folder_bad_options_exit_2_before_any_pair(folders, tmp_path, capsys, extra, message):
    assert main(["fuse-folder", str(folders[0]), str(folders[1]), str(tmp_path / "out"), *FAST, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fusionmamba fuse-folder: error:") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("missing", ["A", "B"])
def test_fuse_folder_missing_folder_exits_2(folders, tmp_path, capsys, missing):
    paths = {"A": str(tmp_path / "A"), "B": str(tmp_path / "B")}
    paths[missing] = str(tmp_path / "nowhere")
    assert main(["fuse-folder", paths["A"], paths["B"], str(tmp_path / "out"), *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"fusionmamba fuse-folder: error: {tmp_path / 'nowhere'}: no such folder"
    assert not (tmp_path / "out").exists()


def test_fuse_folder_refuses_an_output_folder_that_is_a_source(folders, capsys):
    a_dir, b_dir = folders
    assert main(["fuse-folder", str(a_dir), str(b_dir), str(a_dir), *FAST]) == 2
    assert "the output folder is a source folder" in capsys.readouterr().err
    assert not any(name.endswith(".ome.zarr") for name in os.listdir(a_dir))


def test_fuse_folder_with_the_network(folders, tmp_path):
    a_dir, b_dir = folders
    for folder in (a_dir, b_dir):  # keep only the 64x64 pair
        for path in folder.iterdir():
            if path.name != "three.png":
                path.unlink()
    common = ["--tile", "64", "--overlap", "16", "--no-progress"]
    assert main(["fuse-folder", str(a_dir), str(b_dir), str(tmp_path / "fused"), *common]) == 0
    single = str(tmp_path / "single.zarr")
    assert main(["fuse", str(a_dir / "three.png"), str(b_dir / "three.png"), "-o", single, *common]) == 0
    np.testing.assert_allclose(
        open_image(str(tmp_path / "fused" / "three.ome.zarr")).data.compute(),
        open_image(single).data.compute(),
        atol=1e-6,
    )


def test_two_channels_of_one_ome_tiff_are_fused(pair, tmp_path, capsys):
    """fluorescence and phase contrast as channels 0 and 1 of one file; the channel is named
    when it is missing, and one input without channels is refused."""
    a, b = pair
    meta = {"axes": "CYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2, "Channel": {"Name": ["GFP", "phase"]}}
    both = tmp_path / "both.ome.tif"
    tifffile.imwrite(both, np.stack([a, b]), metadata=meta)
    out = str(tmp_path / "fused.ome.zarr")
    assert main(["fuse", str(both), "--channel-a", "0", "--channel-b", "1", "-o", out, "--method", "max"]) == 0
    image = open_image(out)
    assert image.axes == "YX" and image.pixel_size == pytest.approx((0.2, 0.2))
    np.testing.assert_allclose(image.data.compute(), fuse(a, b, method="max"), atol=1e-6)
    swapped = str(tmp_path / "swapped.zarr")
    assert main(["fuse", str(both), "--channel-a", "1", "--channel-b", "0", "-o", swapped, "--method", "max"]) == 0
    np.testing.assert_allclose(open_image(swapped).data.compute(), fuse(b, a, method="max"), atol=1e-6)

    capsys.readouterr()
    assert main(["fuse", str(both), "--channel-a", "0", "--channel-b", "2", "-o", str(tmp_path / "x.zarr")]) == 2
    assert capsys.readouterr().err.strip() == f"fusionmamba fuse: error: {both}: no channel 2; it has 2 (0 to 1)"
    assert main(["fuse", str(both), "-o", str(tmp_path / "y.zarr")]) == 2
    assert "--channel-a and --channel-b" in capsys.readouterr().err
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "y.zarr").exists()
