"""Functional forms over the layer's kernels: ``matmul`` and ``linear``."""

from __future__ import annotations

import threading
from typing import Any

import numba
import numpy as np

from fastdense import _aligned, activations
from fastdense.kernels import dense as _dense
from fastdense.kernels import narrow as _narrow
from fastdense.kernels.gemm import ROWS_MAX, gemm, gemm_rows, workspace_size

# Kernel workspaces (packing buffers) kept between calls, one per dtype and Python thread,
# grown to the largest size asked for: repeated calls then allocate only their result.
_workspaces = threading.local()


def _workspace(size: int, dtype: np.dtype) -> np.ndarray:
    cache = _workspaces.__dict__.setdefault("by_dtype", {})
    buf = cache.get(dtype)
    if buf is None or buf.shape[0] < size:
        buf = _aligned.empty((size,), dtype)
        cache[dtype] = buf
    return buf


def _product_workspace(m: int, n: int, k: int, dtype: np.dtype) -> tuple[np.ndarray, bool]:
    """:func:`_workspace` for an ``(m x k) @ (k x n)`` product, and whether the product runs
    by row tiles (``kernels.narrow.matmul_takes``).

    The last shape asked for is remembered with both, so a loop of products of one shape
    skips the size computation, the choice and the lookups (together ~0.6 µs, most of what a
    batch-1 product costs beyond its kernel).
    """
    key = (m, n, k, dtype)
    last = getattr(_workspaces, "last_product", None)
    if last is not None and last[0] == key:
        return last[1], last[2]
    size = workspace_size(m, n, k, dtype)
    narrow = _narrow.matmul_takes(m, n, k, dtype)
    if narrow:
        size = max(size, _narrow.workspace_len(dtype))
    buf = _workspace(size, dtype)
    _workspaces.last_product = (key, buf, narrow)
    return buf, narrow


def _real_2d(a: Any, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be a real array, got dtype {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {a.shape}")
    return a


def _common_dtype(*arrays: np.ndarray) -> np.dtype:
    dt = np.result_type(*arrays)
    return np.dtype(np.float32) if dt == np.float32 else np.dtype(np.float64)


def matmul(a: Any, b: Any) -> np.ndarray:
    """``a @ b`` for 2-D real arrays, computed by fastdense's GEMM.

    float32 operands give float32; anything else is computed in float64 (NumPy's promotion,
    with integers promoted to float64).

    Raises
    ------
    ValueError
        If the arrays are not 2-D or their inner dimensions differ.
    """
    if not (type(a) is np.ndarray and type(b) is np.ndarray and a.dtype is b.dtype
            and (a.dtype is _F32 or a.dtype is _F64) and a.ndim == 2 and b.ndim == 2
            and a.shape[1] == b.shape[0] and a.flags.c_contiguous and b.flags.c_contiguous):
        a, b = _as_operands(a, b)
    m, k = a.shape
    n = b.shape[1]
    dt = a.dtype
    ws, narrow = _product_workspace(m, n, k, dt)
    if 0 < m <= ROWS_MAX and n > 0 and k > 0:  # gemm.uses_rows, inlined (a call costs 0.2 µs)
        # (What _aligned.product_output gives so few rows, without asking it: 0.17 µs of a
        # batch-1 product's 5.)
        out = _aligned.output((m, n), dt)
        gemm_rows(a, b, out, ws)
        return out
    out = _aligned.product_output(m, k, b)
    if narrow:
        _narrow.narrow_matmul(a, b, out, ws)
    else:
        gemm(a, b, out, False, False, ws)
    return out


# The operands the kernels take as they are: checking for them first spares the conversions
# below (~2 µs, as much as a batch-1 product).
_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)


def _as_operands(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    """``matmul``'s operands checked and converted: C-contiguous, one float dtype."""
    a, b = _real_2d(a, "a"), _real_2d(b, "b")
    if a.shape[1] != b.shape[0]:
        raise ValueError(
            f"matmul: a has {a.shape[1]} columns but b has {b.shape[0]} rows "
            f"(shapes {a.shape} and {b.shape})"
        )
    dt = _common_dtype(a, b)
    return np.ascontiguousarray(a, dtype=dt), np.ascontiguousarray(b, dtype=dt)


def linear(x: Any, kernel: Any, bias: Any = None, activation: Any = None) -> np.ndarray:
    """``activation(x @ kernel + bias)`` along the last axis of ``x``.

    Parameters
    ----------
    x : array_like, shape (..., in)
    kernel : array_like, shape (in, units)
    bias : array_like, shape (units,), optional
    activation : str or None
        A built-in activation name (see :mod:`fastdense.activations`).
    """
    x = np.asarray(x)
    kernel = _real_2d(kernel, "kernel")
    if x.ndim == 0 or x.dtype.kind not in "fiub":
        raise ValueError(f"x must be a real array with a feature axis, got {x.dtype} {x.shape}")
    if x.shape[-1] != kernel.shape[0]:
        raise ValueError(
            f"x has {x.shape[-1]} features but kernel expects {kernel.shape[0]} "
            f"(shapes {x.shape} and {kernel.shape})"
        )
    units = kernel.shape[1]
    act = activations.get(activation)
    if act.is_custom:
        raise TypeError("linear() takes built-in activation names only")
    dt = _common_dtype(x, kernel) if bias is None else _common_dtype(x, kernel, np.asarray(bias))
    if bias is None:
        b = _dense.empty_bias(dt)
    else:
        b = np.ascontiguousarray(bias, dtype=dt)
        if b.shape != (units,):
            raise ValueError(f"bias must have shape ({units},), got {b.shape}")
    x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=dt)
    w = np.ascontiguousarray(kernel, dtype=dt)
    y = _aligned.product_output(x2.shape[0], w.shape[0], w)
    m, n_in = x2.shape
    rows, narrow = _dense.product_paths(m, n_in, units, dt)
    dots = _dense.uses_dots(units, dt)
    if dots:
        size = _dense.dots_workspace_size(m, n_in, units, numba.config.NUMBA_NUM_THREADS)
    elif narrow:
        size = _dense.narrow_workspace_size(m, n_in, units, dt)
    else:
        size = _dense.workspace_size(n_in, units, dt)
    ws = _workspace(size, dt)
    act.prepare(x2.dtype)
    forward = _dense.forward_for(act.code, rows, narrow, units if dots else 0)
    if rows and not dots:  # no backward pass follows: the threads only from large weights
        forward(x2, w, b, act.code, y, y, ws, _dense.rows_threads_from(False))
    else:
        forward(x2, w, b, act.code, y, y, ws)
    return y.reshape((*x.shape[:-1], units))
