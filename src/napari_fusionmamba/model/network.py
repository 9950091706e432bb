"""The FusionMamba U-Net and its named configs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._json_records import from_json
from ..errors import InputError
from .blocks import DVSSBlock, PatchEmbed, PatchExpand, PatchMerge, to_channels_first
from .fusion import DFFM
from .residuals import RESIDUALS
from .ssm2d import inference_path


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
    # Residual added to the head's output, a name of ``residuals.RESIDUALS``: "max" max(a, b) (the
    # paper loss's intensity target), "keep-both" the keep-both objective's target, "sum2" the
    # authors' 2a + 2b, "mean" (a + b) / 2, "none" nothing. The head starts at zero, so an
    # untrained network returns exactly this residual.
    residual: str = "max"
    # The authors' code never uses the shallowest fused skip (C0 at stride 4); True adds it back
    # before the final 4x expansion, as a U-Net would.
    shallow_skip: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        return from_json(cls, values, "model config keys")

    @property
    def stride(self) -> int:
        """Input sizes are padded to a multiple of this (patch size times three 2x merges)."""
        return int(self.patch_size) << (len(self.encoder_depths) - 1)


MODEL_CONFIGS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(name="tiny"),
    "small": ModelConfig(name="small", embed_dim=32, encoder_depths=(1, 1, 2, 1), decoder_depths=(1, 2, 1, 1)),
    "paper": ModelConfig(name="paper", embed_dim=96, encoder_depths=(2, 2, 9, 2), decoder_depths=(2, 9, 2, 2)),
    "paper-lite": ModelConfig(
        name="paper-lite", embed_dim=96, encoder_depths=(2, 2, 1, 2), decoder_depths=(2, 1, 2, 2)
    ),
}


#: Inclusive bounds of the integer config values: wide enough for any sensible network, narrow
#: enough that a config read from a file cannot ask for an absurd one.
INT_BOUNDS = {"embed_dim": (1, 1024), "d_state": (1, 256), "expand": (1, 16), "patch_size": (1, 32)}
MAX_DEPTH = 64


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_config(config: ModelConfig) -> None:
    """Refuse config values no network can have, in one ``InputError`` listing them all (a
    config read from a checkpoint is checked before anything is built)."""
    problems = [
        f"{key} must be an integer in [{lo}, {hi}] (got {getattr(config, key)!r})"
        for key, (lo, hi) in INT_BOUNDS.items()
        if not (_is_int(getattr(config, key)) and lo <= getattr(config, key) <= hi)
    ]
    for key in ("encoder_depths", "decoder_depths"):
        depths = getattr(config, key)
        if not (
            isinstance(depths, tuple) and len(depths) == 4 and all(_is_int(d) and 0 <= d <= MAX_DEPTH for d in depths)
        ):
            problems.append(f"{key} must be four integers in [0, {MAX_DEPTH}] (got {depths!r})")
    if not (isinstance(config.drop_path, (int, float)) and 0 <= config.drop_path < 1):
        problems.append(f"drop_path must be in [0, 1) (got {config.drop_path!r})")
    if config.residual not in RESIDUALS:
        problems.append(f"unknown residual {config.residual!r}: choose one of {', '.join(RESIDUALS)}")
    if problems:
        raise InputError("; ".join(problems))


def _drop_rates(depths: tuple[int, ...], top: float) -> list[list[float]]:
    """Stochastic-depth rate of each block, rising linearly from 0 to ``top`` over all stages."""
    rates = torch.linspace(0, top, max(sum(depths), 1), device="cpu").tolist()
    out, start = [], 0
    for depth in depths:
        out.append(rates[start : start + depth])
        start += depth
    return out


def _stage(dim: int, depth: int, rates: list[float], config: ModelConfig) -> nn.Sequential:
    return nn.Sequential(*(DVSSBlock(dim, config.d_state, config.expand, rate) for rate in rates[:depth]))


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad H and W up to a multiple by reflection (replication where the image is too small
    to reflect), so no resizing ever touches the pixels."""
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if not (pad_h or pad_w):
        return x
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


