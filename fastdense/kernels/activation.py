"""Element-wise activations and their derivatives, selected by an integer code.

The codes are the contract between :mod:`fastdense.activations` (names) and the fused kernels
(which branch on the code once per tile, not per element, where it matters).  Every formula keeps
NaN and Inf flowing through: comparisons are written so that a NaN input gives a NaN output.
"""

import decimal
import math
import struct

import numpy as np
from numba import prange, types
from numba.extending import overload

from fastdense.kernels._codegen import (
    always_inline,
    dated_njit,
    float64_bits,
    float64_from_bits,
    fma,
    zero_of,
)

LINEAR = 0
RELU = 1
SIGMOID = 2
TANH = 3
SOFTMAX = 4
GELU = 5
LEAKY_RELU = 6
ELU = 7
SELU = 8
SWISH = 9
SOFTPLUS = 10

LEAKY_RELU_SLOPE = 0.2
ELU_ALPHA = 1.0
# Klambauer et al. (2017), the constants Keras uses.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
_INV_SQRT2 = 0.70710678118654752440084436210485
_INV_SQRT_2PI = 0.39894228040143267793994605993438

# Activations whose derivative is cheapest (or only possible) from the pre-activation Z; the
# others are differentiated from the output Y, so training keeps only one of the two.  ReLU is
# not one: ``y > 0`` exactly when ``z > 0`` (relu(-inf) is 0, NaN stays NaN), so its derivative
# formula gives the same bits from Y, which the layer then passes as Z (the forward pass writes
# one array instead of two).
NEEDS_Z = frozenset({GELU, LEAKY_RELU, ELU, SELU, SWISH, SOFTPLUS})


def _without_low_bits(x: float, bits: int) -> float:
    """``x`` with the last ``bits`` bits of its significand zero."""
    (i,) = struct.unpack("<q", struct.pack("<d", x))
    return struct.unpack("<d", struct.pack("<q", i & ~((1 << bits) - 1)))[0]


# e^t in float64 arithmetic that vectorizes (no libm call, no branch): t = n ln2 + r with n an
# integer and |r| <= ln2 / 2 (Cody and Waite: ln2 in two parts, the first with its low 11 bits
# zero, so that n times it is exact), e^r - 1 = r + r^2 Q(r) with Q the Taylor series to r^13
# (truncation under 5e-18), and 2^n made from its bits.  Keeping e^r - 1 apart until the end
# (``1 + s``, not a series that starts at 1) leaves one rounding of a number near 1 as the main
# error: within an ulp of e^t (0.93 measured against mpmath), and the same s gives expm1
# without cancellation.
_LN2_HI = _without_low_bits(math.log(2.0), 11)
with decimal.localcontext() as _ctx:
    _ctx.prec = 40
    _LN2_LO = float(decimal.Decimal(2).ln() - decimal.Decimal(_LN2_HI))
_LOG2E = 1.0 / math.log(2.0)
# Adding it rounds t / ln2 to an integer n, which then stands in the low bits of the sum.
_ROUNDER = 1.5 * 2.0 ** 52
_EXP_TAYLOR = tuple(1.0 / math.factorial(k) for k in range(14))


@dated_njit(error_model="numpy")
def _estrin4(c, i, u, u2):
    """``c[i] + c[i+1] u + c[i+2] u^2 + c[i+3] u^3`` by Estrin's scheme (``u2 = u^2``): the
    building block of the polynomials below (``i`` a constant, folded where it is inlined)."""
    always_inline()
    return fma(fma(c[i + 3], u, c[i + 2]), u2, fma(c[i + 1], u, c[i]))


@dated_njit(error_model="numpy")
def _estrin16(c, i, u, u2, u4, u8):
    """``sum_{j < 16} c[i + j] u^j`` by Estrin's scheme (the powers of ``u`` given)."""
    always_inline()
    low = fma(_estrin4(c, i + 4, u, u2), u4, _estrin4(c, i, u, u2))
    return fma(fma(_estrin4(c, i + 12, u, u2), u4, _estrin4(c, i + 8, u, u2)), u8, low)


@dated_njit(error_model="numpy")
def _exp_series(r):
    """``Q(r) = sum_{j >= 2} r^(j - 2) / j!`` to r^13, so that ``e^r = 1 + r + r^2 Q(r)``, by
    Estrin's scheme (four multiplications deep)."""
    always_inline()
    c = _EXP_TAYLOR
    r2 = r * r
    r4 = r2 * r2
    r8 = r4 * r4
    q0 = _estrin4(c, 2, r, r2)
    q1 = _estrin4(c, 6, r, r2)
    q2 = _estrin4(c, 10, r, r2)
    return fma(q2, r8, fma(q1, r4, q0))


@dated_njit(error_model="numpy")
def _exp_reduced(t):
    """``(r, q, k)`` with ``e^t = 2^n (1 + r + r^2 q)``, of a float64 ``|t| <= 746`` (the
    callers clamp): the remainder ``|r| <= ln2 / 2``, and ``k`` the sum that rounded ``t / ln2``
    to the integer ``n = k - _ROUNDER``, which stands in its low bits."""
    always_inline()
    k = fma(t, _LOG2E, _ROUNDER)
    n = k - _ROUNDER
    r = fma(n, -_LN2_HI, t)
    r = fma(n, -_LN2_LO, r)
    return r, _exp_series(r), k


