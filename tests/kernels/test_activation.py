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


# GELU, ELU, SELU, softplus and the derivatives with an exponential: float32 by float64
# arithmetic (see activation.py), against float64 truth from SciPy.
try:
    from scipy import special
except ImportError:  # pragma: no cover - SciPy comes with scikit-learn in the dev extra
    special = None
needs_scipy = pytest.mark.skipif(special is None, reason="needs SciPy")


def _erfc_sum(z):
    """``1 + erf(z / sqrt 2)`` without cancellation."""
    x = z / np.sqrt(2.0)
    return np.where(x < 0, special.erfc(-x), 2.0 - special.erfc(x))


_TRUTH = {
    "gelu": lambda z: 0.5 * z * _erfc_sum(z),
    "elu": lambda z: np.where(z < 0, special.expm1(np.minimum(z, 0.0)), z),
    "selu": lambda z: act.SELU_SCALE * np.where(
        z < 0, act.SELU_ALPHA * special.expm1(np.minimum(z, 0.0)), z),
    "elu_derivative": lambda z: np.where(z > 0, 1.0, np.exp(np.minimum(z, 0.0))),
    "selu_derivative": lambda z: act.SELU_SCALE * np.where(
        z > 0, 1.0, act.SELU_ALPHA * np.exp(np.minimum(z, 0.0))),
    "softplus": lambda z: np.maximum(z, 0.0) + special.log1p(np.exp(-np.abs(z))),
}
# Bounds in float32 ulps: the half ulp of the one rounding, plus the approximation's own
# relative error in ulps (2^23 times it): erfc's fit 1.3e-12 (tools/fit_erfc.py) for GELU, the
# log1p series' 2e-12 for softplus, the exponential's 2 float64 ulps (5e-16) for the others.
_ULPS = {"gelu": 0.5 + 2e-5, "softplus": 0.5 + 2e-5}


def _all(name):
    fn = getattr(act, name)

    @numba.njit(error_model="numpy")
    def run(z, out):
        for j in range(z.shape[0]):
            out[j] = fn(z[j])

    return run


def _wide_float32_inputs():
    rng = np.random.default_rng(5)
    return np.concatenate([rng.standard_normal(200_000) * 4, np.linspace(-20, 20, 400_001),
                           rng.standard_normal(20_000) * 1e-3, np.linspace(-120, 120, 20_001),
                           [act.ERFC_XMAX * np.sqrt(2.0), -act.ERFC_XMAX * np.sqrt(2.0)],
                           ]).astype(np.float32)


@needs_scipy
@pytest.mark.parametrize("name", sorted(_TRUTH))
def test_float32_exponential_family_is_correctly_rounded(name):
    z = _wide_float32_inputs()
    y = np.empty(z.shape, np.float64)  # the float64 value before the float32 rounding
    _all(name)(z, y)
    truth = _TRUTH[name](z.astype(np.float64))
    normal = np.abs(truth) >= np.finfo(np.float32).tiny
    ulps = _ulps(y[normal].astype(np.float32), truth[normal])
    assert ulps.max() <= _ULPS.get(name, 0.5 + 1e-6), (ulps.max(), z[normal][ulps.argmax()])
    np.testing.assert_array_equal(y[~normal].astype(np.float32),
                                  truth[~normal].astype(np.float32))


@needs_scipy
def test_float32_gelu_derivative_is_within_its_bound():
    """Where the two terms of GELU' cancel (near -0.75) relative error means nothing: the bound
    is half an ulp of the result plus the terms' own errors."""
    z = _wide_float32_inputs()
    y = np.empty(z.shape, np.float64)
    _all("gelu_derivative")(z, y)
    zz = z.astype(np.float64)
    half = 0.5 * _erfc_sum(zz)
    gauss = zz * np.exp(-0.5 * zz * zz) / np.sqrt(2.0 * np.pi)
    truth = half + gauss
    got = y.astype(np.float32).astype(np.float64)
    spacing = np.spacing(np.abs(truth).astype(np.float32)).astype(np.float64)
    bound = 0.5 * spacing + 2e-12 * (np.abs(half) + np.abs(gauss))
    assert np.all(np.abs(got - truth) <= bound), np.max(np.abs(got - truth) / bound)


