"""Tints: a gray image coloured the way a viewer's colormap shows it."""

from __future__ import annotations

import numpy as np
import pytest

from napari_fusionmamba.engine import fuse
from napari_fusionmamba.errors import InputError
from napari_fusionmamba.io.colour import colormap_tint, named_tint


def test_a_tint_maps_gray_through_its_colours_at_their_positions():
    fire = colormap_tint(np.array([[0, 0, 0, 1], [1, 0, 0, 1], [1, 1, 0, 1]]), np.array([0, 0.5, 1]), (10, 20))
    np.testing.assert_allclose(
        fire(np.array([0.0, 0.25, 0.5, 0.75, 1.0])), [[0, 0, 0], [0.5, 0, 0], [1, 0, 0], [1, 0.5, 0], [1, 1, 0]]
    )
    stepped = colormap_tint(np.array([[0, 0, 1], [0, 1, 0]]), np.array([0, 0.5, 1]), (0, 1))  # one control more
    assert stepped.positions == (0.0, 1.0)
    with pytest.raises(InputError, match="high limit"):
        named_tint("green", (5, 5))
    with pytest.raises(InputError, match="unknown colormap 'teal'"):
        named_tint("teal")


def test_a_colour_source_a_cannot_take_a_tint(pair):
    a, b = pair
    rgb = np.stack([a, a, a], axis=-1)
    with pytest.raises(InputError, match="tints a gray source A only"):
        fuse(rgb, b, method="average", tint=named_tint("green"))
