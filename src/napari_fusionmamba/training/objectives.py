"""Training objectives, unsupervised (the two sources are the only targets), and ``OBJECTIVES``,
the registry a run's ``objective`` setting names.

- ``paper`` (``FusionLoss``), the FusionMamba paper's: a1 * intensity + a2 * texture + a3 * structure
  with intensity the MSE to max(a, b), texture the L1 between Sobel(fused) and
  max(Sobel(a), Sobel(b)), Sobel(x) = |Gx * x| + |Gy * x|, and structure
  b * (1 - SSIM(fused, a)) + g * (1 - SSIM(fused, b)). Its optimum is close to max(a, b).
- ``keep-both`` (``KeepBothLoss``): the same three kinds of term towards b with a's signal laid on
  top (``keep_both_target``), so neither source is lost (docs/finetune.md has both formulas).

An optional per-pixel weight map turns every mean into a weighted mean, so fine-tuning can make
regions a user marked count more (or not at all).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..model.residuals import TARGET_BACKGROUND, TARGET_GAIN, keep_both_target

if TYPE_CHECKING:
    from .settings import TrainSettings

# The authors' code: 10 * intensity + 1 * texture + 10 * structure, SSIM terms halved.
DEFAULT_WEIGHTS = (10.0, 1.0, 10.0)
SSIM_MODES = ("auto", "ssim", "ms-ssim")

_WINDOW = 11
_SIGMA = 1.5
_C1, _C2 = 0.01**2, 0.03**2  # data range 1
_MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
# MS-SSIM halves the image four times and needs a full window at the coarsest scale.
MS_SSIM_MIN_SIZE = (_WINDOW - 1) * 2 ** (len(_MS_WEIGHTS) - 1) + 1


def _sobel_kernels(x: torch.Tensor) -> torch.Tensor:
    """The 3x3 Sobel kernels Gx, Gy as a (2, 1, 3, 3) convolution weight of ``x``'s type."""
    gx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype, device=x.device)
    return torch.stack([gx, gx.t()]).unsqueeze(1)


def sobel(x: torch.Tensor) -> torch.Tensor:
    """|Gx * x| + |Gy * x| with the 3x3 Sobel kernels and zero padding, per channel."""
    kernel = _sobel_kernels(x)
    channels = x.shape[1]
    grads = F.conv2d(x, kernel.repeat(channels, 1, 1, 1), padding=1, groups=channels)
    return grads.abs().view(x.shape[0], channels, 2, *x.shape[-2:]).sum(dim=2)


_QABF = {"tg": 0.9994, "kg": -15.0, "dg": 0.5, "ta": 0.9879, "ka": -22.0, "da": 0.8}


def _edges(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel edge strength and orientation modulo pi (in [-pi/2, pi/2]), zero padding."""
    grads = F.conv2d(x, _sobel_kernels(x), padding=1)
    sx, sy = grads[:, :1], grads[:, 1:]
    angle = torch.atan2(sy, sx)
    return torch.sqrt(sx * sx + sy * sy + 1e-12), angle - math.pi * torch.round(angle / math.pi)


def qabf(fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Qabf (Xydeas & Petrovic 2000) of (B, 1, H, W) images, differentiable: how well ``fused``
    keeps the strength and orientation of each source's edges, weighted by their strength (the
    metric of ``quality.metrics.qabf``, without its 8-bit rounding), optionally weighted per pixel."""
    g_f, angle_f = _edges(fused)
    kept, strength = torch.zeros_like(g_f), torch.zeros_like(g_f)
    for g_s, angle_s in (_edges(a), _edges(b)):
        ratio = torch.minimum(g_s, g_f) / torch.maximum(g_s, g_f)
        angle = 1 - (angle_s - angle_f).abs() / (math.pi / 2)
        q_strength = _QABF["tg"] / (1 + torch.exp(_QABF["kg"] * (ratio - _QABF["dg"])))
        q_angle = _QABF["ta"] / (1 + torch.exp(_QABF["ka"] * (angle - _QABF["da"])))
        kept, strength = kept + q_strength * q_angle * g_s, strength + g_s
    if weight is not None:
        kept, strength = kept * weight, strength * weight
    return kept.sum() / strength.sum().clamp_min(1e-8)


def _gaussian_window(size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * _SIGMA**2))
    return g / g.sum()


