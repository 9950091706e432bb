"""The efficient 2D selective scan (ES2D) and the ESSM module built on it.

ES2D splits a map into its four 2x2 phase sub-grids and reads each as one sequence (two row by
row, two column by column), so every pixel is scanned exactly once: a scan costs H*W steps, not
4*H*W as VMamba's cross scan does, while each direction still sees the whole image.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from .scan import resolve_backend, selective_scan

# (row phase, column phase, read column by column?) for the K = 4 directions.
PHASES = ((0, 0, False), (1, 0, True), (0, 1, False), (1, 1, True))


def phase_split(x: torch.Tensor) -> torch.Tensor:
    """(B, E, H, W) with even H, W -> (B, 4, E, H*W/4) sequences, one per phase."""
    sequences = []
    for row, col, by_column in PHASES:
        phase = x[:, :, row::2, col::2]
        if by_column:
            phase = phase.transpose(2, 3)
        sequences.append(phase.flatten(2))
    return torch.stack(sequences, dim=1)


def phase_merge(y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`phase_split`: (B, 4, E, L) -> (B, E, H, W)."""
    batch, _, channels, _ = y.shape
    h2, w2 = height // 2, width // 2
    out = y.new_empty(batch, channels, height, width)
    for k, (row, col, by_column) in enumerate(PHASES):
        if by_column:
            out[:, :, row::2, col::2] = y[:, k].view(batch, channels, w2, h2).transpose(2, 3)
        else:
            out[:, :, row::2, col::2] = y[:, k].view(batch, channels, h2, w2)
    return out


def phase_split_last(x: torch.Tensor) -> torch.Tensor:
    """:func:`phase_split` for a channels-last map: (B, H, W, E) -> (B, 4, H*W/4, E)."""
    batch, height, width, channels = x.shape
    h2, w2 = height // 2, width // 2
    out = x.new_empty(batch, len(PHASES), h2 * w2, channels)
    for k, (row, col, by_column) in enumerate(PHASES):
        phase = x[:, row::2, col::2]
        if by_column:
            out[:, k].view(batch, w2, h2, channels).copy_(phase.transpose(1, 2))
        else:
            out[:, k].view(batch, h2, w2, channels).copy_(phase)
    return out


