"""The FusionMamba network: selective scan, DVSS blocks, fusion modules and the U-Net."""

from .network import MODEL_CONFIGS, FusionMamba, ModelConfig, build_model, count_parameters

__all__ = ["MODEL_CONFIGS", "FusionMamba", "ModelConfig", "build_model", "count_parameters"]
