"""The public API at the top level, loaded on first use (importing the package stays light)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import napari_fusionmamba
from napari_fusionmamba.engine import FuseOptions, fuse, fuse_files
from napari_fusionmamba.quality.metrics import evaluate
from napari_fusionmamba.registry import load_model
from napari_fusionmamba.training import finetune


def test_the_top_level_names_are_the_packages_functions():
    assert napari_fusionmamba.fuse is fuse and napari_fusionmamba.fuse_files is fuse_files
    assert napari_fusionmamba.FuseOptions is FuseOptions and napari_fusionmamba.finetune is finetune
    assert napari_fusionmamba.evaluate is evaluate and napari_fusionmamba.load_model is load_model
    assert set(napari_fusionmamba.__all__) >= {"fuse", "fuse_files", "finetune", "evaluate", "load_model"}
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        napari_fusionmamba.nothing  # noqa: B018


def test_importing_the_package_loads_neither_torch_nor_napari():
    code = "import sys, napari_fusionmamba; print('torch' in sys.modules, 'napari' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_fuse_from_the_top_level(pair):
    a, b = pair
    fused = napari_fusionmamba.fuse(a, b, method="average", tile=64, overlap=16)
    assert fused.shape == a.shape and fused.dtype == np.float32
