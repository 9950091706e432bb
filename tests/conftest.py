"""Shared fixtures: small synthetic image pairs that look like real ones, and isolation of
user state (model folder, widget settings) from the developer's machine."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import tifffile
from scipy import ndimage

os.environ.setdefault("OMP_NUM_THREADS", "1")


def real_looking_pair(height: int = 128, width: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A GFP-like uint16 fluorescence image and a phase-contrast-like uint8 image of the same
    cells: smooth blobs with Poisson noise, and bright halos at cell borders with texture."""
    width = width or height
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal((height, width)), max(2.0, min(height, width) / 24))
    cells = field > np.percentile(field, 55)
    inside = ndimage.distance_transform_edt(cells)
    glow = ndimage.gaussian_filter(inside * (rng.random((height, width)) > 0.7), 2.0)
    fluorescence = rng.poisson(150 + 4000 * glow / max(glow.max(), 1e-9)).astype(np.uint16)
    halo = ndimage.gaussian_gradient_magnitude(cells.astype(np.float64), 1.5)
    phase = 0.45 + 0.5 * halo / halo.max() - 0.15 * cells + 0.04 * rng.standard_normal((height, width))
    phase = np.clip(ndimage.gaussian_filter(phase, 0.7) * 255, 0, 255).astype(np.uint8)
    return fluorescence, phase


def write_pair_files(folder: Path, size: int) -> tuple[str, str]:
    """Stripes (8-bit) and rings (16-bit) of ``size`` x ``size`` as FOLDER/a.tif and FOLDER/b.tif:
    a registered pair as files, for tests that drive the CLI."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:size, :size]
    a = ((np.sin(x / 3) * 0.5 + 0.5) * 200 + rng.integers(0, 30, (size, size))).astype(np.uint8)
    b = ((np.cos(np.hypot(y - size // 2, x - round(size / 3)) / 4) * 0.5 + 0.5) * 4000).astype(np.uint16)
    tifffile.imwrite(folder / "a.tif", a)
    tifffile.imwrite(folder / "b.tif", b)
    return str(folder / "a.tif"), str(folder / "b.tif")


def decompression_bomb(path: Path, height: int, width: int) -> Path:
    """A zlib TIFF of a few hundred bytes whose header claims a ``height`` x ``width`` uint16
    image in one strip: decoding it would allocate the whole claimed image."""
    import struct

    tifffile.imwrite(path, np.zeros((64, 64), np.uint16), compression="zlib", rowsperstrip=64)
    page = tifffile.TiffFile(path).pages[0]
    data = bytearray(path.read_bytes())
    for name, value in (("ImageWidth", width), ("ImageLength", height), ("RowsPerStrip", height)):
        tag = page.tags[name]
        fmt = "<I" if tag.dtype == 4 else "<H"
        data[tag.valueoffset : tag.valueoffset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path.write_bytes(bytes(data))
    return path


def load_script(path: Path) -> ModuleType:
    """A script of benchmarks/ or scripts/ as a module, to test its functions directly."""
    spec = importlib.util.spec_from_file_location(path.stem.replace("-", "_"), path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def pair() -> tuple[np.ndarray, np.ndarray]:
    return real_looking_pair(128, 160)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """User models and runs, and the widgets' saved settings, live in a temporary folder, never in
    the developer's home (subprocesses inherit both)."""
    monkeypatch.setenv("FUSIONMAMBA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NAPARI_FUSIONMAMBA_SETTINGS_DIR", str(tmp_path / "settings"))
    return tmp_path / "home"


@pytest.fixture
def notes():
    """Messages of the napari notifications shown during the test, as (severity, message)."""
    from napari.utils.notifications import notification_manager

    seen = []

    def record(notification):
        seen.append((str(notification.severity), notification.message))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


@pytest.fixture(scope="session")
def network(tmp_path_factory):
    """A tiny network whose output depends on context, and its checkpoint path.

    The untrained default returns exactly its residual max(a, b) (its head starts at zero), a
    pointwise map that would make every tiling test pass trivially; this one has a small random
    head (seeded), so tiles, chunks and borders show in its output."""
    import torch

    from napari_fusionmamba.model import build_model
    from napari_fusionmamba.registry import save_checkpoint

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        model = build_model("tiny")
        model.head.reset_parameters()
        with torch.no_grad():
            model.head.weight.mul_(0.1)
            model.head.bias.zero_()
    model.eval()
    path = save_checkpoint(tmp_path_factory.mktemp("network") / "textured.safetensors", model)
    return model, str(path)