def phase_merge_last(y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`phase_split_last`: (B, 4, L, E) -> (B, H, W, E)."""
    batch, _, _, channels = y.shape
    h2, w2 = height // 2, width // 2
    out = y.new_empty(batch, height, width, channels)
    for k, (row, col, by_column) in enumerate(PHASES):
        if by_column:
            out[:, row::2, col::2] = y[:, k].view(batch, w2, h2, channels).transpose(1, 2)
        else:
            out[:, row::2, col::2] = y[:, k].view(batch, h2, w2, channels)
    return out


#: "0" turns the network's inference paths off (to time them against the general ones).
FAST_ENV = "FUSIONMAMBA_FAST_INFERENCE"


def inference_path(x: torch.Tensor) -> bool:
    """Whether the network may take its inference paths (``SelectiveScan2D._infer``,
    ``FusionMamba._infer_head``) for ``x``: no gradient, the numba scan backend, not tracing (an
    exported graph keeps the general path), not switched off by ``FUSIONMAMBA_FAST_INFERENCE=0``."""
    if torch.is_grad_enabled() or x.device.type != "cpu" or torch.jit.is_tracing():  # type: ignore[no-untyped-call]
        return False
    if os.environ.get(FAST_ENV, "1").strip() == "0":
        return False
    return resolve_backend("auto", x.device) == "numba"


class SelectiveScan2D(nn.Module):
    """ES2D with K = 4 directions, each with its own projections and state-space parameters.

    Input (B, E, H, W) channels-first (as the depthwise convolution leaves it); output
    (B, H, W, E) channels-last, layer-normalised over E.
    """

    directions = len(PHASES)

    def __init__(
        self,
        channels: int,
        d_state: int,
        dt_rank: int,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_floor: float = 1e-4,
    ) -> None:
        super().__init__()
        k, e, n, r = self.directions, channels, d_state, dt_rank
        self.d_state, self.dt_rank = n, r
        self.x_proj = nn.Parameter(torch.empty(k, r + 2 * n, e))
        self.dt_proj = nn.Parameter(torch.empty(k, e, r))
        self.dt_bias = nn.Parameter(torch.empty(k * e))
        self.A_log = nn.Parameter(torch.empty(k * e, n))
        self.D = nn.Parameter(torch.ones(k * e))
        self.out_norm = nn.LayerNorm(e)

        nn.init.uniform_(self.x_proj, -(e**-0.5), e**-0.5)
        nn.init.uniform_(self.dt_proj, -(r**-0.5), r**-0.5)
        if self.A_log.is_meta:  # only sized (a checkpoint's config): arange and exp on the meta
            return  # device load torch's compiler, seconds per process
        with torch.no_grad():
            self.A_log.copy_(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).expand(k * e, n))  # rates 1..N
            # softplus(dt_bias) log-uniform in [dt_min, dt_max]: the inverse of softplus.
            dt = torch.exp(torch.rand(k * e) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt = dt.clamp(min=dt_floor)
            self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if inference_path(x):
            return self._infer(x)
        batch, e, height, width = x.shape
        padded = F.pad(x, (0, width % 2, 0, height % 2))
        h, w = padded.shape[-2:]
        xs = phase_split(padded)  # (B, K, E, L)
        length = xs.shape[-1]
        x_dbl = torch.einsum("bkel,kce->bkcl", xs, self.x_proj)
        dts, Bs, Cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.einsum("bkrl,ker->bkel", dts, self.dt_proj)
        y = selective_scan(
            xs.reshape(batch, -1, length),
            dts.reshape(batch, -1, length),
            -torch.exp(self.A_log.float()),
            Bs.contiguous(),
            Cs.contiguous(),
            D=self.D.float(),
            delta_bias=self.dt_bias.float(),
            delta_softplus=True,
        )
        y = phase_merge(y.view(batch, self.directions, e, length), h, w)[:, :, :height, :width]
        return self.out_norm(y.permute(0, 2, 3, 1))

    def _infer(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` without gradients, channels-last throughout (the convolution leaves its
        output channels-last in memory): no transposes around the scan, and the numba kernel
        that advances 16 channels at once (``numba_scan_lanes``). The same function."""
        from ._scan_numba import numba_scan_lanes

        _, e, height, width = x.shape
        padded = x.permute(0, 2, 3, 1)
        if height % 2 or width % 2:  # (a pad of nothing would still copy the map)
            padded = F.pad(padded, (0, 0, 0, width % 2, 0, height % 2))
        h, w = padded.shape[1:3]
        xs = phase_split_last(padded)  # (B, K, L, E)
        x_dbl = torch.matmul(xs, self.x_proj.transpose(1, 2))  # (B, K, L, R + 2N)
        dts, Bs, Cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=3)
        k = self.directions
        dts = torch.matmul(dts, self.dt_proj.transpose(1, 2)).add_(self.dt_bias.view(k, 1, e))
        y = numba_scan_lanes(
            xs,
            F.softplus(dts),
            -torch.exp(self.A_log.float()).view(k, e, -1),
            Bs,
            Cs,
            self.D.float().view(k, e),
        )
        return self.out_norm(phase_merge_last(y, h, w)[:, :height, :width])


class ESSM(nn.Module):
    """Efficient 2D selective-scan module on a channels-last map (B, H, W, C) -> same shape."""

    def __init__(self, dim: int, d_state: int = 16, expand: int = 2) -> None:
        super().__init__()
        inner = expand * dim
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        self.conv = nn.Conv2d(inner, inner, 3, padding=1, groups=inner)
        self.scan = SelectiveScan2D(inner, d_state, dt_rank=math.ceil(dim / 16))
        self.out_proj = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = F.silu(self.conv(x.permute(0, 3, 1, 2)))
        return self.out_proj(self.scan(x) * F.silu(z))
