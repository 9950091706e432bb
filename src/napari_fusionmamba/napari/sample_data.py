"""Sample data as napari layers: a real neuron field (fluorescence + phase contrast) and a small
synthetic pair (the files and their loaders: ``io.samples``)."""

from __future__ import annotations

import numpy as np

from ..io.samples import NEURON_FILES, SAMPLE_FILES, load_neurons, load_sample_pair

__all__ = ["NEURON_FILES", "SAMPLE_FILES", "load_neurons", "load_sample_pair"]

#: Shown contrast: these percentiles of each image, so dim dendrites show and bright somata do not saturate.
CONTRAST_PERCENTILES = (0.5, 99.8)


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