@dated_njit(error_model="numpy")
def _exp_reduced_sum(t, tm, tl):
    """:func:`_exp_reduced` of ``t + tm + tl`` without rounding that sum: ``t`` large (its
    reduction by n ln2's first part is exact), ``tm`` up to a few units, ``tl`` tiny.  The
    remainder is rounded where it is small, at most a quarter ulp of 1 at a time."""
    always_inline()
    k = fma(t + tm, _LOG2E, _ROUNDER)
    n = k - _ROUNDER
    r = fma(n, -_LN2_HI, t) + tm
    r = fma(n, -_LN2_LO, r + tl)
    return r, _exp_series(r), k


@dated_njit(error_model="numpy")
def _pow2(k):
    """``2^n`` for ``k = n + _ROUNDER`` (:func:`_exp_reduced`), ``-1022 <= n <= 1023``."""
    always_inline()
    # n + 1023 is the biased exponent; the rounder's own bits shift out above bit 63.
    return float64_from_bits((float64_bits(k) + 1023) << 52)


@dated_njit(error_model="numpy")
def _exp(t):
    """``e^t`` of a float64 ``|t| <= 700`` (the float32 formulas, which clamp)."""
    always_inline()
    r, q, k = _exp_reduced(t)
    # 1 + r rounds apart from the series, off its chain of dependencies: within 2 ulp (an ulp
    # from NumPy's at most, on 2.2 million values), as fast as a series starting at 1.
    return fma(r * r, q, 1.0 + r) * _pow2(k)


# The float64 exponential's range: e^t overflows above EXP_MAX (709.78) and rounds to 0 below
# EXP_MIN (-745.13); clamped there, t keeps those results, and 2^n is applied as two halves so
# that neither leaves the normal range (the subnormal results are rounded once, by the second).
EXP_MAX = 710.0
EXP_MIN = -746.0


@dated_njit(error_model="numpy")
def _scaled_float64(r, q, k):
    """``2^n (1 + r + r^2 q)`` (:func:`_exp_reduced`) for any ``-1076 <= n <= 1024``: 2^n in
    two halves, so that neither leaves the normal range (a subnormal result is rounded once, by
    the second)."""
    always_inline()
    s = fma(r * r, q, r)
    # np.floor stays a float (math.floor is an integer: scalar conversions in a vector loop).
    half = np.floor(0.5 * (k - _ROUNDER))
    return ((1.0 + s) * _pow2(half + _ROUNDER)) * _pow2(k - half)


@dated_njit(error_model="numpy")
def _exp_float64(t):
    """``e^t`` of any float64 ``t``: within an ulp, inf above EXP_MAX, 0 below EXP_MIN, NaN
    for NaN."""
    always_inline()
    c = EXP_MAX if t > EXP_MAX else t
    c = EXP_MIN if c < EXP_MIN else c
    r, q, k = _exp_reduced(c)
    return _scaled_float64(r, q, k)


# Below EXPM1_FLOOR, e^t - 1 rounds to -1 in float64.
EXPM1_FLOOR = -40.0


@dated_njit(error_model="numpy")
def _expm1(t):
    """``e^t - 1`` of a float64 ``t <= 0`` (within 1.25 ulp, 1.07 measured against mpmath; -1
    below EXPM1_FLOOR, NaN for NaN), as ``2^n s + (2^n - 1)`` with one rounding."""
    always_inline()
    c = EXPM1_FLOOR if t < EXPM1_FLOOR else t
    c = 0.0 if c > 0 else c
    r, q, k = _exp_reduced(c)
    s = fma(r * r, q, r)
    p = _pow2(k)
    return fma(p, s, p - 1.0)


# float32 sigmoid, evaluated in float64 (see :func:`sigmoid`): 1 / (1 + e^t), t = -x, by
# :func:`_exp` of t clamped to +-SIGMOID_FAR.  Past it the result is exactly 0 or 1, as the
# float32 result rounds there and as the C library's gives for infinities (so that
# swish'(-inf) is -inf * 0 = NaN, not -inf).
SIGMOID_FAR = 110.0


@dated_njit(error_model="numpy")
def _sigmoid_float32(z):
    """sigmoid of a float32 ``z`` as float64 arithmetic that vectorizes (no libm call, no
    branch); NaN stays NaN."""
    always_inline()
    t = -np.float64(z)
    c = SIGMOID_FAR if t > SIGMOID_FAR else t
    c = -SIGMOID_FAR if c < -SIGMOID_FAR else c
    r = 1.0 / (1.0 + _exp(c))
    r = 0.0 if t > SIGMOID_FAR else r
    r = 1.0 if t < -SIGMOID_FAR else r
    return r


def _float32(z):
    """Whether the Numba type ``z`` is float32 (the overloads' choice of formula)."""
    return isinstance(z, types.Float) and z.bitwidth == 32