@pytest.mark.parametrize("name, want", [
    ("gelu", [0.0, -0.0, np.inf, np.nan, np.nan, 200.0, -0.0]),
    ("gelu_derivative", [0.5, 0.5, np.nan, np.nan, np.nan, 1.0, 0.0]),
    ("elu", [0.0, -0.0, np.inf, -1.0, np.nan, 200.0, -1.0]),
    ("elu_derivative", [1.0, 1.0, 1.0, 0.0, np.nan, 1.0, 0.0]),
    ("softplus", [np.log(2.0), np.log(2.0), np.inf, 0.0, np.nan, 200.0, 0.0]),
])
def test_float32_exponential_family_special_values(name, want):
    """As the C library's formulas give them: NaN stays NaN, GELU(-inf) and GELU'(+-inf) are
    NaN (inf * 0), the others' limits exact."""
    z = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 200.0, -200.0], np.float32)
    y = np.empty(z.shape, np.float64)
    _all(name)(z, y)
    np.testing.assert_array_equal(y.astype(np.float32), np.array(want, np.float32))
    assert np.signbit(y[1]) == np.signbit(np.float32(want[1]))


@pytest.mark.parametrize("name", ["gelu", "gelu_derivative", "elu", "selu", "elu_derivative",
                                  "selu_derivative", "softplus"])
def test_float64_exponential_family_is_libm(name):
    """Float64 keeps the C library's functions, in the formulas the kernels always had."""
    z = np.array([-800.0, -40.0, -3.0, -0.7, -1e-300, 0.0, 0.3, 5.0, 40.0, 800.0])
    y = np.empty_like(z)
    _all(name)(z, y)
    erf = np.vectorize(math.erf)
    with np.errstate(over="ignore"):  # the branches not taken
        want = _float64_formulas(z, erf)[name]
    np.testing.assert_allclose(y, want, rtol=2e-16, atol=0)


def _float64_formulas(z, erf):
    return {
        "gelu": 0.5 * z * (1.0 + erf(z * act._INV_SQRT2)),
        "gelu_derivative": (0.5 * (1.0 + erf(z * act._INV_SQRT2))
                            + z * act._INV_SQRT_2PI * np.exp(-0.5 * z * z)),
        "elu": np.where(z < 0, act.ELU_ALPHA * np.expm1(z), z),
        "selu": np.where(z < 0, act.SELU_SCALE * act.SELU_ALPHA * np.expm1(z),
                         act.SELU_SCALE * z),
        "elu_derivative": np.where(z > 0, 1.0, act.ELU_ALPHA * np.exp(z)),
        "selu_derivative": np.where(z > 0, act.SELU_SCALE,
                                    act.SELU_SCALE * act.SELU_ALPHA * np.exp(z)),
        "softplus": np.array([max(v, 0.0) + math.log1p(math.exp(-abs(v))) for v in z]),
    }


@numba.njit(error_model="numpy")
def _exp_all(t, out):
    for j in range(t.shape[0]):
        out[j] = act._exp(t[j])


def test_exp_is_within_two_ulps():
    """The exponential under the float32 activations, on its whole range [-700, 700], against
    NumPy's (within an ulp of the truth); 1.5 ulp was measured."""
    t = np.concatenate([np.linspace(-700.0, 700.0, 2_000_001),
                        np.random.default_rng(6).standard_normal(200_000),
                        np.linspace(-1e-3, 1e-3, 10_001)])
    got = np.empty_like(t)
    _exp_all(t, got)
    want = np.exp(t)
    ulps = np.abs(got - want) / np.spacing(want)
    assert ulps.max() <= 2.0, (ulps.max(), t[ulps.argmax()])


@numba.njit(error_model="numpy")
def _expm1_all(t, out):
    for j in range(t.shape[0]):
        out[j] = act._expm1_nonpositive(t[j])


@needs_scipy
def test_expm1_of_nonpositive_values_is_float64_accurate():
    """Within 2e-15 of SciPy's expm1 on [-40, 0] (1e-15 measured; one Taylor term less gives
    3.6e-14), and -1 below."""
    t = -np.concatenate([np.geomspace(1e-300, 40.0, 400_001), np.linspace(0.0, 40.0, 400_001)])
    got = np.empty_like(t)
    _expm1_all(t, got)
    want = special.expm1(t)
    rel = np.abs(got - want) / np.maximum(np.abs(want), np.finfo(np.float64).tiny)
    assert rel.max() <= 2e-15, (rel.max(), t[rel.argmax()])
    far = np.array([-40.5, -700.0, -np.inf])
    _expm1_all(far, got[:3])
    np.testing.assert_array_equal(got[:3], -1.0)
