"""The Fast-FMI window scores as one compiled loop (numba) over every window position.

No 9 x 9 joint table is ever built (the numpy form this replaced moved (81, windows) tables
through memory): the joint is a mix of the independent product and the coupling behind the
Frechet bound, whose mass lies on at most 2n - 1 cells of a staircase. The product's entropy
over all cells comes in closed form from the marginals' logarithms, so only the staircase cells
need a logarithm of their own. Imported only when FMI is computed (numba's import costs time);
compiled once, cached on disk."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_HALF_STEPS = np.log(np.arange(1, 1021) / 2.0)
"""ln(k / 2) for k = 1..1020: the logarithms of the differences of 8-bit gray levels and of their
central-difference gradients (half levels), so that most windows' pdfs need no logarithm."""


@njit(cache=True, inline="always")
def _log_difference(d: float) -> float:
    """ln d for d > 0: a table look-up for whole and half gray levels, else the logarithm."""
    k = 2.0 * d
    if k <= _HALF_STEPS.size and k == math.floor(k):
        return float(_HALF_STEPS[int(k) - 1])
    return math.log(d)


@njit(cache=True, inline="always")
def _marginal(window: np.ndarray, p: np.ndarray, logs: np.ndarray, cdf: np.ndarray) -> float:
    """Window -> pdf ``p`` (min-max normalised to [0, 1], constant -> ones, divided by the sum),
    its ln (0 where p is 0), its cumulative sum; returns its entropy in nats."""
    n = window.size
    low = high = window[0]
    for i in range(n):
        low, high = min(low, window[i]), max(high, window[i])
    span = high - low
    total = 0.0
    for i in range(n):
        p[i] = 1.0 if span == 0 else (window[i] - low) / span
        total += p[i]
    log_scale = math.log(total) + (0.0 if span == 0 else _log_difference(span))
    h = running = 0.0
    for i in range(n):
        p[i] /= total
        if p[i] > 0:  # ln p = ln(window - low) - ln(span * total)
            logs[i] = (0.0 if span == 0 else _log_difference(window[i] - low)) - log_scale
        else:
            logs[i] = 0.0
        h -= p[i] * logs[i]
        running += p[i]
        cdf[i] = running
    return h


@njit(cache=True, inline="always")
def _coupling(cf: np.ndarray, px: np.ndarray, upper: bool, cells: np.ndarray, masses: np.ndarray) -> int:
    """The cells (row f, column x) and masses of the coupling whose joint CDF is the Frechet
    bound: comonotone for the upper bound min(F_i, X_j), countermonotone for the lower bound
    max(F_i + X_j - 1, 0) (x taken in reverse). The bound's second difference is exactly this
    mass, non-zero on at most 2n - 1 cells along a staircase: one merge walk of the two CDFs,
    each cell's mass the step from the previous breakpoint; returns their number."""
    n = cf.size
    count, i, t = 0, 0, 0
    x_cdf = px[0] if upper else px[n - 1]
    before = 0.0
    while i < n and t < n:
        f_cdf = cf[i]
        high = min(f_cdf, x_cdf)
        if high > before:
            cells[count, 0], cells[count, 1], masses[count] = i, t if upper else n - 1 - t, high - before
            count += 1
            before = high
        f_done, x_done = f_cdf <= x_cdf, x_cdf <= f_cdf
        i += f_done
        if x_done:
            t += 1
            if t < n:
                x_cdf += px[t] if upper else px[n - 1 - t]
    return count


@njit(cache=True, inline="always")
def _window_score(x: tuple, f: tuple, cells: np.ndarray, masses: np.ndarray) -> float:  # type: ignore[type-arg]
    """Normalised feature MI of one window pair from their marginals (pdf, ln pdf, cdf, entropy)."""
    px, lx, _, hx = x
    pf, lf, cf, hf = f
    n = px.size
    mean_x, mean_f = px.sum() / n, pf.sum() / n
    num = den_x = den_f = ex = ex2 = ef = ef2 = 0.0
    for i in range(n):
        num += (px[i] - mean_x) * (pf[i] - mean_f)
        den_x += (px[i] - mean_x) ** 2
        den_f += (pf[i] - mean_f) ** 2
        k = i + 1.0
        ex += k * px[i]
        ex2 += k * k * px[i]
        ef += k * pf[i]
        ef2 += k * k * pf[i]
    den = math.sqrt(den_x * den_f)
    c = 0.0 if num == 0 else num / (den if den > 0 else 1.0)
    sd_product = math.sqrt(max(ex2 - ex * ex, 0.0)) * math.sqrt(max(ef2 - ef * ef, 0.0))
    if c == 0 or sd_product == 0:
        return 0.0  # the joint is the independent product: no information

    # the mix of bound and product whose correlation is c: c / the bound's own correlation
    count = _coupling(cf, px, c >= 0, cells, masses)
    e_fx = 0.0
    for k in range(count):
        e_fx += masses[k] * (cells[k, 0] + 1.0) * (cells[k, 1] + 1.0)
    corr_bound = (e_fx - ex * ef) / sd_product
    if corr_bound == 0:
        return 0.0
    mix = c / corr_bound

    # joint = mix * coupling + (1 - mix) * pf_i px_j: -p ln|p| of the product over all cells
    # in closed form, then each coupling cell's own term in place of its product-only term
    rest = 1.0 - mix
    log_rest = math.log(abs(rest)) if rest != 0 else 0.0
    h_joint = rest * (hf + hx - log_rest)
    for k in range(count):
        i, j = cells[k, 0], cells[k, 1]
        product = rest * pf[i] * px[j]
        cell = mix * masses[k] + product
        h_joint += product * (log_rest + lf[i] + lx[j])
        if cell != 0:
            h_joint -= cell * math.log(abs(cell))
    information = hx + hf - h_joint
    return 0.0 if information == 0 or hx + hf == 0 else 2.0 * information / (hx + hf)


@njit(cache=True, nogil=True)  # no GIL: several fused images are scored at once in threads
def fmi_sum(f: np.ndarray, a: np.ndarray, b: np.ndarray, size: int) -> float:
    """Sum over every size x size window of (FMI(A, F) + FMI(B, F)) / 2; values read column by
    column (the reference code's order); identical windows score 1."""
    n = size * size
    windows, pdfs, logs, cdfs = np.empty((3, n)), np.empty((3, n)), np.empty((3, n)), np.empty((3, n))
    entropies = np.empty(3)
    cells, masses = np.empty((2 * n, 2), np.int64), np.empty(2 * n)
    total = 0.0
    for top in range(f.shape[0] - size + 1):
        for left in range(f.shape[1] - size + 1):
            for col in range(size):
                for row in range(size):
                    windows[0, col * size + row] = f[top + row, left + col]
                    windows[1, col * size + row] = a[top + row, left + col]
                    windows[2, col * size + row] = b[top + row, left + col]
            score = 0.0
            f_ready = False
            for k in (1, 2):
                same = True
                for i in range(n):
                    if windows[k, i] != windows[0, i]:
                        same = False
                        break
                if same:
                    score += 1.0
                    continue
                if not f_ready:  # F's marginal: once per window, only when a source differs
                    entropies[0] = _marginal(windows[0], pdfs[0], logs[0], cdfs[0])
                    f_ready = True
                entropies[k] = _marginal(windows[k], pdfs[k], logs[k], cdfs[k])
                score += _window_score(
                    (pdfs[k], logs[k], cdfs[k], entropies[k]), (pdfs[0], logs[0], cdfs[0], entropies[0]), cells, masses
                )
            total += score / 2.0
    return total
