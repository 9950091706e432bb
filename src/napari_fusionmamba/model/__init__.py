"""The FusionMamba network and nothing else: the selective-scan backends (``scan``: numba on the
CPU, plain torch, mamba-ssm on CUDA, a sequential reference), the 2-D scan, DVSS blocks, fusion
modules, the U-Net with its named configs (``network``), and the torch device choice
(``devices``).

Imports torch (and numba, mamba-ssm when present), ``errors`` and ``_json_records``; never the
engine, training, io, napari or the CLI.
"""

from .network import MODEL_CONFIGS, FusionMamba, ModelConfig, build_model, count_parameters

__all__ = ["MODEL_CONFIGS", "FusionMamba", "ModelConfig", "build_model", "count_parameters"]
