"""Sample data: a synthetic GFP-like + phase-contrast-like pair made by the project itself.

The real GFP + phase-contrast pairs may not be redistributed; ``scripts/make_sample_pair.py``
regenerates these two PNG files deterministically.
"""

from __future__ import annotations

from importlib.resources import files

import numpy as np

SAMPLE_FILES = {"GFP": "sample_gfp.png", "phase": "sample_phase.png"}


def load_sample_pair() -> tuple[np.ndarray, np.ndarray]:
    """The (fluorescence, phase contrast) pair as uint8 arrays, for scripts and tests."""
    import imageio.v3 as iio

    data = files("napari_fusionmamba") / "data"
    gfp, phase = (iio.imread(data.joinpath(name).read_bytes(), extension=".png") for name in SAMPLE_FILES.values())
    return gfp, phase


def gfp_phase_pair() -> list[tuple]:
    """The pair as two layers: fluorescence (A) in green, phase contrast (B) in gray."""
    gfp, phase = load_sample_pair()
    return [
        (gfp, {"name": "GFP", "colormap": "green", "blending": "additive"}, "image"),
        (phase, {"name": "phase", "colormap": "gray", "blending": "additive"}, "image"),
    ]
