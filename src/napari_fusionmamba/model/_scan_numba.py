"""The numba selective-scan backend: fused CPU kernels, forward and backward.

Each (batch, channel) sequence is one parallel work item whose N states stay in a small local
array, so nothing of size (batch, channels, L, N) is ever stored: the backward pass recomputes
the states of one sequence into per-item buffers (L x N) and walks back through them. Imported
only when the numba backend runs (numba's import and first compile cost time); the kernels are
cached on disk after the first compile.
"""

from __future__ import annotations

import os
import threading
import types
from collections.abc import Callable
from typing import Any

import numba
import numpy as np
import torch
from numba import njit, prange

# numba's OpenMP layer brings a second OpenMP runtime next to torch's; their spinning workers
# slowed torch's own ops (and the whole network) several-fold in measurements here. The
# workqueue layer does not, but must never run two kernels at once: hence the lock.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"
_LOCK = threading.Lock()


@njit(inline="always", fastmath=True)
def _exp(x: float) -> float:
    """float32 exp, ~1 ulp, in plain arithmetic so that loops over the N states vectorise.

    (math.exp is a libm call per element, about 20x slower here.) Cody-Waite reduction
    x = n ln2 + r, a degree-7 polynomial for exp(r), and 2^n built in the exponent bits; x is
    clamped to the float32 range, so exp(-1000) gives 1.6e-38 instead of 0. n is rounded by
    np.floor, which stays float32: math.floor returns an int64, whose conversions the compiler
    could only do one lane at a time (the scan took 2.4 times as long, same results).
    """
    x = min(max(x, np.float32(-87.0)), np.float32(88.0))
    n = np.floor(x * np.float32(1.4426950408889634) + np.float32(0.5))
    r = x - n * np.float32(0.693359375) + n * np.float32(2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    return p * np.int32((np.int32(n) + 127) << 23).view(np.float32)


_BLOCK = 32  # steps whose decays _forward computes ahead of the recurrence


@njit(parallel=True, cache=True, fastmath=True)
def _forward(u: np.ndarray, dt: np.ndarray, A: np.ndarray, B: np.ndarray, C: np.ndarray, y: np.ndarray) -> None:
    """B, C come time-major, (batch, groups, L, N), so each step reads N contiguous values.

    The decays of a block of steps are computed first, off the recurrence's dependency chain
    (about 30% faster than one fused loop here).
    """
    batch, channels, length = u.shape
    groups, n = B.shape[1], A.shape[1]
    per = channels // groups
    for item in prange(batch * channels):
        b, d = item // channels, item % channels
        g = d // per
        a = A[d].copy()
        h = np.zeros(n, np.float32)
        decays = np.empty((_BLOCK, n), np.float32)
        for start in range(0, length, _BLOCK):
            steps = min(_BLOCK, length - start)
            for s in range(steps):
                dt_s = dt[b, d, start + s]
                for k in range(n):
                    decays[s, k] = _exp(dt_s * a[k])
            for s in range(steps):
                t = start + s
                x = dt[b, d, t] * u[b, d, t]
                acc = np.float32(0.0)
                for k in range(n):
                    h[k] = decays[s, k] * h[k] + x * B[b, g, t, k]
                    acc += h[k] * C[b, g, t, k]
                y[b, d, t] = acc


def _one_thread(kernel: Any) -> Any:
    """``kernel`` compiled again to run on the calling thread, without the GIL and without
    numba's thread pool (its ``prange`` a plain loop): with one torch thread per caller (chunk
    workers side by side), callers scan at once. A copy of the function under its own name, so
    that it gets its own on-disk cache."""
    py = kernel.py_func
    twin = types.FunctionType(py.__code__, py.__globals__, f"{py.__name__}_one_thread")
    twin.__qualname__ = twin.__name__
    return njit(nogil=True, cache=True, fastmath=True)(twin)


_forward_one_thread = _one_thread(_forward)


_LANES = 16  # channels that _forward_lanes advances together, one SIMD register of float32


@njit(parallel=True, cache=True, fastmath=True)
def _forward_lanes(
    u: np.ndarray, dt: np.ndarray, A: np.ndarray, B: np.ndarray, C: np.ndarray, D: np.ndarray, y: np.ndarray
) -> None:
    """Inference only, channels-last: u, dt, y (batch, groups, L, channels of the group); A
    (groups, channels, N); B, C (batch, groups, L, N); D (groups, channels); y gets D u too.

    Each work item advances ``_LANES`` channels of one group together, a lane per channel: the
    states' loop has no reduction across lanes (``_forward`` sums its N states, one register,
    at every step), and B_t, C_t are shared by the lanes. About twice as fast here.
    """
    batch, groups, length, channels = u.shape
    n = A.shape[2]
    blocks = -(-channels // _LANES)
    for item in prange(batch * groups * blocks):
        b, g, first = item // (groups * blocks), (item // blocks) % groups, (item % blocks) * _LANES
        width = min(_LANES, channels - first)
        a = np.zeros((n, _LANES), np.float32)
        for k in range(n):
            for c in range(width):
                a[k, c] = A[g, first + c, k]
        h = np.zeros((n, _LANES), np.float32)
        dt_t = np.zeros(_LANES, np.float32)  # lanes past ``width`` stay 0: their state stays 0
        x = np.zeros(_LANES, np.float32)
        acc = np.zeros(_LANES, np.float32)
        for t in range(length):
            for c in range(width):
                dt_t[c] = dt[b, g, t, first + c]
                x[c] = dt_t[c] * u[b, g, t, first + c]
            for c in range(_LANES):
                acc[c] = 0.0
            for k in range(n):
                b_k, c_k = B[b, g, t, k], C[b, g, t, k]
                for c in range(_LANES):
                    h[k, c] = _exp(dt_t[c] * a[k, c]) * h[k, c] + x[c] * b_k
                    acc[c] += h[k, c] * c_k
            for c in range(width):
                y[b, g, t, first + c] = acc[c] + D[g, first + c] * u[b, g, t, first + c]


_forward_lanes_one_thread = _one_thread(_forward_lanes)


@njit(parallel=True, cache=True, fastmath=True)
def _backward(
    u: np.ndarray,
    dt: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    C: np.ndarray,
    dy: np.ndarray,
    blocks: int,
    du: np.ndarray,
    ddt: np.ndarray,
    dA: np.ndarray,
    dB: np.ndarray,
    dC: np.ndarray,
) -> None:
    """Gradients; dB, dC get one partial sum per (block of channels) to avoid write races.

    Work items are (batch, group, block); each walks its channels one after another, so the
    partial sums of B and C over the channels of a group never collide. dA comes back per batch
    element and is summed by the caller. B, C, dB, dC are time-major as in _forward.
    """
    batch, channels, length = u.shape
    groups, n = B.shape[1], A.shape[1]
    per = channels // groups
    per_block = -(-per // blocks)
    for item in prange(batch * groups * blocks):
        b = item // (groups * blocks)
        g = (item // blocks) % groups
        blk = item % blocks
        hs = np.empty((length + 1, n), np.float32)  # hs[t + 1] = h_t, hs[0] = 0
        decays = np.empty((length, n), np.float32)  # exp(dt_t A), kept from the forward walk
        gh = np.empty(n, np.float32)
        gA = np.empty(n, np.float32)
        for d in range(g * per + blk * per_block, min(g * per + (blk + 1) * per_block, (g + 1) * per)):
            a = A[d].copy()
            # recompute the states of this sequence
            for t in range(length):
                dt_t = dt[b, d, t]
                for k in range(n):
                    decays[t, k] = _exp(dt_t * a[k])
            for k in range(n):
                hs[0, k] = 0.0
            for t in range(length):
                x = dt[b, d, t] * u[b, d, t]
                for k in range(n):
                    hs[t + 1, k] = decays[t, k] * hs[t, k] + x * B[b, g, t, k]
            # walk back: gh is dL/dh_t, accumulated from the future and from y_t
            for k in range(n):
                gh[k] = 0.0
                gA[k] = 0.0
            for t in range(length - 1, -1, -1):
                dt_t = dt[b, d, t]
                ut = u[b, d, t]
                g_y = dy[b, d, t]
                dtu = dt_t * ut
                gkb = np.float32(0.0)  # sum_k gk B_k: feeds both du and ddt
                gdecay = np.float32(0.0)  # sum_k gk A_k decay_k h_{t-1,k}
                for k in range(n):
                    gk = gh[k] + g_y * C[b, g, t, k]
                    dC[blk, b, g, t, k] += g_y * hs[t + 1, k]
                    dB[blk, b, g, t, k] += gk * dtu
                    gkb += gk * B[b, g, t, k]
                    q = gk * decays[t, k] * hs[t, k]
                    gA[k] += q * dt_t
                    gdecay += q * a[k]
                    gh[k] = gk * decays[t, k]
                ddt[b, d, t] = gdecay + ut * gkb
                du[b, d, t] = dt_t * gkb
            for k in range(n):
                dA[b, d, k] = gA[k]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).contiguous().numpy()


def _threads() -> int:
    """Torch's thread count (so one setting governs both), within numba's pool."""
    return max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))


def _run_forward(one_thread: Callable[..., None], parallel: Callable[..., None], *arrays: np.ndarray) -> None:
    """A forward kernel on torch's thread count: the one-thread build when torch has one thread
    (no numba pool to wait on), else the parallel one on numba's pool, set under the lock."""
    if torch.get_num_threads() == 1:
        one_thread(*arrays)
    else:
        with _LOCK:
            numba.set_num_threads(_threads())
            parallel(*arrays)


class _NumbaScan(torch.autograd.Function):
    """The core recurrence on float32 CPU tensors: (u, dt, A, B, C) -> sum_n C h."""

    @staticmethod
    def forward(
        ctx: Any, u: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor
    ) -> torch.Tensor:
        arrays = [_np(t) for t in (u, dt, A, B.transpose(2, 3), C.transpose(2, 3))]
        y = np.empty(u.shape, np.float32)
        _run_forward(_forward_one_thread, _forward, *arrays, y)
        ctx.arrays = arrays
        return torch.from_numpy(y)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
        u, dt, A, B, C = ctx.arrays
        batch, channels, _ = u.shape
        groups, n = B.shape[1], A.shape[1]
        threads = _threads()
        # enough (batch, group, block) items to keep every thread busy
        blocks = max(1, min(channels // groups, -(-2 * threads // (batch * groups))))
        du, ddt = np.empty_like(u), np.empty_like(u)
        dA = np.empty((batch, channels, n), np.float32)
        dB = np.zeros((blocks,) + B.shape, np.float32)
        dC = np.zeros((blocks,) + C.shape, np.float32)
        with _LOCK:
            numba.set_num_threads(threads)
            _backward(u, dt, A, B, C, _np(grad), blocks, du, ddt, dA, dB, dC)
        return tuple(
            torch.from_numpy(g)
            for g in (du, ddt, dA.sum(0), dB.sum(0).transpose(0, 1, 3, 2), dC.sum(0).transpose(0, 1, 3, 2))
        )


def numba_scan(u: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """sum_n C_t h_t for float32 CPU tensors; delta_bias, softplus and D are the caller's."""
    y: torch.Tensor = _NumbaScan.apply(u, dt, A, B, C)  # type: ignore[no-untyped-call]  # torch leaves apply untyped
    return y


def numba_scan_lanes(
    u: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor
) -> torch.Tensor:
    """The scan for inference on channels-last float32 CPU tensors (see ``_forward_lanes``):
    sum_n C_t h_t + D u_t, no gradient."""
    arrays = [_np(t) for t in (u, dt, A, B, C, D)]
    y = np.empty(u.shape, np.float32)
    _run_forward(_forward_lanes_one_thread, _forward_lanes, *arrays, y)
    return torch.from_numpy(y)
