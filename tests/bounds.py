"""Error bounds derived from the length of each reduction, shared by the tests.

A float computation of ``sum_k a_k b_k`` in precision ``eps`` (unit roundoff) is within
``gamma_k * sum_k |a_k||b_k|`` of the exact value, ``gamma_k = k eps / (1 - k eps)``; blocked
and FMA-contracted orders satisfy the same bound.  The tests compare against float64 NumPy
computed from the very same (already rounded) inputs, so these bounds are what an exact kernel
must meet and a wrong one (a missing bias, a transposed operand, a mean instead of a sum) will
exceed by orders of magnitude.
"""

from __future__ import annotations

import numpy as np


def unit_roundoff(dtype) -> float:
    """``eps / 2`` of ``dtype``: the largest relative error of one rounding."""
    return float(np.finfo(dtype).eps) / 2.0


def gamma(k: int, dtype) -> float:
    """``k u / (1 - k u)``: the relative error bound of a length-``k`` reduction."""
    u = unit_roundoff(dtype)
    k = max(int(k), 1)
    return k * u / (1.0 - k * u)


def matmul_bound(a: np.ndarray, b: np.ndarray, dtype, extra_terms: int = 0) -> np.ndarray:
    """Elementwise bound on ``|fl(a @ b) - a @ b|`` for a ``dtype`` kernel.

    ``extra_terms`` counts additions beyond the inner product (a bias, a penalty) and the
    final rounding to ``dtype``.
    """
    a = np.abs(np.asarray(a, np.float64))
    b = np.abs(np.asarray(b, np.float64))
    k = a.shape[-1]
    return gamma(k + extra_terms + 1, dtype) * (a @ b)


def dots_bound(x: np.ndarray, w: np.ndarray, b: np.ndarray, dtype) -> np.ndarray:
    """Bound on ``|fl(x @ w + b) - (x @ w + b)|`` in the order of the dot-product kernels
    (``kernels.dense.forward_dots``): a product passes through at most ``in // 16`` roundings in
    its lane, 4 in the tree, ``in % 16`` in the tail's chain, and 2 more (adding the tail, then
    the bias); ``eps`` (twice the unit roundoff) per rounding leaves the bound's second-order
    term room.  ``b`` may be empty (no bias)."""
    k = x.shape[-1]
    depth = k // 16 + 4 + k % 16 + 2
    mags = np.abs(np.asarray(x, np.float64)) @ np.abs(np.asarray(w, np.float64))
    if b.size:
        mags = mags + np.abs(np.asarray(b, np.float64))
    return depth * float(np.finfo(dtype).eps) * mags
