"""Allocation of arrays whose data start on a cache line (see :mod:`fastdense._aligned`)."""

import numpy as np
from numba.extending import register_jitable

from fastdense.kernels._codegen import dated_njit

#: Bytes of a cache line on the CPUs the kernels target.
CACHE_LINE = 64


@register_jitable
def _empty_2d_at(m, n, like, phase):
    """An uninitialized C-contiguous ``(m, n)`` array of ``like``'s dtype whose data start
    ``phase`` bytes (a whole number of elements) past a cache line: a view into a slightly
    longer allocation."""
    raw = np.empty(m * n + CACHE_LINE // like.itemsize, like.dtype)
    start = ((phase - raw.ctypes.data % CACHE_LINE) % CACHE_LINE) // like.itemsize
    return raw[start:start + m * n].reshape((m, n))


@dated_njit()
def aligned_empty_2d(m, n, like):
    """An uninitialized C-contiguous ``(m, n)`` array of ``like``'s dtype whose data start on a
    cache line.  Jitted because Python reads an array's address slowly (``ndarray.ctypes``
    costs more than the allocation itself)."""
    return _empty_2d_at(m, n, like, 0)


@dated_njit()
def empty_2d_in_phase(m, n, b):
    """An uninitialized C-contiguous ``(m, n)`` array of ``b``'s dtype whose data start at the
    same place within a cache line as ``b``'s (on a line if ``b``'s start is not a whole number
    of elements past one).  A product that reads ``b`` in place then has both ``b``'s panels
    and its output's tiles on lines (see ``_b_panels`` in :mod:`fastdense.kernels.gemm`)."""
    phase = b.ctypes.data % CACHE_LINE
    return _empty_2d_at(m, n, b, phase if phase % b.itemsize == 0 else 0)
