"""Multimodal image fusion with the FusionMamba network, for napari, Python and the command line.

The package imports nothing heavy at start-up (napari reads its manifest on launch); torch and
the network load on first use.
"""

__version__ = "0.1.0"
