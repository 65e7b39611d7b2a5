"""Polynomial coefficients of the float64 tanh near 0.

Usage: ``python tools/fit_tanh.py [degree]`` (default 11; needs ``mpmath``).

``fastdense.kernels.activation`` evaluates ``tanh(x)`` for ``|x| < TANH_SMALL_FLOAT64`` as
``x (1 + x^2 P(x^2))``: ``P(y) = (tanh(sqrt y) - sqrt y) / y^(3/2)`` is analytic on ``y`` in
``[0, TANH_SMALL_FLOAT64^2]`` (its nearest singularity is at ``y = -pi^2 / 4``), so a Chebyshev
series in ``y`` (mapped onto ``u`` in ``[-1, 1]``) converges geometrically.  This
interpolates ``P`` at the Chebyshev nodes and converts the series to powers of ``u``
(``tools/chebyshev.py``, 50-digit arithmetic), prints the coefficients to paste into
``_TANH_POLY``, and the largest relative error of ``P`` they give on a grid (the coefficients
rounded to float64, the rest exact).
"""

from __future__ import annotations

import sys

import mpmath as mp
import numpy as np
from chebyshev import power_coefficients, print_coefficients

TANH_SMALL_FLOAT64 = 0.55  # as in fastdense.kernels.activation


def _p(y: mp.mpf) -> mp.mpf:
    if y == 0:
        return mp.mpf(-1) / 3
    x = mp.sqrt(y)
    return (mp.tanh(x) - x) / x ** 3


def fit(degree: int) -> list[mp.mpf]:
    """Coefficients of ``P`` in powers of ``u = 2 y / TANH_SMALL_FLOAT64^2 - 1``, lowest
    first."""
    top = mp.mpf(TANH_SMALL_FLOAT64) ** 2
    return power_coefficients(lambda u: _p((u + 1) * top / 2), degree)


def worst_relative_error(coefficients: list[float], points: int = 2001) -> mp.mpf:
    top = mp.mpf(TANH_SMALL_FLOAT64) ** 2
    worst = mp.mpf(0)
    for x in np.linspace(1e-6, TANH_SMALL_FLOAT64, points):
        y = mp.mpf(float(x)) ** 2
        u = 2 * y / top - 1
        approx = mp.fsum(mp.mpf(c) * u ** i for i, c in enumerate(coefficients))
        worst = max(worst, abs(approx / _p(y) - 1))
    return worst


def main() -> None:
    mp.mp.dps = 50
    degree = int(sys.argv[1]) if len(sys.argv) > 1 else 11
    coefficients = [float(c) for c in fit(degree)]
    print_coefficients("_TANH_POLY", coefficients)
    print(f"# largest relative error of P: {mp.nstr(worst_relative_error(coefficients), 3)}")


if __name__ == "__main__":
    main()
