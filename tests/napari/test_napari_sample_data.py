"""The shipped samples: opened through napari's sample menu, small, and regenerable from their scripts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import load_script

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

    script = load_script(ROOT / "scripts" / "make_sample_pair.py")
    from napari_fusionmamba.napari.sample_data import load_sample_pair

    for shipped, made in zip(load_sample_pair(), script.make_pair()):
        np.testing.assert_array_equal(shipped, made)


def test_neuron_sample_opens_as_coloured_channels_over_a_phase_stack(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-fusionmamba", "neurons")
    assert [layer.name for layer in viewer.layers] == ["phase", "MAP2", "DAPI"]
    phase, map2, dapi = viewer.layers
    assert phase.data.shape == (3, 512, 512) and map2.data.shape == dapi.data.shape == (512, 512)
    assert {layer.data.dtype for layer in viewer.layers} == {np.dtype(np.uint16)}
    assert (phase.colormap.name, map2.colormap.name, dapi.colormap.name) == ("gray", "magenta", "blue")
    assert viewer.dims.nsteps[0] == 3  # the focal planes are a Z slider
    for layer in viewer.layers:  # the contrast shows the cells: a few percent saturate, not half the image
        low, high = layer.contrast_limits
        data = np.asarray(layer.data)
        assert data.min() <= low < high <= data.max()
        assert 0.001 < (data >= high).mean() < 0.05
    # neurons: MAP2 dendrites and DAPI nuclei are sparse bright structures, not flat images
    assert (map2.data > map2.contrast_limits[0] + 0.5 * np.ptp(map2.contrast_limits)).mean() > 0.02


def test_neuron_files_are_small_licensed_and_made_by_the_script():
    data = ROOT / "src" / "napari_fusionmamba" / "data"
    assert sum(path.stat().st_size for path in data.glob("neurons_*.tif")) < 3 * 1024**2
    notice = (data / "NOTICE.neurons").read_text()
    assert "in-silico-labeling" in notice and "rows 0-512, columns 448-960" in notice
    assert "Apache License" in (data / "LICENSE.neurons").read_text()

    source = ROOT.parent / "shared" / "data" / "isl_neurons"  # the full field, on development machines
    if not source.is_dir():
        pytest.skip("the full ISL field is not on this machine")
    script = load_script(ROOT / "scripts" / "make_neuron_sample.py")
    from napari_fusionmamba.napari.sample_data import NEURON_FILES, load_neurons

    made = script.make_subset(source)
    for name, shipped in load_neurons().items():
        np.testing.assert_array_equal(shipped, made[NEURON_FILES[name]])
