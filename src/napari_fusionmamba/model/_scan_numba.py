"""The numba selective-scan backend: fused CPU kernels, forward and backward.

Each (batch, channel) sequence is one parallel work item whose N states stay in a small local
array, so nothing of size (batch, channels, L, N) is ever stored: the backward pass recomputes
the states of one sequence into a per-item buffer (L x N) and walks back through it. Imported
only when the numba backend runs (numba's import and first compile cost time); the kernels are
cached on disk after the first compile.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from numba import njit, prange

_SOFTPLUS_LINEAR = 20.0  # above this softplus(x) == x in float32, as torch's threshold


@njit(inline="always")
def _dt(raw, softplus):
    if softplus and raw <= _SOFTPLUS_LINEAR:
        return np.float32(math.log1p(math.exp(raw)))
    return raw


@njit(parallel=True, cache=True)
def _forward(u, delta, A, B, C, D, bias, softplus, y):
    batch, channels, length = u.shape
    groups, n = B.shape[1], A.shape[1]
    per = channels // groups
    for item in prange(batch * channels):
        b, d = item // channels, item % channels
        g = d // per
        a = A[d].copy()
        h = np.zeros(n, np.float32)
        for t in range(length):
            dt = _dt(delta[b, d, t] + bias[d], softplus)
            x = dt * u[b, d, t]
            acc = np.float32(0.0)
            for k in range(n):
                h[k] = math.exp(dt * a[k]) * h[k] + x * B[b, g, k, t]
                acc += h[k] * C[b, g, k, t]
            y[b, d, t] = acc + D[d] * u[b, d, t]


@njit(parallel=True, cache=True)
def _backward(u, delta, A, B, C, D, bias, softplus, dy, blocks,
              du, ddelta, dA, dD, dbias, dB, dC):
    """Gradients; dB, dC get one partial sum per (block of channels) to avoid write races.

    Work items are (batch, group, block); each walks its channels one after another, so the
    partial sums of B and C over the channels of a group never collide. dA, dD, dbias come back
    per batch element and are summed by the caller.
    """
    batch, channels, length = u.shape
    groups, n = B.shape[1], A.shape[1]
    per = channels // groups
    per_block = -(-per // blocks)
    for item in prange(batch * groups * blocks):
        b = item // (groups * blocks)
        g = (item // blocks) % groups
        blk = item % blocks
        hs = np.empty((length, n), np.float32)
        gh = np.empty(n, np.float32)
        gA = np.empty(n, np.float32)
        for d in range(g * per + blk * per_block, min(g * per + (blk + 1) * per_block, (g + 1) * per)):
            a = A[d].copy()
            # recompute the states of this sequence
            for k in range(n):
                gh[k] = 0.0
            for t in range(length):
                dt = _dt(delta[b, d, t] + bias[d], softplus)
                x = dt * u[b, d, t]
                for k in range(n):
                    gh[k] = math.exp(dt * a[k]) * gh[k] + x * B[b, g, k, t]
                    hs[t, k] = gh[k]
            # walk back: gh is dL/dh_t, accumulated from the future and from y_t
            for k in range(n):
                gh[k] = 0.0
                gA[k] = 0.0
            gD = np.float32(0.0)
            gbias = np.float32(0.0)
            for t in range(length - 1, -1, -1):
                raw = delta[b, d, t] + bias[d]
                dt = _dt(raw, softplus)
                ut = u[b, d, t]
                g_y = dy[b, d, t]
                gD += g_y * ut
                gu = g_y * D[d]
                gdt = np.float32(0.0)
                for k in range(n):
                    bk = B[b, g, k, t]
                    dC[blk, b, g, k, t] += g_y * hs[t, k]
                    gk = gh[k] + g_y * C[b, g, k, t]
                    prev = hs[t - 1, k] if t > 0 else np.float32(0.0)
                    decay = math.exp(dt * a[k])
                    gdt += gk * (a[k] * decay * prev + ut * bk)
                    gu += gk * dt * bk
                    dB[blk, b, g, k, t] += gk * dt * ut
                    gA[k] += gk * prev * decay * dt
                    gh[k] = gk * decay
                if softplus and raw <= _SOFTPLUS_LINEAR:
                    gdt = np.float32(gdt / (1.0 + math.exp(-raw)))  # softplus' = sigmoid
                ddelta[b, d, t] = gdt
                du[b, d, t] = gu
                gbias += gdt
            for k in range(n):
                dA[b, d, k] = gA[k]
            dD[b, d] = gD
            dbias[b, d] = gbias


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).contiguous().numpy()


def _set_threads() -> None:
    """Follow torch's thread count (so one setting governs both), within numba's pool."""
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


class _NumbaScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, softplus):
        channels = u.shape[1]
        arrays = [_np(t) for t in (u, delta, A, B, C)]
        arrays.append(_np(D) if D is not None else np.zeros(channels, np.float32))
        arrays.append(_np(delta_bias) if delta_bias is not None else np.zeros(channels, np.float32))
        y = np.empty(u.shape, np.float32)
        _set_threads()
        _forward(*arrays, softplus, y)
        ctx.arrays, ctx.softplus = arrays, softplus
        ctx.has = (D is not None, delta_bias is not None)
        ctx.dtypes = [t.dtype if t is not None else None for t in (u, delta, A, B, C, D, delta_bias)]
        return torch.from_numpy(y).to(u.dtype)

    @staticmethod
    def backward(ctx, grad):
        u, delta, A, B, C, D, bias = ctx.arrays
        batch, channels, length = u.shape
        groups, n = B.shape[1], A.shape[1]
        threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
        # enough (batch, group, block) items to keep every thread busy
        blocks = max(1, min(channels // groups, -(-2 * threads // (batch * groups))))
        du, ddelta = np.empty_like(u), np.empty_like(u)
        dA = np.empty((batch, channels, n), np.float32)
        dD = np.empty((batch, channels), np.float32)
        dbias = np.empty((batch, channels), np.float32)
        dB = np.zeros((blocks,) + B.shape, np.float32)
        dC = np.zeros((blocks,) + C.shape, np.float32)
        _set_threads()
        _backward(u, delta, A, B, C, D, bias, ctx.softplus, _np(grad), blocks,
                  du, ddelta, dA, dD, dbias, dB, dC)
        grads = [du, ddelta, dA.sum(0), dB.sum(0), dC.sum(0),
                 dD.sum(0) if ctx.has[0] else None, dbias.sum(0) if ctx.has[1] else None]
        out = [None if g is None else torch.from_numpy(g).to(dtype) for g, dtype in zip(grads, ctx.dtypes)]
        return (*out, None)


def numba_selective_scan(u, delta, A, B, C, D, delta_bias, softplus):
    """The scan on CPU tensors (any float dtype, computed in float32; result in ``u``'s dtype)."""
    return _NumbaScan.apply(u, delta, A, B, C, D, delta_bias, softplus)
