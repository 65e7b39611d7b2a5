"""Arrays whose data start on a cache line.

NumPy aligns an array's data to 16 bytes.  A weight matrix read in place by the kernels (a
batch of up to 32 rows, or one row) is then read in 64-byte panel rows that each straddle two
cache lines: twice the lines in the caches and a split load a step.  Measured on a Zen 3
(two threads, float32 forward, weights 64-byte aligned against 16, 32 and 48 bytes past):
32 x 784->128 47.6 against 63.4-69.0 us, 32 x 784->512 190 against 221-254 us, batch 1 784->128
8.6 against 8.7-10.8 us; float64 0-14% (no product reads 4096-byte-aligned weights faster than
64-byte-aligned ones).  The layer therefore keeps its weights and workspaces here, as PyTorch's
CPU allocator does (64 bytes).

A caller's B (``matmul``, ``linear``) lies where NumPy put it; there the result of a product of
few rows is placed at the same offset within its line as B (:func:`product_output`), so that
the kernel reads B's panels from its line boundaries and stores the result's tiles on lines.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fastdense.kernels.gemm import DIRECT_SKINNY_ROWS, ROWS_MAX, SERIAL_WORK
from fastdense.kernels.memory import aligned_empty_2d, empty_2d_in_phase

#: From this many bytes an output (:func:`output`) is allocated on a cache line: there the
#: kernels' stores gain more than the allocation costs (0.8 µs more than ``np.empty``).
OUTPUT_BYTES = 16 << 10

# An empty array of each float dtype: how the jitted allocator is told the dtype.
_LIKE = {dt: np.empty(0, dt) for dt in (np.dtype(np.float32), np.dtype(np.float64))}


def like(dtype: Any) -> np.ndarray:
    """The empty array of ``dtype`` that :func:`aligned_empty_2d` takes for its dtype."""
    dt = np.dtype(dtype)
    found = _LIKE.get(dt)
    return np.empty(0, dt) if found is None else found


def empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialized C-contiguous array of ``shape`` whose data start on a cache line."""
    return aligned_empty_2d(1, math.prod(shape), like(dtype))[0].reshape(shape)


def copy(values: Any, dtype: Any) -> np.ndarray:
    """A C-contiguous copy of ``values`` as ``dtype`` whose data start on a cache line."""
    values = np.asarray(values)
    out = empty(values.shape, dtype)
    out[...] = values
    return out


def aligns_output(shape: tuple[int, int], itemsize: int) -> bool:
    """Whether :func:`output` puts an output of ``shape`` on a cache line."""
    return shape[0] * shape[1] * itemsize >= OUTPUT_BYTES


def output(shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    """A new 2-D array of ``dtype`` for a kernel's output: on a cache line from OUTPUT_BYTES,
    else by ``np.empty``."""
    if aligns_output(shape, dtype.itemsize):
        return aligned_empty_2d(shape[0], shape[1], like(dtype))
    return np.empty(shape, dtype)


def product_output(m: int, k: int, b: np.ndarray) -> np.ndarray:
    """A new ``(m, n)`` array for the result of an ``(m x k) @ b`` product (``b`` of shape
    ``(k, n)``, C-contiguous): in phase with ``b`` where the product reads ``b`` in place
    (:func:`reads_b_in_place`), else as :func:`output`.

    In phase, at the same place within a cache line as ``b``, both ``b``'s panels and the
    output's tiles lie on lines (see ``_b_panels`` in :mod:`fastdense.kernels.gemm`).  With
    ``b`` 16 bytes past a line, as NumPy often puts it, two threads: float32 32x784x512
    217 -> 182 us, 32x784x128 59 -> 52 us; float64 16x784x128 67 -> 54 us, 8x256x256
    30 -> 23 us (against 182, 46, 50 and 22 us with both on lines).
    """
    n = b.shape[1]
    if reads_b_in_place(m, n, k):
        return empty_2d_in_phase(m, n, b)
    return output((m, n), b.dtype)


def reads_b_in_place(m: int, n: int, k: int) -> bool:
    """Whether an ``(m x k) @ (k x n)`` product is one whose output :func:`product_output`
    places in phase with B: few enough rows for B to be read in place, more than the one or two of a
    vector-matrix product (which streams B whatever its place), and enough work that the
    allocation (about a microsecond) is small beside what it saves."""
    return ROWS_MAX < m <= DIRECT_SKINNY_ROWS and m * n * k >= SERIAL_WORK
