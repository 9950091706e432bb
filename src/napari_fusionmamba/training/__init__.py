"""Fine-tuning (and training from scratch) on registered pairs with optional region masks.

Owns the pair data and crop sampling (``data``), the objectives (``objectives``: the paper's
loss and a registry for others), the settings and schedule (``settings``), the loop (``loop``)
and run folders with their checkpoints, logs and recipes (``runs``). Imports torch, ``model``,
``registry``, ``engine.sources`` (the normalisation fusion uses), ``io`` and ``errors``; never
``napari`` or ``cli``.
"""

from .data import CropSampler, Pair, prepare_pairs
from .loop import finetune
from .objectives import OBJECTIVES, FusionLoss
from .runs import default_run_dir, load_recipe, pairs_from_folder
from .settings import StepInfo, TrainResult, TrainSettings, check_settings, learning_rate

__all__ = [
    "OBJECTIVES",
    "CropSampler",
    "FusionLoss",
    "Pair",
    "StepInfo",
    "TrainResult",
    "TrainSettings",
    "check_settings",
    "default_run_dir",
    "finetune",
    "learning_rate",
    "load_recipe",
    "pairs_from_folder",
    "prepare_pairs",
]
