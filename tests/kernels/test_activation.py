"""The scalar activation kernels: float32 tanh and sigmoid against float64 truth."""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest

from fastdense.kernels import activation as act


@numba.njit(error_model="numpy")
def _tanh_all(z, out):
    for j in range(z.shape[0]):
        out[j] = act.tanh(z[j])


def _ulps(y, truth):
    """Distances of the float32 results ``y`` from the float64 ``truth``, in float32 ulps at
    the truth."""
    spacing = np.spacing(np.abs(truth).astype(np.float32)).astype(np.float64)
    return np.abs(y.astype(np.float64) - truth) / spacing


def _float32_inputs():
    rng = np.random.default_rng(0)
    edges = np.array([act.TANH_SMALL, act.TANH_ONE, 8.66, 1e-4, 2.0 ** -12], np.float32)
    near = np.concatenate([np.nextafter(edges, np.float32(0)), edges,
                           np.nextafter(edges, np.float32(np.inf))])
    z = np.concatenate([rng.standard_normal(200_000).astype(np.float32) * 3,
                        np.linspace(-12, 12, 200_001, dtype=np.float32),
                        rng.standard_normal(20_000).astype(np.float32) * 1e-3, near, -near])
    return z


def test_float32_tanh_is_correctly_rounded_within_half_an_ulp():
    """At most 0.5000002 ulp was measured over 4 million values; 0.5 + 1e-5 leaves room only
    for the approximations' own error (a formula one term short fails)."""
    z = _float32_inputs()
    y = np.empty_like(z)
    _tanh_all(z, y)
    ulps = _ulps(y, np.tanh(z.astype(np.float64)))
    assert ulps.max() <= 0.5 + 1e-5, (ulps.max(), z[ulps.argmax()])


def test_float32_tanh_special_values():
    z = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1e-30, 20.0, -20.0],
                 np.float32)
    y = np.empty_like(z)
    _tanh_all(z, y)
    np.testing.assert_array_equal(y[:4], [0.0, -0.0, 1.0, -1.0])
    assert np.signbit(y[1]) and not np.signbit(y[0])
    assert np.isnan(y[4])
    np.testing.assert_array_equal(y[5:], [*z[5:8].tolist(), 1.0, -1.0])


@pytest.mark.parametrize("z", [0.0, -0.0, 1e-300, 0.3, -0.7, 5.0, 40.0, np.inf, -np.inf])
def test_float64_tanh_is_libm(z):
    y = np.empty(1)
    _tanh_all(np.array([z]), y)
    assert y[0] == math.tanh(z) and np.signbit(y[0]) == np.signbit(math.tanh(z))


@numba.njit(error_model="numpy")
def _sigmoid_all(z, out):
    for j in range(z.shape[0]):
        out[j] = act.sigmoid(z[j])


def _sigmoid_truth(z):
    e = np.exp(-np.abs(z.astype(np.float64)))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def test_float32_sigmoid_is_correctly_rounded():
    """Within half an ulp wherever the result is a normal float32 (0.49999988 measured over 3
    million values), and rounded as float64 -> float32 rounds where it is subnormal or 0."""
    rng = np.random.default_rng(1)
    far = np.float32(act.SIGMOID_FAR)
    z = np.concatenate([rng.standard_normal(200_000).astype(np.float32) * 5,
                        np.linspace(-120, 120, 400_001, dtype=np.float32),
                        [far, -far, np.nextafter(-far, np.float32(0)), -87.3, -103.9]])
    z = z.astype(np.float32)
    y = np.empty_like(z)
    _sigmoid_all(z, y)
    truth = _sigmoid_truth(z)
    normal = truth >= np.finfo(np.float32).tiny
    ulps = _ulps(y[normal], truth[normal])
    assert ulps.max() <= 0.5 + 1e-5, (ulps.max(), z[normal][ulps.argmax()])
    np.testing.assert_array_equal(y[~normal], truth[~normal].astype(np.float32))


def test_float32_sigmoid_special_values():
    z = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 200.0, -200.0], np.float32)
    y = np.empty_like(z)
    _sigmoid_all(z, y)
    np.testing.assert_array_equal(y[[0, 1, 2, 3, 5, 6]], [0.5, 0.5, 1.0, 0.0, 1.0, 0.0])
    assert np.isnan(y[4])


@numba.njit
def _sigmoid_f64_of_f32(z):
    return act.sigmoid(z)


def test_float32_sigmoid_is_exactly_0_and_1_far_out():
    """Exactly 0 and 1 (in float64, before the float32 rounding) past SIGMOID_FAR and at the
    infinities, as the C library's formula gives, so that products with them behave alike."""
    far = act.SIGMOID_FAR
    for z, want in ((-np.inf, 0.0), (np.inf, 1.0), (-far - 1, 0.0), (far + 1, 1.0)):
        assert _sigmoid_f64_of_f32(np.float32(z)) == want


@pytest.mark.parametrize("z", [0.0, 1e-300, 0.3, -0.7, 5.0, -40.0, 800.0, -800.0])
def test_float64_sigmoid_is_the_two_branch_formula(z):
    y = np.empty(1)
    _sigmoid_all(np.array([z]), y)
    want = 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
    assert y[0] == want
