"""Tints: a gray image coloured the way a viewer's colormap shows it."""

from __future__ import annotations

import numpy as np
import pytest

from napari_fusionmamba.engine import fuse
from napari_fusionmamba.errors import InputError
from napari_fusionmamba.io.colour import colormap_tint, mix_tints, named_tint


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


def test_two_tints_mix_by_how_bright_each_source_is_shown():
    magenta, blue = named_tint("magenta"), named_tint("blue")
    fused = np.array([0.8, 0.8, 0.8, 0.4])
    shown_a = np.array([1.0, 0.0, 0.5, 0.0])
    shown_b = np.array([0.0, 1.0, 0.5, 0.0])
    np.testing.assert_allclose(
        mix_tints(fused, shown_a, shown_b, magenta, blue),
        [[0.8, 0, 0.8], [0, 0, 0.8], [0.4, 0, 0.8], [0.2, 0, 0.4]],  # A only, B only, half each, both black
    )


def test_a_colour_source_cannot_take_a_tint(pair):
    a, b = pair
    rgb = np.stack([a, a, a], axis=-1)
    with pytest.raises(InputError, match="A is a colour image: a colormap tints a gray source only"):
        fuse(rgb, b, method="average", tint=named_tint("green"))
    with pytest.raises(InputError, match="B is a colour image"):
        fuse(a, rgb, method="average", tint_b=named_tint("green"))
