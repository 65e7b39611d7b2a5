"""Thread control for fastdense's kernels (Numba's thread pool)."""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Iterator

import numba


def get_num_threads() -> int:
    """The number of threads fastdense's parallel kernels use now."""
    return numba.get_num_threads()


def set_num_threads(n: int) -> None:
    """Use ``n`` threads (1 to ``numba.config.NUMBA_NUM_THREADS``) in fastdense's kernels.

    Results are bitwise identical for every ``n``: work is split over output tiles and no
    reduction order depends on it.
    """
    limit = numba.config.NUMBA_NUM_THREADS
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"number of threads must be an int, got {type(n).__name__}")
    if not 1 <= n <= limit:
        raise ValueError(f"number of threads must be between 1 and {limit}, got {n}")
    numba.set_num_threads(int(n))


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Context manager: use ``n`` threads inside the ``with`` block, then restore."""
    previous = get_num_threads()
    set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(previous)
