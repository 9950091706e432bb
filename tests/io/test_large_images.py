"""Reading large images without decoding more than a read needs: strip TIFFs strip by strip (or
memory-mapped, or refused with advice), and the pixel budget checked from the header before
anything is decoded."""

from __future__ import annotations

import tracemalloc

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import zarr

from conftest import decompression_bomb
from napari_fusionmamba.errors import ImageReadError
from napari_fusionmamba.io import open_image, readers


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4000, (height, width), dtype=np.uint16)


def test_a_strip_tiff_decodes_only_the_strips_a_read_touches(tmp_path):
    image = _image(512, 300)
    path = tmp_path / "strips.tif"
    tifffile.imwrite(path, image, rowsperstrip=16, compression="zlib")
    page = tifffile.TiffFile(path).pages[0]
    offset, count = page.dataoffsets[20], page.databytecounts[20]  # rows 320-335
    data = bytearray(path.read_bytes())
    data[offset : offset + count] = b"\xff" * count  # strip 20 can no longer be decoded
    path.write_bytes(bytes(data))

    opened = open_image(path)
    assert opened.data.chunksize == (16, 300)
    assert np.array_equal(opened.data[0:300, 10:200].compute(), image[0:300, 10:200])
    assert np.array_equal(opened.data[336:512].compute(), image[336:512])
    with pytest.raises(Exception, match="(?i)zlib|decode|error"):
        opened.data[300:340].compute()


def test_an_uncompressed_single_strip_tiff_is_read_without_loading_it(tmp_path):
    image = _image(2048, 2048)  # 8 MiB in one strip, as tifffile and ImageJ write by default
    path = tmp_path / "single.tif"
    tifffile.imwrite(path, image)
    assert len(tifffile.TiffFile(path).pages[0].dataoffsets) == 1
    opened = open_image(path)
    tracemalloc.start()
    window = opened.data[1000:1064, 500:564].compute()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.array_equal(window, image[1000:1064, 500:564])
    assert peak < 1 << 20, f"reading a 64x64 window allocated {peak} bytes"


def test_a_stack_of_uncompressed_planes_is_read_plane_by_plane(tmp_path):
    stack = np.stack([_image(200, 100, seed) for seed in range(3)])
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack", metadata={"axes": "ZYX"})
    opened = open_image(tmp_path / "stack.tif")
    assert opened.axes == "ZYX" and opened.data.chunksize == (1, 200, 100)
    assert np.array_equal(opened.data[1, 50:60].compute(), stack[1, 50:60])


def test_large_compressed_strips_are_decoded_once_or_refused_with_advice(tmp_path, monkeypatch):
    image = _image(256, 256)  # one zlib strip of 128 KiB
    path = tmp_path / "one-strip.tif"
    tifffile.imwrite(path, image, rowsperstrip=256, compression="zlib")
    monkeypatch.setattr(readers, "STRIP_BYTES", 64 << 10)
    opened = open_image(path)  # a small image: decoded once, here
    path.write_bytes(b"")  # so later reads cannot decode it again
    assert np.array_equal(opened.data[100:120, 5:50].compute(), image[100:120, 5:50])

    tifffile.imwrite(path, image, rowsperstrip=256, compression="zlib")
    monkeypatch.setattr(readers, "WHOLE_BYTES", 64 << 10)
    with pytest.raises(ImageReadError, match=r"one-strip\.tif: stored in compressed strips of 256 rows.*tiled TIFF"):
        open_image(path)


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = decompression_bomb(tmp_path / "bomb.tif", 200_000, 200_000)  # 80 GB of pixels in 300 bytes
    assert tifffile.TiffFile(path).pages[0].shape == (200_000, 200_000)
    with pytest.raises(ImageReadError, match=r"bomb\.tif: 200000x200000 is 4e\+10 pixels.*FUSIONMAMBA_MAX_PIXELS"):
        open_image(path)


def test_the_pixel_budget_is_settable_and_checked_for_every_format(tmp_path, monkeypatch):
    image = _image(64, 64)
    tifffile.imwrite(tmp_path / "a.tif", image, tile=(32, 32))
    zarr.save_array(str(tmp_path / "a.zarr"), image)
    iio.imwrite(tmp_path / "a.png", (image // 16).astype(np.uint8))
    monkeypatch.setenv("FUSIONMAMBA_MAX_PIXELS", "4000")
    for name in ("a.tif", "a.zarr", "a.png"):
        with pytest.raises(ImageReadError, match=rf"{name}: 64x64 is 4\.1e\+03 pixels.*FUSIONMAMBA_MAX_PIXELS"):
            open_image(tmp_path / name)
    monkeypatch.setenv("FUSIONMAMBA_MAX_PIXELS", "4096")
    for name in ("a.tif", "a.zarr", "a.png"):
        assert open_image(tmp_path / name).data.shape == (64, 64)
    monkeypatch.setenv("FUSIONMAMBA_MAX_PIXELS", "lots")
    with pytest.raises(ImageReadError, match="FUSIONMAMBA_MAX_PIXELS='lots' is not a number"):
        open_image(tmp_path / "a.tif")
