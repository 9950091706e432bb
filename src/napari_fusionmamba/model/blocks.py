"""Building blocks of the U-Net: DVSS block, LDC, ECA, SE gate, patch embed / merge / expand.

All maps are channels-last (B, H, W, C), as the LayerNorms and linear layers want them;
convolutions permute to channels-first and back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ssm2d import ESSM


def to_channels_first(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


class LDC(nn.Module):
    """Learnable descriptive convolution: a 3x3 convolution (no bias) whose centre tap is
    modulated by the sum of its own taps, W_c * (1 - theta * M * S), so it can learn
    difference (edge) operators as well as plain smoothing."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        self.mask = nn.Parameter(torch.ones(out_channels, in_channels))
        self.theta = nn.Parameter(torch.tensor(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tap_sum = self.weight.sum(dim=(2, 3))
        centre = self.weight[:, :, 1, 1] * (1 - self.theta * self.mask * tap_sum)
        weight = self.weight.clone()
        weight[:, :, 1, 1] = centre
        return to_channels_last(F.conv2d(to_channels_first(x), weight, padding=1))


class ECA(nn.Module):
    """Efficient channel attention: a 3-tap 1D convolution across the pooled channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(1, 2))[:, None, :]  # (B, 1, C)
        gate = torch.sigmoid(self.conv(pooled))[:, 0]
        return x * gate[:, None, None, :]


class SEGate(nn.Module):
    """Squeeze-and-excitation on the normalised map; the gate scales the raw input."""

    def __init__(self, dim: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(dim // reduction, 1)
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(self.norm(x).mean(dim=(1, 2)))[:, None, None, :]


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch of a sample while training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape[0], 1, 1, 1, device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1 - self.p)


class DVSSBlock(nn.Module):
    """Dynamic vision state-space block: ESSM, ECA and LDC branches merged by one SE gate,
    then an MLP, each with a residual (the authors' code, see MODEL.md)."""

    def __init__(self, dim: int, d_state: int = 16, expand: int = 2, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.essm = ESSM(dim, d_state, expand)
        self.eca = ECA()
        self.ldc = LDC(dim, dim)
        self.se = SEGate(dim)
        self.drop_path = DropPath(drop_path)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.essm(self.norm(x))
        c = self.ldc(s + self.eca(s))
        x = x + self.drop_path(self.se(s) + self.se(c))
        return x + self.drop_path(self.mlp(self.mlp_norm(x)))


class PatchEmbed(nn.Module):
    """(B, 1, H, W) -> (B, H/p, W/p, C) by a p x p stride-p convolution and LayerNorm."""

    def __init__(self, dim: int, patch_size: int = 4) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, dim, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(to_channels_last(self.proj(x)))


class PatchMerge(nn.Module):
    """Halve H and W, double C: concatenate the four 2x2 phases, LayerNorm, linear 4C -> 2C."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class PatchExpand(nn.Module):
    """Upsample by ``scale`` with a linear layer and pixel shuffle, then LayerNorm.

    ``scale=2`` (decoder): C -> C/2 channels. ``scale=4`` (head): C -> C channels.
    """

    def __init__(self, dim: int, scale: int = 2) -> None:
        super().__init__()
        out_dim = dim // 2 if scale == 2 else dim
        self.scale = scale
        self.expand = nn.Linear(dim, out_dim * scale * scale, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pixel_shuffle(to_channels_first(self.expand(x)), self.scale)
        return self.norm(to_channels_last(x))
