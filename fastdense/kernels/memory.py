"""Allocation of arrays whose data start on a cache line (see :mod:`fastdense._aligned`)."""

import numpy as np

from fastdense.kernels._codegen import dated_njit

#: Bytes of a cache line on the CPUs the kernels target.
CACHE_LINE = 64


@dated_njit()
def aligned_empty_2d(m, n, like):
    """An uninitialized C-contiguous ``(m, n)`` array of ``like``'s dtype whose data start on a
    cache line: a view into a slightly longer allocation.  Jitted because Python reads an
    array's address slowly (``ndarray.ctypes`` costs more than the allocation itself)."""
    pad = CACHE_LINE // like.itemsize
    raw = np.empty(m * n + pad, like.dtype)
    start = (-(raw.ctypes.data % CACHE_LINE) % CACHE_LINE) // like.itemsize
    return raw[start:start + m * n].reshape((m, n))