def _by_dtype(stub, float32_fn, float64_fn) -> None:
    """Implement the element-wise function ``stub`` by ``float32_fn`` for a float32 argument
    and ``float64_fn`` otherwise (chosen at compile time, inlined)."""

    @overload(stub, jit_options={"cache": True}, inline="always")
    def _ol(z):
        fn = float32_fn if _float32(z) else float64_fn
        return lambda z: fn(z)


@dated_njit(error_model="numpy")
def _division_error(q, num, d, d_err):
    """``num / (d + d_err) - q`` to first order, for ``q = num / d`` rounded and ``d``'s own
    rounding error ``d_err`` (exact): the correction of both roundings (float64)."""
    always_inline()
    return (fma(-q, d, num) - q * d_err) / d


@dated_njit(error_model="numpy")
def _quotient(num, d, d_err):
    """``num / (d + d_err)`` with the division's rounding and ``d``'s own (``d_err``, exact)
    corrected: one rounding, of the result (float64)."""
    always_inline()
    q = num / d
    return q + _division_error(q, num, d, d_err)


@dated_njit(error_model="numpy")
def _sigmoid_float64(z):
    """sigmoid of a float64 ``z``, ``1 / (1 + e^-z)`` or ``e^z / (1 + e^z)`` by the sign of z
    (e^-|z| never overflows), within 1.5 ulp (1.35 measured against mpmath): both computed
    and one selected, so that a loop of it vectorizes.  NaN stays NaN."""
    always_inline()
    e = _exp_float64(-abs(z))
    d = 1.0 + e
    # 1 + e's rounding error, exactly (e <= 1).
    return _quotient(1.0 if z >= 0 else e, d, e - (d - 1.0))


def sigmoid(z):
    """The logistic function of a float scalar, without overflow for any ``z``:
    :func:`_sigmoid_float32` for float32, :func:`_sigmoid_float64` for float64 (the C
    library's scalar ``exp`` took 6 ns a value in a loop, against 3.0 ns vectorized)."""


_by_dtype(sigmoid, _sigmoid_float32, _sigmoid_float64)


# float32 tanh, evaluated in float64 (see :func:`tanh`).  Below TANH_SMALL, the odd Taylor series
# x * (1 + x^2 P(x^2)) to x^15: its first omitted term is under 5e-12 of the value there.
# From TANH_SMALL, 1 - 2 / (e^2a + 1) with e^2a by :func:`_exp`, a = |x| at most
# TANH_ONE, past which tanh rounds to 1 in float32.  Either error is far below float32's half
# ulp (3e-8), so the one rounding to float32 decides the result.
TANH_SMALL = 0.3125
TANH_ONE = 9.1
_TANH_TAYLOR = (1.0, -1.0 / 3.0, 2.0 / 15.0, -17.0 / 315.0, 62.0 / 2835.0, -1382.0 / 155925.0,
                21844.0 / 6081075.0, -929569.0 / 638512875.0)


@dated_njit(error_model="numpy")
def _tanh_float32(z):
    """tanh of a float32 ``z``, correctly rounded but for one value in 4 million (never off by
    more than 0.5000002 ulp in a test of 4 million values), as float64 arithmetic that
    vectorizes (no libm call, no branch): both formulas are computed and one is selected.
    """
    always_inline()
    x = np.float64(z)
    a = abs(x)
    x2 = x * x
    t = _TANH_TAYLOR
    p = fma(t[7], x2, t[6])
    p = fma(p, x2, t[5])
    p = fma(p, x2, t[4])
    p = fma(p, x2, t[3])
    p = fma(p, x2, t[2])
    p = fma(p, x2, t[1])
    small = fma(x * x2, p, x)
    q = _exp(2.0 * (a if a < TANH_ONE else TANH_ONE))
    big = 1.0 - 2.0 / (q + 1.0)
    big = big if x >= 0 else -big
    r = small if a < TANH_SMALL else big
    # NaN stays NaN (it took the clamped branch), and -0 stays -0.
    r = r if a == a else x
    return x if x == 0 else r


# float64 tanh: below TANH_SMALL_FLOAT64, x (1 + x^2 P(x^2)) with P a Chebyshev interpolant of
# degree 11 in u = 2 x^2 / TANH_SMALL_FLOAT64^2 - 1 (``tools/fit_tanh.py``; relative error of P
# 7e-17, the coefficients' own rounding), then (1 - e^-2a) / (1 + e^-2a), a = |x|, from
# expm1(-2a): past 0.55 that is at most 0.67 in magnitude (no cancellation).
TANH_SMALL_FLOAT64 = 0.55
_TANH_U_SCALE = 2.0 / (TANH_SMALL_FLOAT64 * TANH_SMALL_FLOAT64)
_TANH_POLY = (
    -0.31432997516888317,
    0.017907231183013565,
    -0.0010328257160464795,
    5.964512824317111e-05,
    -3.44496368946431e-06,
    1.989763464855703e-07,
    -1.1492621811954549e-08,
    6.637993878994204e-10,
    -3.833876452770324e-11,
    2.2143989063118704e-12,
    -1.2919390147808654e-13,
    7.462077554516663e-15,
)


