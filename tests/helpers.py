"""Builders shared by the tests: matched fastdense / NumPy-reference pairs, arrays placed
within cache lines."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
from numba import njit

from fastdense import Dense
from fastdense.kernels import activation as kact
from fastdense.kernels.memory import CACHE_LINE, aligned_empty_2d
from fastdense.reference import NumpyDense
from tests.bounds import gamma, matmul_bound, unit_roundoff

ACTIVATIONS = ["linear", "relu", "sigmoid", "tanh", "softmax", "gelu", "leaky_relu", "elu",
               "selu", "swish", "softplus"]

# Upper bounds of |act'| (Lipschitz constants) and of |act''| on the reals, used to carry an
# error in z through the activation and its derivative.
LIPSCHITZ = {"linear": 1.0, "relu": 1.0, "sigmoid": 0.25, "tanh": 1.0, "softmax": 2.0,
             "gelu": 1.13, "leaky_relu": 1.0, "elu": 1.0, "selu": 1.76, "swish": 1.1,
             "softplus": 1.0}


def placed(values, offset):
    """A copy of the 2-D ``values`` whose data start ``offset`` bytes past a cache line."""
    raw = aligned_empty_2d(1, values.nbytes + CACHE_LINE, np.empty(0, np.uint8))[0]
    out = raw[offset:offset + values.nbytes].view(values.dtype).reshape(values.shape)
    out[...] = values
    return out


class Plain:
    """A foreign optimizer: only a ``learning_rate`` attribute."""

    def __init__(self, learning_rate: float) -> None:
        self.learning_rate = learning_rate


def pair(units, activation, dtype, in_dim, use_bias=True, seed=0, kreg=None, breg=None):
    """A built fastdense layer and a float64 reference layer with the same weights."""
    layer = Dense(units, activation=activation, use_bias=use_bias, dtype=dtype, seed=seed,
                  kernel_regularizer=kreg, bias_regularizer=breg,
                  bias_initializer="random_normal")
    layer.build(in_dim)
    ref = NumpyDense(units, activation, use_bias=use_bias, dtype=np.float64,
                     kernel_regularizer=kreg, bias_regularizer=breg)
    ref.set_weights([w.astype(np.float64) for w in layer.get_weights()])
    return layer, ref


def forward_bound(x, w, b, y_ref, z_ref, activation, dtype):
    """Bound on |y - y_ref| for a ``dtype`` layer against float64 from the same inputs.

    The float64 reference has rounding errors of its own, so the bound is the layer's bound in
    ``dtype`` plus the same bound in float64 (negligible beside float32's).

    The pre-activation carries the inner-product bound plus the bias addition; the activation
    multiplies it by its Lipschitz constant (softmax by 2 times the row's worst z error) and
    adds a few roundings of its own evaluation, relative to |y| and to |z| (an argument
    perturbed by u|z| moves the output by up to L u |z|).
    """
    if np.dtype(dtype) != np.float64:
        return _forward_bound(x, w, b, y_ref, z_ref, activation, dtype) + _forward_bound(
            x, w, b, y_ref, z_ref, activation, np.float64)
    return 2 * _forward_bound(x, w, b, y_ref, z_ref, activation, np.float64)


def _forward_bound(x, w, b, y_ref, z_ref, activation, dtype):
    x2 = x.reshape(-1, x.shape[-1]).astype(np.float64)
    out_shape = y_ref.shape
    y_ref = y_ref.reshape(-1, w.shape[1])
    z_ref = z_ref.reshape(-1, w.shape[1])
    z_err = matmul_bound(x2, w, dtype, extra_terms=1)
    if b is not None:
        z_err = z_err + gamma(2, dtype) * np.abs(b)
    lip = LIPSCHITZ[activation]
    if activation == "softmax":
        z_err = np.broadcast_to(z_err.max(axis=-1, keepdims=True), z_err.shape)
        z_span = np.abs(z_ref - z_ref.max(axis=-1, keepdims=True))
        eval_err = 8 * unit_roundoff(dtype) * (1 + z_span) * np.abs(y_ref)
    else:
        eval_err = 8 * unit_roundoff(dtype) * (np.abs(y_ref) + lip * np.abs(z_ref))
    return (lip * z_err + eval_err).reshape(out_shape)


def state_of(layer):
    """The forward state a layer keeps for backprop, as float64 ``(x, z, y)``."""
    x2, z, y, shape = layer._cache
    return x2.astype(np.float64), z.astype(np.float64), y.astype(np.float64), shape


def backprop_bounds(x, z, y, g, w, activation, dtype):
    """Bounds on the errors of ``(dz, dW, db, dx)`` computed in ``dtype`` from the given state.

    ``dz = g * act'(z)`` is evaluated in float64 and rounded once (softmax adds the rounded
    products of its row reduction); each product then carries its reduction bound plus the
    dz error times the other operand's magnitude.
    """
    from fastdense.reference import act_backward

    # The float64 reference rounds too: a float64 layer may differ from it by both bounds.
    u = unit_roundoff(dtype) + unit_roundoff(np.float64)
    dtype = np.float64 if np.dtype(dtype) == np.float64 else dtype
    dz = act_backward(activation, z, y, g)
    # act' is a sum of terms that may cancel (gelu, swish for z < 0): its evaluation error is
    # relative to the sum of their magnitudes, not to the result.
    magnitude = np.abs(dz)
    if activation in ("gelu", "swish"):
        s = 1.0 / (1.0 + np.exp(-z))
        terms = (1.0 + np.abs(z) * np.exp(-0.5 * z * z)) if activation == "gelu" else (
            s + np.abs(z) * s * (1 - s))
        magnitude = magnitude + np.abs(g) * terms
    elif activation == "tanh":  # 1 - y*y cancels near saturation
        magnitude = magnitude + np.abs(g) * (1 + y * y)
    elif activation == "sigmoid":  # y (1 - y) likewise
        magnitude = magnitude + np.abs(g) * np.abs(y) * (1 + np.abs(y))
    dz_err = 8 * u * magnitude
    if activation == "softmax":
        n = y.shape[-1]
        row = np.abs(g * y).sum(axis=-1, keepdims=True)
        dz_err = dz_err + np.abs(y) * ((n + 2) * u * row + 2 * u * np.abs(g))
    twice = 2.0 if np.dtype(dtype) == np.float64 else 1.0
    dw_err = twice * matmul_bound(x.T, dz, dtype) + np.abs(x).T @ dz_err
    dx_err = twice * matmul_bound(dz, w.T, dtype) + dz_err @ np.abs(w).T
    db_err = (twice * gamma(x.shape[0] + 1, dtype) * np.abs(dz).sum(axis=0)
              + dz_err.sum(axis=0))
    return dz, dw_err, db_err, dx_err


def assert_same_bits(a, b):
    """Assert that the float arrays ``a`` and ``b`` hold the same bits (NaN payloads, signed
    zeros)."""
    view = np.uint32 if a.dtype == np.float32 else np.uint64
    np.testing.assert_array_equal(a.view(view), b.view(view))


# Not cached: Numba would date a cached copy by this file alone, and keep the formulas of
# ``act.derivative`` from before an edit of the package.
@njit
def generic_derivative(g, z, y, code, dz):
    """``dz = g * act'(z, y)`` element by element through the generic
    :func:`fastdense.kernels.activation.derivative` (the reference for the kernels' loops)."""
    for i in range(g.shape[0]):
        for j in range(g.shape[1]):
            dz[i, j] = g[i, j] * kact.derivative(code, z[i, j], y[i, j])


# The start of run_beside_a_guard_page's scripts: ``guarded(shape, dtype)`` places an array so
# that it ends where a page that cannot be read begins.
_GUARD_PAGE_PROLOGUE = """
import ctypes, mmap
import numpy as np
_page = mmap.PAGESIZE
_end = 64 * _page
_buf = mmap.mmap(-1, _end + _page)
_libc = ctypes.CDLL(None)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
assert _libc.mprotect(ctypes.addressof(ctypes.c_char.from_buffer(_buf)) + _end, _page, 0) == 0


def guarded(shape, dtype):
    count = int(np.prod(shape))
    return np.frombuffer(_buf, dtype, count, _end - count * np.dtype(dtype).itemsize).reshape(
        shape)
"""


def run_beside_a_guard_page(body: str) -> None:
    """Run ``body`` (Python source, dedented) in a new interpreter, after a prologue that
    defines ``guarded(shape, dtype)``: an array of at most 256 KiB that ends where an
    unreadable page begins, so that a read past its end kills the process.  The script must
    run to its end."""
    script = _GUARD_PAGE_PROLOGUE + textwrap.dedent(body) + '\nprint("ok")\n'
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"
