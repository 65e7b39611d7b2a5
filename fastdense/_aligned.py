"""Arrays whose data start on a cache line.

NumPy aligns an array's data to 16 bytes.  A weight matrix read in place by the kernels (a
batch of up to 32 rows, or one row) is then read in 64-byte panel rows that each straddle two
cache lines: twice the lines in the caches and a split load a step.  Measured on a Zen 3
(two threads, float32 forward, weights 64-byte aligned against 16, 32 and 48 bytes past):
32 x 784->128 47.6 against 63.4-69.0 us, 32 x 784->512 190 against 221-254 us, batch 1 784->128
8.6 against 8.7-10.8 us; float64 0-14% (no product reads 4096-byte-aligned weights faster than
64-byte-aligned ones).  The layer therefore keeps its weights and workspaces here, as PyTorch's
CPU allocator does (64 bytes).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fastdense.kernels.memory import CACHE_LINE, aligned_empty_2d

#: From this many bytes an output (:func:`output`) is allocated on a cache line: there the
#: kernels' stores gain more than the allocation costs (0.8 µs more than ``np.empty``).
OUTPUT_BYTES = 16 << 10


def empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialized C-contiguous array of ``shape`` whose data start on a cache line."""
    dt = np.dtype(dtype)
    nbytes = math.prod(shape) * dt.itemsize
    raw = np.empty(nbytes + CACHE_LINE, np.uint8)
    start = -raw.ctypes.data % CACHE_LINE
    return raw[start:start + nbytes].view(dt).reshape(shape)


def copy(values: Any, dtype: Any) -> np.ndarray:
    """A C-contiguous copy of ``values`` as ``dtype`` whose data start on a cache line."""
    values = np.asarray(values)
    out = empty(values.shape, dtype)
    out[...] = values
    return out


def aligns_output(shape: tuple[int, int], itemsize: int) -> bool:
    """Whether :func:`output` puts an output of ``shape`` on a cache line."""
    return shape[0] * shape[1] * itemsize >= OUTPUT_BYTES


def output(shape: tuple[int, int], like: np.ndarray) -> np.ndarray:
    """A new 2-D array for a kernel's output, of ``like``'s dtype: on a cache line from
    OUTPUT_BYTES (allocated by a kernel: Python reads an address slower than it allocates),
    else by ``np.empty``."""
    if aligns_output(shape, like.itemsize):
        return aligned_empty_2d(shape[0], shape[1], like)
    return np.empty(shape, like.dtype)
