"""Polynomial coefficients of the GELU's complementary error function.

Usage: ``python tools/fit_erfc.py [degree]`` (float32: default 16) or ``python
tools/fit_erfc.py --float64 [degree]`` (default 26); needs ``mpmath``.

``fastdense.kernels.activation`` evaluates ``erfc(x)`` for ``0 <= x <= ERFC_XMAX`` as
``t * exp(P(t) - x^2)`` with ``t = 1 / (1 + x / 2)``: ``P`` (the logarithm of ``erfc(x) e^(x^2)
/ t``) is analytic on ``t`` in ``[1 / (1 + ERFC_XMAX / 2), 1]``, so a Chebyshev series in
``t`` (mapped onto ``u`` in ``[-1, 1]``) converges geometrically.  This interpolates ``P`` at
the Chebyshev nodes in 40-digit arithmetic, converts the series to powers of ``u`` (whose
coefficients stay below 1 here: no cancellation), prints them to paste into ``_ERFC_POLY``,
and the largest relative error of ``erfc`` they give on a grid of x (the polynomial evaluated
in float64, the rest exactly).

``--float64`` fits the same ``P`` on ``[0, ERFC_XMAX_FLOAT64]``, where float64's erfc reaches
0, for ``_ERFC_POLY_FLOAT64``: in 60-digit arithmetic throughout (``tools/chebyshev.py``),
since float64 needs ``P`` to about 1e-16, and prints the largest absolute error of ``P`` (the
coefficients rounded to float64, the rest exact), which is the relative error it gives erfc.
"""

from __future__ import annotations

import sys

import mpmath as mp
import numpy as np
from chebyshev import power_coefficients, print_coefficients

ERFC_XMAX = 10.4  # as in fastdense.kernels.activation
T_MIN = 1.0 / (1.0 + ERFC_XMAX / 2.0)
ERFC_XMAX_FLOAT64 = 27.3  # likewise


def _log_scaled_erfc(t: mp.mpf) -> mp.mpf:
    x = 2 * (1 / t - 1)
    return mp.log(mp.erfc(x) / t) + x * x


def fit(degree: int) -> np.ndarray:
    """Coefficients of ``P`` in powers of ``u = 2 (t - T_MIN) / (1 - T_MIN) - 1``, lowest
    first."""
    nodes = np.cos(np.pi * (np.arange(degree + 1) + 0.5) / (degree + 1))
    t = T_MIN + (nodes + 1.0) * (1.0 - T_MIN) / 2.0
    values = np.array([float(_log_scaled_erfc(mp.mpf(float(ti)))) for ti in t])
    return np.polynomial.chebyshev.cheb2poly(np.polynomial.chebyshev.chebfit(nodes, values,
                                                                             degree))


def worst_relative_error(coefficients: np.ndarray, points: int = 3001) -> float:
    worst = 0.0
    for x in np.linspace(0.0, ERFC_XMAX, points):
        t = 1.0 / (1.0 + x / 2.0)
        u = 2.0 * (t - T_MIN) / (1.0 - T_MIN) - 1.0
        p = np.polynomial.polynomial.polyval(u, coefficients)
        approx = mp.mpf(t) * mp.exp(mp.mpf(p) - mp.mpf(x) ** 2)
        worst = max(worst, float(abs(approx / mp.erfc(x) - 1)))
    return worst


def fit_float64(degree: int) -> list[float]:
    """Coefficients of ``P`` on ``[0, ERFC_XMAX_FLOAT64]`` in powers of ``u``, lowest first."""
    t_min = 1 / (1 + mp.mpf(ERFC_XMAX_FLOAT64) / 2)
    return [float(c) for c in power_coefficients(
        lambda u: _log_scaled_erfc(t_min + (u + 1) * (1 - t_min) / 2), degree)]


def worst_absolute_error_float64(coefficients: list[float], points: int = 1501) -> mp.mpf:
    t_min = 1 / (1 + mp.mpf(ERFC_XMAX_FLOAT64) / 2)
    worst = mp.mpf(0)
    for x in np.linspace(0.0, ERFC_XMAX_FLOAT64, points):
        t = 1 / (1 + mp.mpf(float(x)) / 2)
        u = 2 * (t - t_min) / (1 - t_min) - 1
        approx = mp.fsum(mp.mpf(c) * u ** i for i, c in enumerate(coefficients))
        worst = max(worst, abs(approx - _log_scaled_erfc(t)))
    return worst


def main_float64(degree: int) -> None:
    mp.mp.dps = 60
    coefficients = fit_float64(degree)
    print_coefficients("_ERFC_POLY_FLOAT64", coefficients)
    worst = worst_absolute_error_float64(coefficients)
    print(f"# largest absolute error of P: {mp.nstr(worst, 3)}")


def main() -> None:
    if sys.argv[1:2] == ["--float64"]:
        main_float64(int(sys.argv[2]) if len(sys.argv) > 2 else 26)
        return
    mp.mp.dps = 40
    degree = int(sys.argv[1]) if len(sys.argv) > 1 else 16
    coefficients = fit(degree)
    print_coefficients("_ERFC_POLY", coefficients)
    print(f"# largest relative error of erfc: {worst_relative_error(coefficients):.2e}")


if __name__ == "__main__":
    main()