@dated_njit(error_model="numpy")
def _tanh_float64(z):
    """tanh of a float64 ``z`` within 1.6 ulp (1.49 measured against mpmath), as float64
    arithmetic that vectorizes: both formulas computed and one selected.  NaN stays NaN, -0
    stays -0."""
    always_inline()
    a = abs(z)
    a2 = a * a
    u = fma(a2, _TANH_U_SCALE, -1.0)
    c = _TANH_POLY
    u2 = u * u
    u4 = u2 * u2
    p0 = _estrin4(c, 0, u, u2)
    p1 = _estrin4(c, 4, u, u2)
    p2 = _estrin4(c, 8, u, u2)
    small = fma(a * a2, fma(fma(p2, u4, p1), u4, p0), a)
    em = _expm1(-2.0 * a)
    d = 2.0 + em
    # 2 + em's rounding error, exactly (|em| <= 1).
    big = _quotient(-em, d, em - (d - 2.0))
    r = small if a < TANH_SMALL_FLOAT64 else big
    r = r if a == a else z
    return -r if z < 0 else (r if z > 0 else z)


def tanh(z):
    """tanh of a float scalar: :func:`_tanh_float32` for float32 (NumPy's own float32 tanh
    is up to 1.4 ulp off, libm's scalar tanh took 19 ns a value here against 2.7 ns
    vectorized), :func:`_tanh_float64` for float64 (libm's 15 ns a value, against 4.4 ns)."""


_by_dtype(tanh, _tanh_float32, _tanh_float64)


# float32 GELU, ELU, SELU and softplus, and the derivatives that need an exponential, in float64
# arithmetic that vectorizes (no libm call, no branch: both sides of each choice are computed
# and one is selected), as tanh and the sigmoid above; each approximation's error is below
# 1e-10 of the value, so the one rounding to float32 decides the result (up to 0.5 ulp plus
# that).  Libm's scalar erf, expm1, log1p and exp took 6 to 10 ns a float32 value in the layer's
# passes here (float32 forward 256 x 784->512 on two threads: GELU 2.0 ms, ReLU 1.16 ms).
# Float64 ELU, SELU and softplus share those formulas with the exponential's and the log
# series' float64-accurate forms (within 2 ulp); float64 GELU has a longer erfc fit of its own
# (below the float32 GELU).

# erfc(x) for 0 <= x <= ERFC_XMAX as t e^(P(t) - x^2), t = 1 / (1 + x / 2), with P a polynomial
# in u = 2 (t - t_min) / (1 - t_min) - 1 (``tools/fit_erfc.py``: a Chebyshev interpolant, relative
# error of erfc 1.3e-12, in powers of u).  Past ERFC_XMAX, erfc(x) < 2e-49: GELU(z) rounds to
# -0 in float32 (z < 0) or is z.
ERFC_XMAX = 10.4
_ERFC_T_MIN = 1.0 / (1.0 + ERFC_XMAX / 2.0)
_ERFC_U_SCALE = 2.0 / (1.0 - _ERFC_T_MIN)
_ERFC_POLY = (
    -0.56227408884875,
    0.5737783799535127,
    0.016526221983266504,
    -0.03001638076588287,
    -0.0011935473781201878,
    0.003845022300887141,
    -0.0002713200897016021,
    -0.0005789589006264248,
    0.0001538024005815659,
    7.178425102417855e-05,
    -4.512169169257527e-05,
    -2.6787498659813607e-06,
    9.204836268386129e-06,
    -1.4758034793671377e-06,
    -1.225547481986519e-06,
    3.0399654261231967e-07,
    7.805449753770002e-08,
)


@dated_njit(error_model="numpy")
def _erfc_parts(a):
    """``(t, P)`` with ``erfc(a) = t e^(P - a^2)``, for ``0 <= a <= ERFC_XMAX`` (float64);
    ``P`` is in [-1.1, 0]."""
    always_inline()
    t = 1.0 / (1.0 + 0.5 * a)
    u = fma(t - _ERFC_T_MIN, _ERFC_U_SCALE, -1.0)
    c = _ERFC_POLY
    # Estrin's scheme: five multiplications deep rather than Horner's sixteen (a loop of GELU
    # vectorizes, and the latency of one element's chain is what it waits on).
    u2 = u * u
    u4 = u2 * u2
    u8 = u4 * u4
    return t, fma(c[16] * u8, u8, _estrin16(c, 0, u, u2, u4, u8))


@dated_njit(error_model="numpy")
def _erf_sum(x):
    """``(1 + erf(x), |x| clamped to ERFC_XMAX)`` of a float64 ``x``: ``erfc(-x)`` for x < 0
    (no cancellation), ``2 - erfc(x)`` otherwise, and 0 below -ERFC_XMAX (as 1 + erf(x) is
    there, so that GELU(-inf) is NaN as in C's formula)."""
    always_inline()
    a = abs(x)
    a = ERFC_XMAX if a > ERFC_XMAX else a
    t, p = _erfc_parts(a)
    e = t * _exp(p - a * a)
    c = e if x < 0 else 2.0 - e
    return (0.0 if x < -ERFC_XMAX else c), a


