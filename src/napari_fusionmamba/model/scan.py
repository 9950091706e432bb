"""The selective scan of Mamba, with interchangeable backends.

All backends compute the same function as mamba-ssm's ``selective_scan_fn`` (without ``z``)::

    dt_t = softplus(delta_t + delta_bias)             (softplus only when asked)
    h_t  = exp(dt_t * A) * h_{t-1} + dt_t * u_t * B_t  (per channel, N states)
    y_t  = <C_t, h_t> + D * u_t

with u, delta (batch, channels, L); A (channels, N); B, C (batch, groups, N, L), channel c using
group c // (channels / groups); D, delta_bias (channels,).

Backends: ``cuda`` (mamba-ssm's fused kernel, CUDA tensors only, imported lazily so the CPU
path never loads it), ``numba`` (a fused CPU kernel, the fast path on CPU), ``torch`` (chunked
pure PyTorch for any device: MPS, CUDA without mamba-ssm, or CPU without numba) and ``reference``
(the plain sequential loop, the ground truth in tests). ``auto`` picks cuda > numba > torch for
the tensors' device; the ``FUSIONMAMBA_SCAN_BACKEND`` environment variable replaces ``auto``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..errors import InputError, UnavailableError

BACKENDS = ("cuda", "numba", "torch", "reference")
ENV_VAR = "FUSIONMAMBA_SCAN_BACKEND"


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """y = selective scan of ``u`` (same dtype and shape as ``u``), differentiable in every input."""
    _check_shapes(u, delta, A, B, C, D, delta_bias)
    if torch.jit.is_tracing():  # type: ignore[no-untyped-call]  # a trace would unroll the loops: keep them compiled
        return _scripted_scan()(u, delta, A, B, C, D, delta_bias, bool(delta_softplus), None)
    name = resolve_backend(backend, u.device)
    return _RUNNERS[name](u, delta, A, B, C, D, delta_bias, bool(delta_softplus))


def resolve_backend(backend: str | None = "auto", device: str | torch.device = "cpu") -> str:
    """The backend that runs for tensors on ``device``; errors say why a named one cannot run.

    An explicit ``backend`` wins; ``"auto"`` defers to ``$FUSIONMAMBA_SCAN_BACKEND`` when set.
    """
    device = torch.device(device)
    name = (backend or "auto").strip().lower()
    source = "backend"
    if name == "auto":
        env = os.environ.get(ENV_VAR, "").strip().lower()
        if env and env != "auto":
            name, source = env, ENV_VAR
    if name != "auto" and name not in BACKENDS:
        raise InputError(
            f"unknown selective-scan backend {name!r} (from {source}): choose one of auto, {', '.join(BACKENDS)}"
        )
    if name == "auto":
        if device.type == "cuda" and _mamba_importable():
            return "cuda"
        if device.type == "cpu" and _numba_importable():
            return "numba"
        return "torch"
    if name == "cuda":
        if device.type != "cuda":
            raise UnavailableError(
                f"the cuda selective-scan backend needs CUDA tensors, these are on {device.type} "
                f"(from {source}); use auto, torch or numba"
            )
        if not _mamba_importable():
            raise UnavailableError(
                "the cuda selective-scan backend needs mamba-ssm "
                f"(pip install 'napari-fusionmamba[cuda]'): {_mamba_error()}"
            )
    if name == "numba":
        if device.type != "cpu":
            raise UnavailableError(
                f"the numba selective-scan backend runs on the CPU, these tensors are on {device.type}"
            )
        if not _numba_importable():
            raise UnavailableError("the numba selective-scan backend needs numba (pip install numba)")
    return name


def describe_backends() -> list[str]:
    """Lines for ``fusionmamba info``: what runs on each device present, and what is missing."""
    from .devices import available_devices

    lines = []
    env = os.environ.get(ENV_VAR)
    for kind in available_devices():
        try:
            chosen = resolve_backend("auto", kind)
        except (ValueError, RuntimeError) as error:
            chosen = f"error: {error}"
        lines.append(f"scan backend on {kind}: {chosen}")
    if env:
        lines.append(f"  ({ENV_VAR}={env})")
    if not torch.cuda.is_available():
        state = "installed, no CUDA device" if importlib.util.find_spec("mamba_ssm") else "not installed"
    else:
        state = "available" if _mamba_importable() else f"unavailable ({_mamba_error()})"
    lines.append(f"  cuda (mamba-ssm): {state}")
    lines.append(f"  numba: {'available' if _numba_importable() else 'not installed'}")
    return lines


def _check_shapes(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
) -> None:
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(
            f"u and delta must both be (batch, channels, L); got {tuple(u.shape)} and {tuple(delta.shape)}"
        )
    batch, channels, length = u.shape
    if A.dim() != 2 or A.shape[0] != channels:
        raise ValueError(f"A must be (channels={channels}, N); got {tuple(A.shape)}")
    n = A.shape[1]
    for label, t in (("B", B), ("C", C)):
        if t.dim() != 4 or t.shape[0] != batch or t.shape[2] != n or t.shape[3] != length:
            raise ValueError(f"{label} must be (batch={batch}, groups, N={n}, L={length}); got {tuple(t.shape)}")
        if channels % t.shape[1]:
            raise ValueError(f"{label} has {t.shape[1]} groups, which does not divide {channels} channels")
    for label, optional in (("D", D), ("delta_bias", delta_bias)):
        if optional is not None and tuple(optional.shape) != (channels,):
            raise ValueError(f"{label} must be (channels={channels},); got {tuple(optional.shape)}")


@functools.cache
def _numba_importable() -> bool:
    return importlib.util.find_spec("numba") is not None


@functools.cache
def _mamba_error() -> str:
    """'' when mamba-ssm's scan imports, else why not; imports it, so only called for CUDA."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # noqa: F401
    except Exception as error:  # an ImportError, or a broken CUDA extension
        return f"{type(error).__name__}: {error}"
    return ""


