"""The scalar activation kernels: float32 against float64 truth, float64 against mpmath."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from fastdense.kernels import activation as act


def _elementwise(fn):
    """A loop ``out[j] = fn(z[j])`` over 1-D arrays (compiled for the types it is called with)."""

    @numba.njit(error_model="numpy")
    def run(z, out):
        for j in range(z.shape[0]):
            out[j] = fn(z[j])

    return run


_tanh_all = _elementwise(act.tanh)
_sigmoid_all = _elementwise(act.sigmoid)
_exp_all = _elementwise(act._exp)
_exp_float64_all = _elementwise(act._exp_float64)
_expm1_all = _elementwise(act._expm1)


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
    _elementwise(getattr(act, name))(z, y)
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
    _elementwise(act.gelu_derivative)(z, y)
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
    _elementwise(getattr(act, name))(z, y)
    np.testing.assert_array_equal(y.astype(np.float32), np.array(want, np.float32))
    assert np.signbit(y[1]) == np.signbit(np.float32(want[1]))


def test_exp_is_within_two_ulps():
    """The exponential under the float32 activations, on its whole range [-700, 700], against
    NumPy's (within an ulp of the truth); an ulp was measured."""
    t = np.concatenate([np.linspace(-700.0, 700.0, 2_000_001),
                        np.random.default_rng(6).standard_normal(200_000),
                        np.linspace(-1e-3, 1e-3, 10_001)])
    got = np.empty_like(t)
    _exp_all(t, got)
    want = np.exp(t)
    ulps = np.abs(got - want) / np.spacing(want)
    assert ulps.max() <= 2.0, (ulps.max(), t[ulps.argmax()])


def test_float64_exp_is_within_an_ulp_on_its_whole_range():
    """An ulp at most from NumPy's exp (itself within about half an ulp of the truth), down
    into the subnormals; overflow to inf, underflow to 0, NaN kept."""
    t = np.concatenate([np.linspace(-745.2, 709.8, 2_000_001),
                        np.random.default_rng(7).standard_normal(200_000),
                        np.linspace(-1e-3, 1e-3, 10_001)])
    got = np.empty_like(t)
    _exp_float64_all(t, got)
    with np.errstate(over="ignore"):
        want = np.exp(t)
    finite = np.isfinite(want) & (want > 0)
    ulps = np.abs(got[finite] - want[finite]) / np.spacing(want[finite])
    assert ulps.max() <= 1.0, (ulps.max(), t[finite][ulps.argmax()])
    np.testing.assert_array_equal(got[~finite], want[~finite])
    special = np.array([np.inf, -np.inf, np.nan, 710.0, -746.0, 0.0, -0.0])
    _exp_float64_all(special, got[:7])
    np.testing.assert_array_equal(got[:7], [np.inf, 0.0, np.nan, np.inf, 0.0, 1.0, 1.0])


# Float64 sigmoid, tanh, ELU, SELU, softplus, swish and the derivatives with an exponential:
# float64 arithmetic that vectorizes (see activation.py), against mpmath at 200 bits.  The
# bounds are the measured maxima (in brackets) plus a margin, in ulps of the result; each
# fails without the correction or the formula choice that keeps it (sigmoid and softplus
# without their division corrections: 1.8 and 1.9 ulp; tanh by expm1 alone near 0: 2.0).
try:
    import mpmath
except ImportError:  # pragma: no cover - mpmath comes with the dev extra
    mpmath = None
needs_mpmath = pytest.mark.skipif(mpmath is None, reason="needs mpmath")