@dated_njit(error_model="numpy")
def _gelu_float32(z):
    """GELU of a float32 ``z`` in float64 arithmetic: ``z / 2 (1 + erf(z / sqrt 2))``."""
    always_inline()
    zz = np.float64(z)
    c, _ = _erf_sum(zz * _INV_SQRT2)
    return 0.5 * zz * c


@dated_njit(error_model="numpy")
def _gelu_derivative_float32(z):
    """GELU's derivative at a float32 ``z`` in float64 arithmetic:
    ``(1 + erf(x)) / 2 + z e^(-x^2) / sqrt(2 pi)``, x = z / sqrt 2."""
    always_inline()
    zz = np.float64(z)
    x = zz * _INV_SQRT2
    c, a = _erf_sum(x)
    gauss = _exp(-a * a)
    # 0 past the range, so that the infinities give inf * 0 = NaN as C's formula does.
    gauss = 0.0 if abs(x) > ERFC_XMAX else gauss
    return 0.5 * c + zz * _INV_SQRT_2PI * gauss


# float64 GELU: erfc(x) for 0 <= x <= ERFC_XMAX_FLOAT64 as t e^(P(t) - x^2), the float32 form
# with P of degree 26 (``tools/fit_erfc.py --float64``: absolute error of P 5e-17, the
# coefficients' own rounding).  Float64 needs what float32 could round away: x^2 = z^2 / 2 exact
# in two parts (Dekker's product), so that the exponent (down to -745) is never rounded as a
# whole; P in two parts, both added to the exponential's remainder; and x = z / sqrt 2 in two
# parts, with t's two roundings (of 1 + x/2 and of the division) carried into the factor t.
# Past ERFC_XMAX_FLOAT64, erfc(x) is 0 in float64.  1 + erf(x) is erfc(-x) for x < 0: no
# cancellation, where the C library's 1 + erf(x) loses every digit (GELU(-10) is -7.6e-23, and
# rounds to -0 that way).
ERFC_XMAX_FLOAT64 = 27.3
_ERFC_T_MIN_FLOAT64 = 1.0 / (1.0 + ERFC_XMAX_FLOAT64 / 2.0)
_ERFC_U_SCALE_FLOAT64 = 2.0 / (1.0 - _ERFC_T_MIN_FLOAT64)
# 1 / sqrt 2 - _INV_SQRT2: the constant's own rounding, for x = z / sqrt 2 in two parts.
with decimal.localcontext() as _ctx:
    _ctx.prec = 40
    _INV_SQRT2_LO = float(1 / decimal.Decimal(2).sqrt() - decimal.Decimal(_INV_SQRT2))
# |z| past which erfc(|z| / sqrt 2) is 0.
_GELU_ZMAX_FLOAT64 = ERFC_XMAX_FLOAT64 * math.sqrt(2.0)
_ERFC_POLY_FLOAT64 = (
    -0.625674398032469,
    0.6321295227130388,
    0.03254891268587921,
    -0.03977323842407753,
    -0.0050978439762161,
    0.006541199607032454,
    0.00041642016471277107,
    -0.0014127597731365027,
    0.0001361167244433271,
    0.0003018950803007299,
    -9.882829766513216e-05,
    -4.94920876713442e-05,
    3.728743931803429e-05,
    1.7228746812289922e-06,
    -9.6487448717788e-06,
    2.5643281926098433e-06,
    1.4838542507088257e-06,
    -1.092127046960095e-06,
    3.170345668819691e-08,
    2.3312744812177888e-07,
    -8.837286024678059e-08,
    -1.9031232010916446e-08,
    2.3460469665207293e-08,
    -3.0225243190590277e-09,
    -2.6400533507551043e-09,
    7.106620400706133e-10,
    5.5937898247131754e-11,
)


@dated_njit(error_model="numpy")
def _erfc_over_sqrt2(a):
    """``(erfc(a / sqrt 2), hi, lo)`` of a float64 ``a >= 0`` (0 past _GELU_ZMAX_FLOAT64; NaN
    for NaN), with ``hi + lo`` the clamped ``a``'s square exactly (for the Gaussian of GELU's
    derivative)."""
    always_inline()
    b = _GELU_ZMAX_FLOAT64 if a > _GELU_ZMAX_FLOAT64 else a
    # x = b / sqrt 2 in two parts, so that t_exact is t of the exact x: its rounding, through
    # the factor t and P's slope, took GELU to 4.7 ulp at z = -1.33.
    x = b * _INV_SQRT2
    x_lo = fma(b, _INV_SQRT2, -x) + b * _INV_SQRT2_LO
    d = 1.0 + 0.5 * x
    t = 1.0 / d
    t_exact = t + _division_error(t, 1.0, d, (0.5 * x - (d - 1.0)) + 0.5 * x_lo)
    u = fma(t - _ERFC_T_MIN_FLOAT64, _ERFC_U_SCALE_FLOAT64, -1.0)
    c = _ERFC_POLY_FLOAT64
    # P = c0 + c1 u + u^2 Q(u) in two parts: c0 + c1 u is near 1 in magnitude, and its roundings
    # took GELU to 4.9 ulp at z = -34.7; the rest is under 0.1.
    ph = c[1] * u
    pl = fma(c[1], u, -ph)
    p_hi = c[0] + ph
    bb = p_hi - c[0]
    p_err = ((c[0] - (p_hi - bb)) + (ph - bb)) + pl
    # Q by Estrin's scheme, six multiplications deep.
    u2 = u * u
    u4 = u2 * u2
    u8 = u4 * u4
    u16 = u8 * u8
    high = fma(c[26], u8, fma(_estrin4(c, 22, u, u2), u4, _estrin4(c, 18, u, u2)))
    p_lo = fma(u2, fma(high, u16, _estrin16(c, 2, u, u2, u4, u8)), p_err)
    hi = b * b
    lo = fma(b, b, -hi)
    r, q, k = _exp_reduced_sum(-0.5 * hi, p_hi, p_lo - 0.5 * lo)
    e = t_exact * _scaled_float64(r, q, k)
    return (0.0 if a > _GELU_ZMAX_FLOAT64 else e), hi, lo


