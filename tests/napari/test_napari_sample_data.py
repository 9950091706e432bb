"""The shipped sample pair: opened through napari's sample menu, small, and regenerable from the script."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def test_sample_pair_opens_as_two_matching_layers(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-fusionmamba", "gfp_phase")
    assert [layer.name for layer in viewer.layers] == ["GFP", "phase"]
    gfp, phase = (layer.data for layer in viewer.layers)
    assert gfp.shape == phase.shape == (320, 320)
    assert gfp.dtype == phase.dtype == np.uint8
    # two different modalities with real content, not blank or identical images
    assert gfp.std() > 20 and phase.std() > 20
    assert abs(np.corrcoef(gfp.ravel(), phase.ravel())[0, 1]) < 0.5


def test_shipped_files_are_small_and_made_by_the_script():
    data = ROOT / "src" / "napari_fusionmamba" / "data"
    assert sum(path.stat().st_size for path in data.glob("sample_*.png")) < 300 * 1024

    spec = importlib.util.spec_from_file_location("make_sample_pair", ROOT / "scripts" / "make_sample_pair.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    from napari_fusionmamba.napari.sample_data import load_sample_pair

    for shipped, made in zip(load_sample_pair(), script.make_pair()):
        np.testing.assert_array_equal(shipped, made)