_MP = {} if mpmath is None else {
    "exp": mpmath.exp,
    "expm1": mpmath.expm1,
    "sigmoid": lambda x: 1 / (1 + mpmath.exp(-x)),
    "tanh": mpmath.tanh,
    "softplus": lambda x: mpmath.log1p(mpmath.exp(x)),
    "swish": lambda x: x / (1 + mpmath.exp(-x)),
    "elu": lambda x: x if x >= 0 else act.ELU_ALPHA * mpmath.expm1(x),
    "selu": lambda x: act.SELU_SCALE * (
        x if x >= 0 else mpmath.mpf(act.SELU_ALPHA) * mpmath.expm1(x)),
    "elu_derivative": lambda x: 1 if x > 0 else act.ELU_ALPHA * mpmath.exp(x),
    "selu_derivative": lambda x: act.SELU_SCALE * (
        1 if x > 0 else mpmath.mpf(act.SELU_ALPHA) * mpmath.exp(x)),
    "gelu": lambda x: x / 2 * mpmath.erfc(-x / mpmath.sqrt(2)),
}
_FLOAT64_ULPS = {
    "exp": 1.0,  # (0.93)
    "expm1": 1.25,  # (1.07, z <= 0: the only arguments the activations give it)
    "sigmoid": 1.5,  # (1.35)
    "tanh": 1.6,  # (1.49)
    "softplus": 1.5,  # (1.36)
    "swish": 2.0,  # (1.8: the sigmoid's and one product's roundings)
    "elu": 1.25,  # (1.07)
    "selu": 2.0,  # (1.56: and scale times alpha rounded once, as Keras' constant is)
    "elu_derivative": 1.25,  # (0.95)
    "selu_derivative": 2.0,  # (as SELU)
    "gelu": 4.0,  # (3.9: the exponential, t, and two products; see the hard points below)
}
# swish from -700: below, z times a subnormal sigmoid is a normal number with the sigmoid's few
# bits (as in the C formula).  Its derivative is left out: its terms cancel near z = -1.28,
# where an error relative to the result means nothing (the sigmoid's bound covers it).
# GELU from -37: below, erfc(|z| / sqrt 2) is subnormal and z / 2 times it may not be.
_FLOAT64_RANGE = {"exp": (-745.0, 709.0), "expm1": (-45.0, 0.0), "tanh": (-25.0, 25.0),
                  "elu": (-45.0, 5.0), "selu": (-45.0, 5.0), "swish": (-700.0, 745.0),
                  "gelu": (-37.0, 40.0)}


def _float64_fn(name):
    return {"exp": act._exp_float64, "expm1": act._expm1}.get(name) or getattr(act, name)


@pytest.mark.parametrize("name", sorted(_FLOAT64_ULPS))
@needs_mpmath
def test_float64_activation_accuracy_against_mpmath(name):
    rng = np.random.default_rng(sorted(_FLOAT64_ULPS).index(name))
    lo, hi = _FLOAT64_RANGE.get(name, (-745.0, 745.0))
    z = np.concatenate([rng.uniform(lo, hi, 1500), rng.standard_normal(1500) * 3,
                        rng.uniform(-1.2, 1.2, 1500), rng.standard_normal(300) * 1e-3,
                        np.geomspace(1e-300, 1.0, 300) * rng.choice([-1.0, 1.0], 300)])
    z = z[(z >= lo) & (z <= hi)]
    got = np.empty_like(z)
    _elementwise(_float64_fn(name))(z, got)
    mpmath.mp.prec = 200
    exact = [_MP[name](mpmath.mpf(float(v))) for v in z]
    truth = np.array([float(e) for e in exact])
    normal = np.abs(truth) >= np.finfo(np.float64).tiny
    ulps = np.array([float(abs(mpmath.mpf(float(g)) - e))
                     for g, e in zip(got, exact, strict=True)])
    ulps = ulps[normal] / np.spacing(np.abs(truth[normal]))
    assert ulps.max() <= _FLOAT64_ULPS[name], (ulps.max(), z[normal][ulps.argmax()])
    # Subnormal results: within a few of their absolute spacing (the relative error of
    # e^z carried into a result that has fewer bits).
    tiny = ~normal
    if tiny.any():
        assert np.all(np.abs(got[tiny] - truth[tiny]) <= 4 * np.abs(truth[tiny]) * 1e-10 + 5e-324)


@pytest.mark.parametrize("name, want", [
    ("sigmoid", [0.5, 0.5, 1.0, 0.0, np.nan, 1.0, 0.0]),
    ("tanh", [0.0, -0.0, 1.0, -1.0, np.nan, 1.0, -1.0]),
    ("elu", [0.0, -0.0, np.inf, -1.0, np.nan, 800.0, -1.0]),
    ("elu_derivative", [1.0, 1.0, 1.0, 0.0, np.nan, 1.0, 0.0]),
    ("softplus", [np.log(2.0), np.log(2.0), np.inf, 0.0, np.nan, 800.0, 0.0]),
    ("swish", [0.0, -0.0, np.inf, np.nan, np.nan, 800.0, -0.0]),
    ("gelu", [0.0, -0.0, np.inf, np.nan, np.nan, 800.0, -0.0]),
    ("gelu_derivative", [0.5, 0.5, np.nan, np.nan, np.nan, 1.0, 0.0]),
])
def test_float64_activation_special_values(name, want):
    """As the C library's formulas give them: NaN stays NaN, the limits exact, signed zeros
    kept, swish(-inf) = -inf * 0 = NaN."""
    z = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 800.0, -800.0])
    y = np.empty_like(z)
    _elementwise(getattr(act, name))(z, y)
    np.testing.assert_array_equal(y, want)
    assert np.signbit(y[1]) == np.signbit(want[1])


