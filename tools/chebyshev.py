"""Chebyshev interpolation in high precision, for the fitting scripts beside it.

``power_coefficients(f, degree)`` interpolates ``f`` on ``[-1, 1]`` at the Chebyshev nodes and
converts the series to powers of ``u``, both in mpmath's working precision (set by the caller),
so that the only rounding left is that of the coefficients to float64.
``print_coefficients`` prints them as the Python tuple the kernels hold.
"""

from __future__ import annotations

from collections.abc import Callable

import mpmath as mp


def power_coefficients(f: Callable[[mp.mpf], mp.mpf], degree: int) -> list[mp.mpf]:
    """Coefficients of the degree-``degree`` interpolant of ``f`` in powers of ``u``, lowest
    first."""
    count = degree + 1
    nodes = [mp.cos(mp.pi * (k + mp.mpf(1) / 2) / count) for k in range(count)]
    values = [f(u) for u in nodes]
    series = [2 * mp.fsum(v * mp.chebyt(j, u) for v, u in zip(values, nodes, strict=True))
              / count for j in range(count)]
    series[0] /= 2
    # T_j in powers of u by T_j = 2 u T_(j-1) - T_(j-2).
    chebyshev = [[mp.mpf(1)], [mp.mpf(0), mp.mpf(1)]]
    for j in range(2, count):
        t = [mp.mpf(0)] * (j + 1)
        for i, c in enumerate(chebyshev[j - 1]):
            t[i + 1] += 2 * c
        for i, c in enumerate(chebyshev[j - 2]):
            t[i] -= c
        chebyshev.append(t)
    powers = [mp.mpf(0)] * count
    for j in range(count):
        for i, c in enumerate(chebyshev[j]):
            powers[i] += series[j] * c
    return powers


def print_coefficients(name: str, coefficients: list) -> None:
    """Print ``name = (...)`` with each coefficient as the float64 it rounds to."""
    print(f"{name} = (")
    for c in coefficients:
        print(f"    {float(c)!r},")
    print(")")
