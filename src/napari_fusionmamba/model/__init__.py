"""The FusionMamba network: selective scan, DVSS blocks, fusion modules and the U-Net."""

from .network import MODEL_CONFIGS, ModelConfig

__all__ = ["MODEL_CONFIGS", "ModelConfig"]