@dated_njit(error_model="numpy")
def _gelu_float64(z):
    """GELU of a float64 ``z``, ``z / 2 erfc(-z / sqrt 2)``, within 4 ulp (3.9 measured against
    mpmath) from z = -37 on (below, erfc(|z| / sqrt 2) is subnormal); NaN stays NaN, GELU(-inf)
    is NaN (C's formula)."""
    always_inline()
    e, _, _ = _erfc_over_sqrt2(abs(z))
    return 0.5 * z * (e if z < 0 else 2.0 - e)


@dated_njit(error_model="numpy")
def _gelu_derivative_float64(z):
    """GELU's derivative at a float64 ``z``: ``erfc(-z / sqrt 2) / 2 + z e^(-z^2 / 2) /
    sqrt(2 pi)``, the Gaussian's exponent exact as erfc's."""
    always_inline()
    a = abs(z)
    e, hi, lo = _erfc_over_sqrt2(a)
    r, q, k = _exp_reduced_sum(-0.5 * hi, 0.0, -0.5 * lo)
    gauss = _scaled_float64(r, q, k)
    # 0 past the range, so that the infinities give inf * 0 = NaN as C's formula does.
    gauss = 0.0 if a > _GELU_ZMAX_FLOAT64 else gauss
    return 0.5 * (e if z < 0 else 2.0 - e) + z * _INV_SQRT_2PI * gauss


# e^c for c <= 0 by :func:`_exp` of c clamped to EXP_FLOOR, and exactly 0 below it (e^c
# < 2e-48 there, 0 in float32 as every product of it with a float32 gradient below 1e3), so
# that e^-inf is 0: the float32 formulas' cheaper form of :func:`_exp_float64`.
EXP_FLOOR = -110.0


@dated_njit(error_model="numpy")
def _exp_nonpositive(z):
    """``e^z`` of a float64 ``z <= 0`` (NaN stays NaN)."""
    always_inline()
    c = EXP_FLOOR if z < EXP_FLOOR else z
    c = 0.0 if c > 0 else c
    r = _exp(c)
    return 0.0 if z < EXP_FLOOR else r


# log(1 + u) for 0 <= u <= 1 as 2 atanh(w), w = u / (2 + u) <= 1/3, by the series
# 2 (w + w^3/3 + w^5/5 + ...): to w^21 its truncation is under 2e-12 of the value (float32), to
# w^35 under 2e-18 (float64).
_LOG1P_ODD_FLOAT32 = tuple(1.0 / (2 * k + 1) for k in range(11))
_LOG1P_ODD_FLOAT64 = tuple(1.0 / (2 * k + 1) for k in range(18))


@dated_njit(error_model="numpy")
def _atanh_series(w2, odd):
    """``sum_k odd[k] w^2k`` for k >= 1 (Horner)."""
    always_inline()
    p = odd[-1]
    for i in range(len(odd) - 2, 0, -1):
        p = fma(p, w2, odd[i])
    return p


@dated_njit(error_model="numpy")
def _softplus_float32(z):
    """softplus of a float32 ``z`` in float64 arithmetic: ``max(z, 0) + log(1 + e^-|z|)``."""
    always_inline()
    zz = np.float64(z)
    u = _exp_nonpositive(-abs(zz))
    w = u / (2.0 + u)
    w2 = w * w
    r = (zz if zz > 0 else 0.0) + 2.0 * fma(w * w2, _atanh_series(w2, _LOG1P_ODD_FLOAT32), w)
    return r if zz == zz else zz


_FLOAT64_TINY = float(np.finfo(np.float64).tiny)


@dated_njit(error_model="numpy")
def _softplus_float64(z):
    """softplus of a float64 ``z`` within 1.5 ulp (1.35 measured against mpmath): the float32
    formula with the longer series, and with ``w``'s roundings (of ``2 + u`` and of the
    division) carried as a correction.  NaN stays NaN."""
    always_inline()
    u = _exp_float64(-abs(z))
    d = 2.0 + u
    w = u / d
    w_err = _division_error(w, u, d, u - (d - 2.0))
    w2 = w * w
    lp = 2.0 * w + 2.0 * fma(w * w2, _atanh_series(w2, _LOG1P_ODD_FLOAT64), w_err)
    # Subnormal u: log(1 + u) is u (the series' u / 2 would round).
    lp = u if u < _FLOAT64_TINY else lp
    r = (z if z > 0 else 0.0) + lp
    return r if z == z else z