def _mamba_importable() -> bool:
    return importlib.util.find_spec("mamba_ssm") is not None and not _mamba_error()


def _dt(delta: torch.Tensor, delta_bias: torch.Tensor | None, softplus: bool) -> torch.Tensor:
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    return F.softplus(delta) if softplus else delta


def _by_channel(t: torch.Tensor, channels: int) -> torch.Tensor:
    """(batch, groups, N, L) -> (batch, channels, N, L) without copying."""
    batch, groups, n, length = t.shape
    return t[:, :, None].expand(batch, groups, channels // groups, n, length).reshape(batch, channels, n, length)


def _finish(y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    if D is not None:
        y = y + u * D.float()[:, None]
    return y.to(dtype)


def _scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    softplus: bool,
) -> torch.Tensor:
    """One step at a time: slow, and obviously the definition."""
    dtype = u.dtype
    u, delta, A, B, C = (t.float() for t in (u, delta, A, B, C))
    dt = _dt(delta, delta_bias, softplus)
    channels = u.shape[1]
    B, C = _by_channel(B, channels), _by_channel(C, channels)
    h = u.new_zeros(u.shape[0], channels, A.shape[1])
    ys = []
    # unbind, not indexing: the backward of x[..., t] would build a full-size gradient every step
    for dt_t, x_t, B_t, C_t in zip(dt.unbind(-1), (dt * u).unbind(-1), B.unbind(-1), C.unbind(-1)):
        h = torch.exp(dt_t[..., None] * A) * h + x_t[..., None] * B_t
        ys.append((h * C_t).sum(-1))
    return _finish(torch.stack(ys, dim=-1), u, D, dtype)


def _chunk_length(length: int) -> int:
    """The power of two nearest sqrt(L) (on a log scale): the Python loop runs ~3 sqrt(L) steps on
    (L / T)-wide slices. Integers only, so TorchScript compiles it."""
    t = 1
    while 2 * t * t <= length:
        t *= 2
    return t


def _scan_torch(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    softplus: bool,
    chunk: int | None = None,
) -> torch.Tensor:
    """Chunked scan: all chunks advance together, then chunk start states are carried across.

    The sequence is cut into L / T chunks of T steps. Pass 1 runs the recurrence inside every
    chunk at once from a zero state (T steps on (.., L / T, N) slices) to get each chunk's end
    state; the chunks' start states follow by a short carry over L / T chunks (the decay over a
    whole chunk is exp(A * sum dt)); pass 2 reruns the chunks from their true start states and
    contracts with C. Only T-step Python loops over (batch, channels, L / T, N) slices, no unstable
    exp(-cumsum) factorisation; autograd differentiates it. TorchScript compiles it as written, so
    a traced network keeps its loops (see ``selective_scan``).
    """
    dtype = u.dtype
    u, delta, A = u.float(), delta.float(), A.float()
    dt = _dt(delta, delta_bias, softplus)
    batch, channels, length = u.shape[0], u.shape[1], u.shape[2]
    groups, n = B.shape[1], A.shape[1]
    per = channels // groups
    T = _chunk_length(length) if chunk is None else chunk
    nc = -(-length // T)
    pad = nc * T - length
    x, B, C = dt * u, B.float(), C.float()
    if pad > 0:  # dt = 0 on the padding: the state passes through unchanged, outputs are dropped
        x, dt, B, C = F.pad(x, [0, pad]), F.pad(dt, [0, pad]), F.pad(B, [0, pad]), F.pad(C, [0, pad])
    # time-major slices: dt, x (T, batch, groups, per, nc, 1); B, C (T, batch, groups, 1, nc, N)
    dt = dt.view(batch, groups, per, nc, T).permute(4, 0, 1, 2, 3).unsqueeze(-1)
    x = x.view(batch, groups, per, nc, T).permute(4, 0, 1, 2, 3).unsqueeze(-1)
    B = B.view(batch, groups, n, nc, T).permute(4, 0, 1, 3, 2).unsqueeze(3)
    C = C.view(batch, groups, n, nc, T).permute(4, 0, 1, 3, 2).unsqueeze(3)
    a = A.view(groups, per, 1, n)
    decay = torch.exp(dt.sum(0) * a)  # over a whole chunk: (batch, groups, per, nc, N)
    # (unbind: see _scan_reference)
    xs, Bs, Cs = x.unbind(0), B.unbind(0), C.unbind(0)

    # each step's decay is used by both passes (and autograd keeps it anyway): compute it once
    decays = [torch.exp(dt_t * a) for dt_t in dt.unbind(0)]
    h = xs[0] * Bs[0]
    for t in range(1, T):
        h = torch.addcmul(decays[t] * h, xs[t], Bs[t])
    starts = [torch.zeros_like(h[..., 0, :])]
    for c in range(nc - 1):
        starts.append(decay[..., c, :] * starts[-1] + h[..., c, :])
    h = torch.stack(starts, dim=-2)

    ys: list[torch.Tensor] = []
    for t in range(T):
        h = torch.addcmul(decays[t] * h, xs[t], Bs[t])
        ys.append((h * Cs[t]).sum(-1))
    y = torch.stack(ys, dim=-1).reshape(batch, channels, nc * T)[..., :length]
    return _finish(y, u, D, dtype)


@functools.cache
def _scripted_scan() -> Callable[..., torch.Tensor]:
    """The torch backend compiled by TorchScript, for exported (traced) networks."""
    return torch.jit.script(_scan_torch)


def _scan_numba(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    softplus: bool,
) -> torch.Tensor:
    """The fused kernel runs the recurrence; torch does the cheap (B, D, L) parts around it."""
    from ._scan_numba import numba_scan

    dtype = u.dtype
    u, delta, A, B, C = (t.float() for t in (u, delta, A, B, C))
    y = numba_scan(u, _dt(delta, delta_bias, softplus), A, B, C)
    return _finish(y, u, D, dtype)


def _scan_cuda(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    softplus: bool,
) -> torch.Tensor:
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    def last_contiguous(t: torch.Tensor) -> torch.Tensor:
        return t if t is None or t.stride(-1) == 1 else t.contiguous()

    return selective_scan_fn(
        last_contiguous(u),
        last_contiguous(delta),
        A.float(),
        last_contiguous(B),
        last_contiguous(C),
        D=None if D is None else D.float(),
        z=None,
        delta_bias=None if delta_bias is None else delta_bias.float(),
        delta_softplus=softplus,
    )


_RUNNERS = {"cuda": _scan_cuda, "numba": _scan_numba, "torch": _scan_torch, "reference": _scan_reference}
