"""The sample data shipped in ``napari_fusionmamba/data``: a real neuron field (fluorescence +
phase contrast) and a small synthetic pair, read for napari's sample menu, the examples and the
test tensors of exported model packages.

The neurons are a 512 x 512 crop of a registered field from google/in-silico-labeling
(Apache-2.0; ``data/NOTICE.neurons`` says what was changed, ``scripts/make_neuron_sample.py``
regenerates it). The synthetic GFP + phase pair (``scripts/make_sample_pair.py``) stays for
quick tests: it is small and fuses in seconds.
"""

from __future__ import annotations

from importlib.resources import files

import numpy as np

SAMPLE_FILES = {"GFP": "sample_gfp.png", "phase": "sample_phase.png"}
NEURON_FILES = {"MAP2": "neurons_map2.tif", "DAPI": "neurons_dapi.tif", "phase": "neurons_phase.tif"}


def load_sample_pair() -> tuple[np.ndarray, np.ndarray]:
    """The synthetic (fluorescence, phase contrast) pair as uint8 arrays, for scripts and tests."""
    import imageio.v3 as iio

    data = files("napari_fusionmamba") / "data"
    gfp, phase = (iio.imread(data.joinpath(name).read_bytes(), extension=".png") for name in SAMPLE_FILES.values())
    return gfp, phase


def load_neurons() -> dict[str, np.ndarray]:
    """The neuron sample as uint16 arrays: "MAP2" and "DAPI" (Y, X), "phase" (3 focal planes, Y, X)."""
    import tifffile

    data = files("napari_fusionmamba") / "data"
    images = {}
    for name, file in NEURON_FILES.items():
        with data.joinpath(file).open("rb") as stream:
            images[name] = tifffile.imread(stream)
    return images
