"""Sample data: a real neuron field (fluorescence + phase contrast) and a small synthetic pair.

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
#: Shown contrast: these percentiles of each image, so dim dendrites show and bright somata do not saturate.
CONTRAST_PERCENTILES = (0.5, 99.8)


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


def gfp_phase_pair() -> list[tuple]:
    """The synthetic pair as two layers: fluorescence (A) in green, phase contrast (B) in gray."""
    gfp, phase = load_sample_pair()
    return [
        (gfp, {"name": "GFP", "colormap": "green", "blending": "additive"}, "image"),
        (phase, {"name": "phase", "colormap": "gray", "blending": "additive"}, "image"),
    ]


def neurons() -> list[tuple]:
    """The neurons as layers: the phase planes as a gray Z stack under MAP2 (magenta) and DAPI (blue)."""
    images = load_neurons()
    colormaps = {"phase": "gray", "MAP2": "magenta", "DAPI": "blue"}
    layers = []
    for name in ("phase", "MAP2", "DAPI"):
        image = images[name]
        limits = tuple(float(v) for v in np.percentile(image, CONTRAST_PERCENTILES))
        options = {"name": name, "colormap": colormaps[name], "contrast_limits": limits, "blending": "additive"}
        layers.append((image, options, "image"))
    return layers