def gelu(z):
    """GELU of a float scalar, ``z / 2 (1 + erf(z / sqrt 2))``: :func:`_gelu_float32` for
    float32, :func:`_gelu_float64` for float64 (the C library's erf took 15 ns a value in a
    loop, against 6.3 ns)."""


_by_dtype(gelu, _gelu_float32, _gelu_float64)


def gelu_derivative(z):
    """GELU's derivative at a float scalar ``z``: :func:`_gelu_derivative_float32` for float32,
    :func:`_gelu_derivative_float64` for float64."""


_by_dtype(gelu_derivative, _gelu_derivative_float32, _gelu_derivative_float64)


def elu(z):
    """ELU of a float scalar: ``z`` at and above 0, ``ELU_ALPHA (e^z - 1)`` below; NaN stays
    NaN.  By :func:`_expm1` in float64, computed for every ``z`` and selected (a loop of it
    vectorizes)."""


def selu(z):
    """SELU of a float scalar: ``SELU_SCALE z`` at and above 0, ``SELU_SCALE SELU_ALPHA
    (e^z - 1)`` below (as :func:`elu`)."""


def elu_derivative(z):
    """ELU's derivative at a float scalar ``z``: 1 above 0, ``ELU_ALPHA e^z`` at and below it,
    NaN for NaN (float32 by :func:`_exp_nonpositive`, float64 by :func:`_exp_float64`)."""


def selu_derivative(z):
    """SELU's derivative at a float scalar ``z``: ``SELU_SCALE`` above 0, ``SELU_SCALE
    SELU_ALPHA e^z`` at and below it, NaN for NaN (as :func:`elu_derivative`)."""


def _scaled_elu_overloads(values, derivative, scale, alpha):
    """Register the overloads of ``values`` and ``derivative`` for ``scale * ELU_alpha`` (ELU:
    scale 1, SELU: Keras' constants).  ``scale * alpha`` is one constant, as it was written
    out per activation; ``scale * z`` with a scale of 1 is ``z`` exactly."""
    below = scale * alpha

    @overload(values, jit_options={"cache": True}, inline="always")
    def _values_ol(z):
        def values_impl(z):
            m = below * _expm1(np.float64(z))
            return scale * z if not z < 0 else m
        return values_impl

    @overload(derivative, jit_options={"cache": True}, inline="always")
    def _derivative_ol(z):
        # float32 needs no e^z below EXP_FLOOR (see _exp_nonpositive).
        exp = _exp_nonpositive if _float32(z) else _exp_float64

        def derivative_impl(z):
            e = below * exp(np.float64(z))
            return scale if z > 0 else (e if z <= 0 else np.float64(z))
        return derivative_impl


_scaled_elu_overloads(elu, elu_derivative, 1.0, ELU_ALPHA)
_scaled_elu_overloads(selu, selu_derivative, SELU_SCALE, SELU_ALPHA)


def softplus(z):
    """softplus of a float scalar, ``log(1 + e^z)`` without overflow for large z nor loss for
    very negative z: :func:`_softplus_float32` for float32, :func:`_softplus_float64` for
    float64."""


_by_dtype(softplus, _softplus_float32, _softplus_float64)


@dated_njit(inline="always")
def leaky_relu(z):
    """Leaky ReLU: ``z`` at and above 0, ``LEAKY_RELU_SLOPE z`` below (NaN stays NaN)."""
    return z if not z < 0 else z * LEAKY_RELU_SLOPE


# Each activation and derivative is a function of its own, called by :func:`apply` and
# :func:`derivative` and by the activation's passes (``activation_passes``): a pass over
# ``apply`` with a constant code would inline all of its branches, which Numba types again at
# each call.
@dated_njit(inline="always")
def swish(z):
    """``z * sigmoid(z)``."""
    return z * sigmoid(z)


@dated_njit(inline="always")
def apply(code, z):
    """Return ``act(z)`` for one scalar ``z`` (softmax is row-wise: see :func:`softmax_rows`)."""
    if code == RELU:
        # Not ``z * 0.0``, which is NaN for z = -inf (relu(-inf) is 0, as in Keras).
        return z if not z < 0 else zero_of(z)
    if code == SIGMOID:
        return sigmoid(z)
    if code == TANH:
        return tanh(z)
    if code == GELU:
        return gelu(z)
    if code == LEAKY_RELU:
        return leaky_relu(z)
    if code == ELU:
        return elu(z)
    if code == SELU:
        return selu(z)
    if code == SWISH:
        return swish(z)
    if code == SOFTPLUS:
        return softplus(z)
    return z


@dated_njit(inline="always")
def relu_derivative(z):
    """ReLU's derivative at ``z``: 1 above 0, 0 at and below it, NaN for NaN."""
    return 1.0 if z > 0 else (0.0 if z <= 0 else z)