def _blur(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter, 'valid' (no padding), as the reference SSIM code does."""
    size, (batch, channels) = window.numel(), x.shape[:2]
    x = x.reshape(batch * channels, 1, *x.shape[-2:])
    x = F.conv2d(F.conv2d(x, window.view(1, 1, 1, size)), window.view(1, 1, size, 1))
    return x.view(batch, channels, *x.shape[-2:])


def _weighted_mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is None:
        return values.mean()
    return (values * weight).sum() / weight.sum().clamp_min(1e-8)


def _checked_weight(
    fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None
) -> torch.Tensor | None:
    """Every objective's input check: three (B, C, H, W) tensors of one shape, and a weight map
    (broadcast to that shape) that marks at least one pixel."""
    if not (fused.shape == a.shape == b.shape) or fused.ndim != 4:
        raise InputError(
            f"expected three (B, C, H, W) tensors of one shape, got "
            f"{tuple(fused.shape)}, {tuple(a.shape)}, {tuple(b.shape)}"
        )
    if weight is None:
        return None
    weight = torch.broadcast_to(weight.to(fused.dtype), fused.shape)
    if float(weight.sum()) <= 0:
        raise InputError("the loss weight map is zero everywhere")
    return weight


def _crop_weight(weight: torch.Tensor | None, shape: torch.Size) -> torch.Tensor | None:
    """The weight map cut to the centre of a 'valid' filter's output of ``shape``."""
    if weight is None:
        return None
    top = (weight.shape[-2] - shape[-2]) // 2
    left = (weight.shape[-1] - shape[-1]) // 2
    return weight[..., top : top + shape[-2], left : left + shape[-1]]


def _ssim_maps(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel SSIM and its contrast-structure part over an 11x11 Gaussian window (sigma 1.5);
    the window shrinks for images smaller than it."""
    size = min(_WINDOW, x.shape[-2], x.shape[-1])
    window = _gaussian_window(size, x.dtype, x.device)
    mu_x, mu_y = _blur(x, window), _blur(y, window)
    var_x = _blur(x * x, window) - mu_x**2
    var_y = _blur(y * y, window) - mu_y**2
    cov = _blur(x * y, window) - mu_x * mu_y
    cs = (2 * cov + _C2) / (var_x + var_y + _C2)
    luminance = (2 * mu_x * mu_y + _C1) / (mu_x**2 + mu_y**2 + _C1)
    return luminance * cs, cs


def ssim(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean SSIM of two (B, 1, H, W) images in [0, 1], optionally weighted per pixel."""
    ssim_map, _ = _ssim_maps(x, y)
    return _weighted_mean(ssim_map, _crop_weight(weight, ssim_map.shape))


def ms_ssim(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-scale SSIM over five scales, the "normalised" variant of the authors' code (each
    scale's value mapped from [-1, 1] to [0, 1] before the weighted product, which keeps the
    gradient finite). Needs H, W >= ``MS_SSIM_MIN_SIZE``."""
    if min(x.shape[-2:]) < MS_SSIM_MIN_SIZE:
        raise InputError(f"MS-SSIM needs images of at least {MS_SSIM_MIN_SIZE} px a side, got {tuple(x.shape[-2:])}")
    values = []
    for scale in range(len(_MS_WEIGHTS)):
        ssim_map, cs_map = _ssim_maps(x, y)
        last = scale == len(_MS_WEIGHTS) - 1
        values.append(_weighted_mean(ssim_map if last else cs_map, _crop_weight(weight, ssim_map.shape)))
        if not last:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
            weight = None if weight is None else F.avg_pool2d(weight, 2)
    stacked = (torch.stack(values) + 1) / 2
    exponents = torch.tensor(_MS_WEIGHTS, dtype=x.dtype, device=x.device)
    return torch.prod(stacked**exponents)


class FusionLoss(nn.Module):
    """The paper's loss: ``FusionLoss(a1, a2, a3, b, g)(fused, a, b, weight=None)``.

    Returns ``(total, terms)`` with ``terms`` the un-weighted ``intensity``, ``texture`` and
    ``structure`` values (tensors), so logs show what each part does. ``weight`` is an optional
    per-pixel map broadcastable to (B, 1, H, W); zero means "ignore this pixel". ``ssim`` picks
    the structure measure: "ms-ssim" (the authors' choice), "ssim" (needed for crops smaller than
    ``MS_SSIM_MIN_SIZE``), or "auto" (MS-SSIM when the image is large enough).
    """

    def __init__(
        self,
        a1: float = DEFAULT_WEIGHTS[0],
        a2: float = DEFAULT_WEIGHTS[1],
        a3: float = DEFAULT_WEIGHTS[2],
        b: float = 0.5,
        g: float = 0.5,
        ssim: str = "auto",
    ):
        super().__init__()
        if ssim not in SSIM_MODES:
            raise InputError(f"unknown ssim mode {ssim!r}: choose one of {', '.join(SSIM_MODES)}")
        self.a1, self.a2, self.a3, self.b, self.g = a1, a2, a3, b, g
        self.ssim_mode = ssim

    @classmethod
    def from_settings(cls, settings: TrainSettings) -> FusionLoss:
        """The loss a run's ``loss_weights``, ``ssim_weights`` and ``ssim`` ask for."""
        return cls(*settings.loss_weights, *settings.ssim_weights, ssim=settings.ssim)

    def _structure_measure(self, shape: torch.Size) -> Callable[..., torch.Tensor]:
        if self.ssim_mode == "ms-ssim" or (self.ssim_mode == "auto" and min(shape[-2:]) >= MS_SSIM_MIN_SIZE):
            return ms_ssim
        return ssim

    def forward(
        self, fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        weight = _checked_weight(fused, a, b, weight)
        intensity = _weighted_mean((fused - torch.maximum(a, b)) ** 2, weight)
        texture = _weighted_mean((sobel(fused) - torch.maximum(sobel(a), sobel(b))).abs(), weight)
        measure = self._structure_measure(fused.shape)
        structure = self.b * (1 - measure(fused, a, weight)) + self.g * (1 - measure(fused, b, weight))
        total = self.a1 * intensity + self.a2 * texture + self.a3 * structure
        return total, {"intensity": intensity, "texture": texture, "structure": structure}


class Objective(Protocol):
    """What training minimises: called as ``(fused, a, b, weight=None) -> (total, terms)`` on
    (B, 1, H, W) tensors, ``terms`` naming the parts it logs (any names)."""

    def __call__(
        self, fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


class KeepBothLoss(nn.Module):
    """Keep both sources: the fused image F should be T = ``keep_both_target(a, b, background,
    gain)`` in intensity and local structure, and at least as sharp as the sharpest of a, b and T.

    total = a1 * mean((F - T)^2) + a2 * mean|S(F) - max(S(a), S(b), S(T))| + a3 * (1 - SSIM(F, T))
            + edge_weight * (1 - Qabf(F; a, b))

    with S the Sobel magnitude of the paper's loss. T adds a's edges to b's where both have
    them, which blurs b's edge directions; the optional last term (``qabf``) rewards keeping
    each source's edges where it has the stronger ones. Called like ``FusionLoss``; ``weight``
    makes regions count more or not at all. a is the fluorescence (functional) source, b the
    structural.
    """

    def __init__(
        self,
        a1: float = DEFAULT_WEIGHTS[0],
        a2: float = DEFAULT_WEIGHTS[1],
        a3: float = DEFAULT_WEIGHTS[2],
        background: float | None = TARGET_BACKGROUND,
        gain: float = TARGET_GAIN,
        edge_weight: float = 0.0,
    ):
        super().__init__()
        self.a1, self.a2, self.a3 = a1, a2, a3
        self.background, self.gain, self.edge_weight = background, gain, edge_weight

    @classmethod
    def from_settings(cls, settings: TrainSettings) -> KeepBothLoss:
        """The loss a run's ``loss_weights``, ``target_background``, ``target_gain`` and
        ``edge_weight`` ask for."""
        return cls(
            *settings.loss_weights,
            background=settings.target_background,
            gain=settings.target_gain,
            edge_weight=settings.edge_weight,
        )

    def forward(
        self, fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        weight = _checked_weight(fused, a, b, weight)
        target = keep_both_target(a, b, self.background, self.gain)
        detail = torch.maximum(torch.maximum(sobel(a), sobel(b)), sobel(target))
        intensity = _weighted_mean((fused - target) ** 2, weight)
        texture = _weighted_mean((sobel(fused) - detail).abs(), weight)
        structure = 1 - ssim(fused, target, weight)
        total = self.a1 * intensity + self.a2 * texture + self.a3 * structure
        terms = {"intensity": intensity, "texture": texture, "structure": structure}
        if self.edge_weight:
            terms["edges"] = 1 - qabf(fused, a, b, weight)
            total = total + self.edge_weight * terms["edges"]
        return total, terms


#: Training objectives by name (``TrainSettings.objective``, ``fusionmamba finetune --objective``).
#: To add one, register a class whose instances are ``Objective``s; a ``from_settings(settings)``
#: classmethod, when the class has one, builds it from the run's settings (else ``cls()``).
OBJECTIVES: dict[str, type] = {"paper": FusionLoss, "keep-both": KeepBothLoss}


def make_objective(settings: TrainSettings) -> Objective:
    """The objective a run's settings name."""
    cls = OBJECTIVES[settings.objective]
    factory = getattr(cls, "from_settings", None)
    objective: Objective = factory(settings) if factory is not None else cls()
    return objective
