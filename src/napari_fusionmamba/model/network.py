"""The FusionMamba U-Net and its named configs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network; stored as JSON in every checkpoint."""

    name: str = "tiny"
    embed_dim: int = 16  # C0: widths are C0, 2C0, 4C0, 8C0
    encoder_depths: tuple[int, ...] = (1, 1, 1, 1)
    decoder_depths: tuple[int, ...] = (1, 1, 1, 1)
    d_state: int = 16  # N of the selective scan
    expand: int = 2  # E = expand * C inside the scan modules
    patch_size: int = 4
    drop_path: float = 0.1
    # Residual added to the head's output: "sum2" is the authors' 2a + 2b, "mean" (a + b) / 2,
    # "max" max(a, b), "none" nothing.
    residual: str = "mean"
    # The authors' code never uses the shallowest fused skip (C0 at stride 4); True adds it back
    # before the final 4x expansion, as a U-Net would.
    shallow_skip: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        values = dict(values)
        for key in ("encoder_depths", "decoder_depths"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    @property
    def stride(self) -> int:
        """Input sizes are padded to a multiple of this (patch size times three 2x merges)."""
        return self.patch_size * 2 ** (len(self.encoder_depths) - 1)


MODEL_CONFIGS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(name="tiny"),
    "small": ModelConfig(name="small", embed_dim=32, encoder_depths=(1, 1, 2, 1), decoder_depths=(1, 2, 1, 1)),
    "paper": ModelConfig(
        name="paper", embed_dim=96, encoder_depths=(2, 2, 9, 2), decoder_depths=(2, 9, 2, 2)
    ),
    "paper-lite": ModelConfig(
        name="paper-lite", embed_dim=96, encoder_depths=(2, 2, 1, 2), decoder_depths=(2, 1, 2, 2)
    ),
}