@dated_njit(inline="always")
def leaky_relu_derivative(z):
    """Leaky ReLU's derivative at ``z``: 1 above 0, ``LEAKY_RELU_SLOPE`` at and below it, NaN
    for NaN."""
    return 1.0 if z > 0 else (LEAKY_RELU_SLOPE if z <= 0 else z)


@dated_njit(inline="always")
def sigmoid_derivative(y):
    """The sigmoid's derivative from its output ``y``."""
    return y * (1.0 - y)


@dated_njit(inline="always")
def tanh_derivative(y):
    """tanh's derivative from its output ``y``."""
    return 1.0 - y * y


@dated_njit(inline="always")
def swish_derivative(z):
    """swish's derivative at ``z``."""
    s = sigmoid(z)
    return s + z * s * (1.0 - s)


@dated_njit(inline="always")
def derivative(code, z, y):
    """Return ``act'(z)`` given the pre-activation ``z`` and the output ``y = act(z)``."""
    if code == RELU:
        return relu_derivative(z)
    if code == SIGMOID:
        return sigmoid_derivative(y)
    if code == TANH:
        return tanh_derivative(y)
    if code == GELU:
        return gelu_derivative(z)
    if code == LEAKY_RELU:
        return leaky_relu_derivative(z)
    if code == ELU:
        return elu_derivative(z)
    if code == SELU:
        return selu_derivative(z)
    if code == SWISH:
        return swish_derivative(z)
    if code == SOFTPLUS:
        return sigmoid(z)
    return 1.0


def _softmax_exp(z, m):
    """``e^(z - m)`` for a row's max ``m >= z`` (or NaN): float32 in float64 arithmetic from the
    exact difference (:func:`_exp_nonpositive`), float64 by :func:`_exp_float64`."""


@overload(_softmax_exp, jit_options={"cache": True}, inline="always")
def _softmax_exp_ol(z, m):
    if _float32(z):
        return lambda z, m: _exp_nonpositive(np.float64(z) - np.float64(m))
    return lambda z, m: _exp_float64(z - m)


@dated_njit(error_model="numpy")
def softmax_row(z, y):
    """Write the softmax of the 1-D ``z`` into ``y`` (may alias), shifted by the max for safety.

    The exponentials are a loop of their own, which vectorizes; the max and the sum run four
    chains at a time (in a fixed order: the bits depend on the row alone).  A NaN anywhere
    makes the whole row NaN (through the sum), as does +inf (inf - inf).
    """
    n = z.shape[0]
    if n == 0:
        return
    m0 = m1 = m2 = m3 = z[0]
    n4 = n - n % 4
    for j in range(0, n4, 4):
        m0 = z[j] if z[j] > m0 else m0
        m1 = z[j + 1] if z[j + 1] > m1 else m1
        m2 = z[j + 2] if z[j + 2] > m2 else m2
        m3 = z[j + 3] if z[j + 3] > m3 else m3
    for j in range(n4, n):
        m0 = z[j] if z[j] > m0 else m0
    m01 = m1 if m1 > m0 else m0
    m23 = m3 if m3 > m2 else m2
    m = m23 if m23 > m01 else m01
    if m == -np.inf:
        m = zero_of(m)
    if z.ctypes.data == y.ctypes.data:
        # In place (the layer's usual call): a loop over z and y that may alias does not
        # vectorize (3x slower at 512 x 1000 float32), one over y alone does.
        for j in range(n):
            y[j] = _softmax_exp(y[j], m)
    else:
        for j in range(n):
            y[j] = _softmax_exp(z[j], m)
    s0 = s1 = s2 = s3 = 0.0
    for j in range(0, n4, 4):
        s0 += y[j]
        s1 += y[j + 1]
        s2 += y[j + 2]
        s3 += y[j + 3]
    for j in range(n4, n):
        s0 += y[j]
    inv = 1.0 / ((s0 + s1) + (s2 + s3))
    for j in range(n):
        y[j] *= inv


@dated_njit(parallel=True)
def activate(code, z, y):
    """``y[...] = act(z)`` for 2-D ``z`` and ``y`` (which may be the same array)."""
    m, n = z.shape
    if code == SOFTMAX:
        for i in prange(m):
            softmax_row(z[i], y[i])
        return
    for i in prange(m):
        zi = z[i]
        yi = y[i]
        for j in range(n):
            yi[j] = apply(code, zi[j])


@dated_njit(inline="always")
def softmax_row_backward(g, y, dz):
    """``dz = y * (g - <g, y>)``: the softmax Jacobian-vector product for one row (the dot
    product in four chains, in a fixed order)."""
    n = g.shape[0]
    n4 = n - n % 4
    d0 = d1 = d2 = d3 = 0.0
    for j in range(0, n4, 4):
        d0 += g[j] * y[j]
        d1 += g[j + 1] * y[j + 1]
        d2 += g[j + 2] * y[j + 2]
        d3 += g[j + 3] * y[j + 3]
    for j in range(n4, n):
        d0 += g[j] * y[j]
    dot = (d0 + d1) + (d2 + d3)
    for j in range(n):
        dz[j] = y[j] * (g[j] - dot)