@needs_mpmath
def test_float64_gelu_keeps_its_negative_tail():
    """GELU(z) for z < 0 is z / 2 erfc(|z| / sqrt 2), never 1 + erf(z / sqrt 2): that sum
    cancels (every digit from z = -8.3, where it rounds to 0)."""
    z = np.array([-3.0, -10.0, -20.0, -30.0])
    y = np.empty_like(z)
    _elementwise(act.gelu)(z, y)
    mpmath.mp.prec = 200
    want = [float(v / 2 * mpmath.erfc(-mpmath.mpf(v) / mpmath.sqrt(2))) for v in z]
    np.testing.assert_allclose(y, want, rtol=4 * np.finfo(np.float64).eps / 2, atol=0)


@needs_mpmath
def test_float64_gelu_at_its_hard_points():
    """Where the parts the kernel keeps apart show: with P in one part, -34.74 and -27.08 were
    4.9 and 4.5 ulp off; with x = z / sqrt 2 rounded, -1.33 was 4.7."""
    z = np.array([-34.74318109935852, -27.076163889666198, -1.3345482822623773])
    y = np.empty_like(z)
    _elementwise(act.gelu)(z, y)
    mpmath.mp.prec = 200
    for v, got in zip(z, y, strict=True):
        exact = mpmath.mpf(v) / 2 * mpmath.erfc(-mpmath.mpf(v) / mpmath.sqrt(2))
        ulps = float(abs(mpmath.mpf(got) - exact)) / np.spacing(abs(float(exact)))
        assert ulps <= _FLOAT64_ULPS["gelu"], (v, ulps)


@needs_mpmath
def test_float64_gelu_derivative_is_within_its_bound():
    """Where its two terms cancel (near -0.75) relative error means nothing: within 4 ulp
    (2.8 measured) of the sum of the terms' magnitudes."""
    rng = np.random.default_rng(11)
    z = np.concatenate([rng.uniform(-37.0, 10.0, 3000), rng.standard_normal(3000) * 2])
    got = np.empty_like(z)
    _elementwise(act.gelu_derivative)(z, got)
    mpmath.mp.prec = 200
    worst = 0.0
    for v, g in zip(z, got, strict=True):
        x = mpmath.mpf(v)
        half = mpmath.erfc(-x / mpmath.sqrt(2)) / 2
        gauss = x * mpmath.exp(-x * x / 2) / mpmath.sqrt(2 * mpmath.pi)
        scale = float(abs(half) + abs(gauss))
        if scale >= np.finfo(np.float64).tiny:
            worst = max(worst, float(abs(mpmath.mpf(g) - half - gauss)) / np.spacing(scale))
    assert worst <= 4.0, worst


def test_float64_tanh_of_tiny_and_subnormal_values_is_the_value():
    z = np.array([1e-300, -1e-300, 5e-324, -5e-324, 1e-20, -1e-20, 2.0 ** -30])
    y = np.empty_like(z)
    _tanh_all(z, y)
    np.testing.assert_array_equal(y, z)


def test_expm1_of_nonpositive_values_is_float64_accurate():
    """Within 2 ulp of NumPy's expm1 on [-40, 0] (the C library's, itself within an ulp; SciPy's
    is 2.5 ulp off at -0.092), and -1 below."""
    t = -np.concatenate([np.geomspace(1e-300, 40.0, 400_001), np.linspace(0.0, 40.0, 400_001)])
    got = np.empty_like(t)
    _expm1_all(t, got)
    want = np.expm1(t)
    ulps = np.abs(got - want) / np.spacing(np.abs(want))
    assert ulps.max() <= 2.0, (ulps.max(), t[ulps.argmax()])
    far = np.array([-40.5, -700.0, -np.inf])
    _expm1_all(far, got[:3])
    np.testing.assert_array_equal(got[:3], -1.0)
