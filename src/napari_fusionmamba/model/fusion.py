"""Fusion of the two modalities' skips: DFEM (texture + difference perception) per modality and
CMFM (a selective scan over the mixed features), together the DFFM block of each U-Net level."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ECA, LDC, to_channels_first
from .ssm2d import SelectiveScan2D


class DFEM(nn.Module):
    """Dynamic feature enhancement of both modalities.

    Each modality keeps its texture (its own LDC) and receives the summed map gated by where it
    differs from the other modality (sigmoid of the mean difference, per channel).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ldc_a = LDC(dim, dim)
        self.ldc_b = LDC(dim, dim)

    def forward(self, fa: torch.Tensor, fb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = fa + fb
        gate_ab = torch.sigmoid((fa - fb).mean(dim=(1, 2), keepdim=True))
        gate_ba = torch.sigmoid((fb - fa).mean(dim=(1, 2), keepdim=True))
        ea = self.ldc_a(fa) + gate_ab * total + fa
        eb = self.ldc_b(fb) + gate_ba * total + fb
        return ea, eb


class CMFM(nn.Module):
    """Cross-modality fusion Mamba: one selective scan over x_a * x_b + x_a + x_b, gated by both
    modalities (MODEL.md: the second gate uses z_b, not the authors' z_a twice)."""

    def __init__(self, dim: int, d_state: int = 16, expand: int = 2) -> None:
        super().__init__()
        inner = expand * dim
        self.norm_a = nn.LayerNorm(dim)
        self.norm_b = nn.LayerNorm(dim)
        self.in_proj_a = nn.Linear(dim, 2 * inner, bias=False)
        self.in_proj_b = nn.Linear(dim, 2 * inner, bias=False)
        self.conv = nn.Conv2d(inner, inner, 3, padding=1, groups=inner)
        self.scan = SelectiveScan2D(inner, d_state, dt_rank=math.ceil(dim / 16))
        self.out_proj = nn.Linear(inner, dim, bias=False)

    def forward(self, ea: torch.Tensor, eb: torch.Tensor) -> torch.Tensor:
        xa, za = self.in_proj_a(self.norm_a(ea)).chunk(2, dim=-1)
        xb, zb = self.in_proj_b(self.norm_b(eb)).chunk(2, dim=-1)
        xa = F.silu(self.conv(to_channels_first(xa)))
        xb = F.silu(self.conv(to_channels_first(xb)))
        y = self.scan(xa * xb + xa + xb)
        return self.out_proj(y * F.silu(za) + y * F.silu(zb))


class DFFM(nn.Module):
    """One level's fusion: DFEM on both skips, CMFM on the enhanced maps, plus the sum of the
    skips and a channel-attended copy of the fused features."""

    def __init__(self, dim: int, d_state: int = 16, expand: int = 2) -> None:
        super().__init__()
        self.dfem = DFEM(dim)
        self.cmfm = CMFM(dim, d_state, expand)
        self.eca = ECA()

    def forward(self, fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
        h = self.cmfm(*self.dfem(fa, fb))
        return fa + fb + h + self.eca(h)
