"""Shared helpers for the kernel tests: tolerances derived from the reduction length."""

from __future__ import annotations

import numpy as np
import pytest

from fastdense.kernels import activation_passes


def product_tolerance(a: np.ndarray, b: np.ndarray, dtype) -> np.ndarray:
    """Elementwise bound for ``op(a) @ op(b)`` computed in ``dtype``.

    Classic forward error bound of a K-term dot product, ``|fl(s) - s| <= K eps sum |a_p b_p|``,
    with a factor 2 for the final rounding of stores and bias additions.
    """
    k = a.shape[1]
    eps = np.finfo(dtype).eps
    mags = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64))
    return 2.0 * (k + 2) * eps * mags + np.finfo(dtype).tiny


@pytest.fixture(params=[np.float32, np.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param


@pytest.fixture(autouse=True, scope="session")
def _activation_passes():
    """The kernels here are called directly, with every activation: install all their passes
    (layers do it for their own activation)."""
    for code in activation_passes.CODES_WITH_PASSES:
        for dtype in (np.float32, np.float64):
            activation_passes.install(code, dtype)
