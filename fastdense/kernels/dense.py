"""Fused forward and backward passes of a Dense layer.

Forward writes ``act(x @ w + bias)`` and backward turns the upstream gradient into the gradients
of the input, the kernel and the bias in one call, so the layer module only allocates and
validates.
"""

import numpy as np
from numba import njit, prange

from fastdense.kernels import activation as act
from fastdense.kernels.gemm import gemm
from fastdense.kernels.update import sgd


@njit(cache=True, parallel=True)
def _bias_activation(z, y, bias, code):
    m, n = z.shape
    has_bias = bias.shape[0] > 0
    for i in prange(m):
        zi = z[i]
        yi = y[i]
        if has_bias:
            for j in range(n):
                zi[j] += bias[j]
        if code == act.SOFTMAX:
            act.softmax_row(zi, yi)
        elif code != act.LINEAR:
            for j in range(n):
                yi[j] = act.apply(code, zi[j])


@njit(cache=True)
def forward(x, w, bias, code, z, y):
    """``z = x @ w + bias`` and ``y = act(z)``.

    Parameters
    ----------
    x : ndarray (N, in)
    w : ndarray (in, units)
    bias : ndarray (units,) or (0,)
        An empty array means no bias.
    code : int
        Activation code from :mod:`fastdense.kernels.activation`.
    z, y : ndarray (N, units), C-contiguous
        Outputs; ``y`` may be ``z`` itself when ``z`` need not be kept.
    """
    gemm(x, w, z, False, False)
    _bias_activation(z, y, bias, code)


@njit(cache=True, parallel=True)
def _activation_grad(g, z, y, code, dz):
    m, n = g.shape
    for i in prange(m):
        gi = g[i]
        dzi = dz[i]
        if code == act.SOFTMAX:
            act.softmax_row_backward(gi, y[i], dzi)
        elif code == act.LINEAR:
            for j in range(n):
                dzi[j] = gi[j]
        else:
            zi = z[i]
            yi = y[i]
            for j in range(n):
                dzi[j] = gi[j] * act.derivative(code, zi[j], yi[j])


@njit(cache=True, parallel=True)
def column_sums(a, out):
    """``out[j] = sum_i a[i, j]``, summed in row order for every thread count."""
    m, n = a.shape
    block = 64
    nblocks = (n + block - 1) // block
    for jb in prange(nblocks):
        j0 = jb * block
        j1 = min(n, j0 + block)
        for j in range(j0, j1):
            out[j] = 0.0
        for i in range(m):
            ai = a[i]
            for j in range(j0, j1):
                out[j] += ai[j]


@njit(cache=True)
def backward(x, w, bias, z, y, g, code, dz, dw, db, dx, lr, l1w, l2w, l1b, l2b, fuse_sgd):
    """Gradients of a Dense layer from the upstream gradient ``g = dL/dy``.

    ``dz = g * act'(z)``, ``db = sum_rows(dz)``, ``dw = x.T @ dz``, ``dx = dz @ w.T``, all with
    the weights as they were in the forward pass.  With ``fuse_sgd`` the kernel then applies
    plain SGD in place, ``w -= lr * (dw + l1w * sign(w) + 2 * l2w * w)`` and likewise for the
    bias, so the caller needs no separate update; otherwise ``dw`` and ``db`` hold the raw
    gradients (without penalties) and ``w``, ``bias`` are untouched.

    ``z`` and ``y`` may be the same array when the activation needs only one of them; ``bias``
    and ``db`` are empty without a bias; ``dz`` is a workspace left untouched for the linear
    activation, where ``dz = g``.
    """
    d = g
    if code != act.LINEAR:
        _activation_grad(g, z, y, code, dz)
        d = dz
    if db.shape[0] > 0:
        column_sums(d, db)
    # dx first: it must see the weights before any update.
    gemm(d, w, dx, False, True)
    gemm(x, d, dw, True, False)
    if fuse_sgd:
        sgd(w.reshape(-1), dw.reshape(-1), lr, l1w, l2w)
        if db.shape[0] > 0:
            sgd(bias, db, lr, l1b, l2b)


def empty_bias(dtype):
    """The (0,) array that stands for "no bias" in these kernels."""
    return np.empty(0, dtype=dtype)
