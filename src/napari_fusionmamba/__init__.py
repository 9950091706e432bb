"""Multimodal image fusion with the FusionMamba network, for napari, Python and the command line.

The public API, one entry per job: ``fuse`` (arrays in memory), ``fuse_files`` (files too large
for memory, chunk by chunk) with ``FuseOptions``, ``finetune``, ``evaluate`` and ``load_model``.
They load on first use: napari reads the package's manifest at start-up, which must not import
torch (see docs/architecture.md for the packages and who imports whom).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_PUBLIC = {
    "fuse": "napari_fusionmamba.engine",
    "fuse_files": "napari_fusionmamba.engine",
    "FuseOptions": "napari_fusionmamba.engine",
    "FuseReport": "napari_fusionmamba.engine",
    "finetune": "napari_fusionmamba.training",
    "evaluate": "napari_fusionmamba.quality.metrics",
    "load_model": "napari_fusionmamba.registry",
}

__all__ = ["__version__", *_PUBLIC]

if TYPE_CHECKING:
    from .engine import FuseOptions as FuseOptions
    from .engine import FuseReport as FuseReport
    from .engine import fuse as fuse
    from .engine import fuse_files as fuse_files
    from .quality.metrics import evaluate as evaluate
    from .registry import load_model as load_model
    from .training import finetune as finetune


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'napari_fusionmamba' has no attribute {name!r}")