class FusionMamba(nn.Module):
    """FusionMamba U-Net: a shared encoder for both images, a DFFM at every level, a decoder.

    ``model(a, b)`` takes two (B, 1, H, W) float images in [0, 1] of any H, W (padded by
    reflection to the stride inside, cropped back) and returns the fused (B, 1, H, W) image,
    clamped to [0, 1] as the network is trained.
    """

    def __init__(self, config: ModelConfig = MODEL_CONFIGS["tiny"]) -> None:
        super().__init__()
        check_config(config)
        self.config = config
        c0 = config.embed_dim
        widths = [c0 * 2**i for i in range(4)]

        self.embed_a = PatchEmbed(c0, config.patch_size)
        self.embed_b = PatchEmbed(c0, config.patch_size)
        enc_rates = _drop_rates(config.encoder_depths, config.drop_path)
        self.encoder = nn.ModuleList(
            _stage(w, d, r, config) for w, d, r in zip(widths, config.encoder_depths, enc_rates)
        )
        self.merges = nn.ModuleList(PatchMerge(w) for w in widths[:3])
        self.fusions = nn.ModuleList(DFFM(w, config.d_state, config.expand) for w in widths)

        dec_widths = widths[::-1]
        dec_rates = _drop_rates(config.decoder_depths, config.drop_path)[::-1]
        dec_rates = [rates[::-1] for rates in dec_rates]
        self.expands = nn.ModuleList(PatchExpand(w) for w in dec_widths[:3])
        self.decoder = nn.ModuleList(
            _stage(w, d, r, config) for w, d, r in zip(dec_widths, config.decoder_depths, dec_rates)
        )
        self.head_expand = PatchExpand(c0, scale=config.patch_size)
        self.head = nn.Conv2d(c0, 1, 1)
        nn.init.zeros_(self.head.weight)  # training starts from the residual, not from noise
        nn.init.zeros_(self.head.bias)  # type: ignore[arg-type]  # a Conv2d made with bias=True has one

    @property
    def stride(self) -> int:
        return self.config.stride

    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Skips at strides 4, 8, 16, 32 and the deepest features of one batch of images."""
        skips = []
        for i, stage in enumerate(self.encoder):
            skips.append(x)
            x = stage(x)
            if i < len(self.merges):
                x = self.merges[i](x)
        return skips, x

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape != b.shape or a.ndim != 4 or a.shape[1] != 1:
            raise ValueError(
                f"expected two (B, 1, H, W) images of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
            )
        height, width = a.shape[-2:]
        pa, pb = pad_to_multiple(a, self.stride), pad_to_multiple(b, self.stride)
        batch = a.shape[0]

        # One encoder pass over both images (the encoder's weights are shared).
        skips, deep = self.encode(torch.cat([self.embed_a(pa), self.embed_b(pb)], dim=0))
        fused = [fuse(s[:batch], s[batch:]) for fuse, s in zip(self.fusions, skips)]

        x = self.decoder[0](deep[:batch] + deep[batch:])
        for k in range(1, 4):
            x = self.decoder[k](self.expands[k - 1](x + fused[4 - k]))
        if self.config.shallow_skip:
            x = x + fused[0]
        out = self._infer_head(x) if inference_path(x) else self.head(to_channels_first(self.head_expand(x)))
        out = out[:, :, :height, :width] + RESIDUALS[self.config.residual](a, b)
        return out.clamp(0, 1)

    def _infer_head(self, x: torch.Tensor) -> torch.Tensor:
        """``head(head_expand(x))`` without gradients, at 1/patch resolution: the LayerNorm and
        the 1x1 convolution of the full-resolution map are linear but for one division, so
        out = (x . u) / sqrt(var + eps) + k per output pixel, with var the variance over channels
        of the expanded map (from weights centred per pixel, so no cancellation), u the centred
        weights through the norm's scale and the head, and k the head through the norm's shift.
        The same function without the full-resolution (B, H, W, C0) map."""
        expand, norm, head = self.head_expand, self.head_expand.norm, self.head
        scale = expand.scale
        channels, pixels = norm.normalized_shape[0], scale * scale
        weight = expand.expand.weight.view(channels, pixels, -1)  # (C, r*r, C0): out feature c*r*r + p
        centred = weight - weight.mean(dim=0, keepdim=True)
        gain = head.weight.view(channels) * norm.weight
        u = torch.einsum("c,cpi->ip", gain, centred)  # (C0, r*r)
        k = head.weight.view(channels) @ norm.bias + head.bias  # type: ignore[operator]  # made with a bias
        y = torch.matmul(x, centred.reshape(channels * pixels, -1).t())  # (B, h, w, C * r*r), centred
        var = y.square_().view(*y.shape[:3], channels, pixels).mean(dim=3)  # (B, h, w, r*r); in place: 3x faster
        out = torch.matmul(x, u) * torch.rsqrt(var + norm.eps) + k
        return F.pixel_shuffle(out.permute(0, 3, 1, 2), scale)


def build_model(config: str | ModelConfig | dict[str, Any] = "tiny") -> FusionMamba:
    """A freshly initialised network from a config name (see ``MODEL_CONFIGS``), a config, or a
    config's dict (as checkpoints and exported model packages store it)."""
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    if isinstance(config, str):
        if config not in MODEL_CONFIGS:
            raise InputError(f"unknown model config {config!r}: choose one of {', '.join(MODEL_CONFIGS)}")
        config = MODEL_CONFIGS[config]
    return FusionMamba(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
