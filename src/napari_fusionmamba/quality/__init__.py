"""How good is a fusion: the no-reference metrics (``metrics``) and the classical fusion methods
they are compared with (``baselines``: average, maximum, Laplacian pyramid, wavelets, guided
filtering).

Imports numpy, scipy, PyWavelets, numba (FMI only), ``io.colour`` and ``errors``; never torch, the engine, napari
or Qt, so scoring works without the network.
"""
