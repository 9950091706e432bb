"""A literal, loop-by-loop transcription of the Fast-FMI reference algorithm (Haghighat &
Razian 2014), used only to check the vectorised metrics.feature_mutual_information.

Slow on purpose: one window at a time, one table cell at a time, as the published code does.
"""

import math

import numpy as np


def _normalised_pdf(window):
    lo, hi = min(window), max(window)
    values = [1.0] * len(window) if hi == lo else [(v - lo) / (hi - lo) for v in window]
    total = sum(values)
    return [v / total for v in values]


def _xlog2x(p):
    return -p * math.log2(abs(p)) if p != 0 else 0.0


def window_fmi(x, f):
    """FMI of two windows given as lists in column-major order."""
    if list(x) == list(f):
        return 1.0
    px, pf = _normalised_pdf(x), _normalised_pdf(f)
    n = len(px)
    cx = list(np.cumsum(px))
    cf = list(np.cumsum(pf))
    mx, mf = sum(px) / n, sum(pf) / n
    num = sum((a - mx) * (b - mf) for a, b in zip(px, pf))
    if num == 0:
        c = 0.0
    else:
        c = num / math.sqrt(sum((a - mx) ** 2 for a in px) * sum((b - mf) ** 2 for b in pf))
    ex = sum((i + 1) * p for i, p in enumerate(px))
    ex2 = sum((i + 1) ** 2 * p for i, p in enumerate(px))
    ef = sum((i + 1) * p for i, p in enumerate(pf))
    ef2 = sum((i + 1) ** 2 * p for i, p in enumerate(pf))
    sdx = math.sqrt(max(ex2 - ex * ex, 0.0))
    sdf = math.sqrt(max(ef2 - ef * ef, 0.0))

    def upper(i, j):
        return 0.0 if i < 0 or j < 0 else 0.5 * (cf[i] + cx[j] - abs(cf[i] - cx[j]))

    def lower(i, j):
        return 0.0 if i < 0 or j < 0 else 0.5 * (cf[i] + cx[j] - 1 + abs(cf[i] + cx[j] - 1))

    bound = upper if c >= 0 else lower
    if (c >= 0 and c == 0) or sdx == 0 or sdf == 0:
        mix = 0.0
    else:
        cov = sum(bound(i, j) - cf[i] * cx[j] for i in range(n) for j in range(n))
        mix = c / (cov / (sdf * sdx))
    joint_entropy = 0.0
    for i in range(n):
        for j in range(n):
            cell = bound(i, j) - bound(i - 1, j) - bound(i, j - 1) + bound(i - 1, j - 1)
            joint_entropy += _xlog2x(mix * cell + (1 - mix) * pf[i] * px[j])
    hx = sum(_xlog2x(p) for p in px)
    hf = sum(_xlog2x(p) for p in pf)
    information = hx + hf - joint_entropy
    return 0.0 if information == 0 else 2 * information / (hx + hf)


def fmi(fused, a, b, feature, w=3):
    if feature == "gradient":
        fused, a, b = (np.gradient(x, axis=1) for x in (fused, a, b))
    h, wd = fused.shape
    values = []
    for r in range(h - w + 1):
        for q in range(wd - w + 1):
            win = [x[r : r + w, q : q + w].T.ravel().tolist() for x in (a, b, fused)]
            values.append((window_fmi(win[0], win[2]) + window_fmi(win[1], win[2])) / 2)
    return float(np.mean(values))
