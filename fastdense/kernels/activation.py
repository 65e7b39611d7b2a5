"""Element-wise activations and their derivatives, selected by an integer code.

The codes are the contract between :mod:`fastdense.activations` (names) and the fused kernels
(which branch on the code once per tile, not per element, where it matters).  Every formula keeps
NaN and Inf flowing through: comparisons are written so that a NaN input gives a NaN output.
"""

import math

import numpy as np
from numba import prange, types
from numba.extending import overload

from fastdense.kernels._codegen import dated_njit, fma, zero_of

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


@dated_njit(inline="always")
def _sigmoid_libm(z):
    """The logistic function, without overflow for any z."""
    # Two branches so that exp never overflows; NaN takes the second branch and stays NaN.
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


# e^t in float64 arithmetic that vectorizes (no libm call): (e^(t / 2^k))^(2^k), and e^s by its
# Taylor series to s^n; to s^15 the truncation is under 1e-13 of the value for |s| <= 0.86, to
# s^12 under 2e-13 for |s| <= 0.57 (times 2^k by the squarings): far below float32's half ulp
# (3e-8) for the float32 activations below.
_EXP_TAYLOR = tuple(1.0 / math.factorial(k) for k in range(16))


@dated_njit(inline="always")
def _exp_scaled(t, k, n):
    """``e^t`` (float64) by the Taylor series to ``s^n`` (``n <= 15``) of ``s = t / 2^k``;
    ``k`` and ``n`` constants."""
    s = t * 0.5 ** k
    e = _EXP_TAYLOR
    q = fma(e[n], s, e[n - 1])
    for i in range(n - 2, -1, -1):
        q = fma(q, s, e[i])
    for _ in range(k):
        q = q * q
    return q


# float32 sigmoid, evaluated in float64 (see :func:`sigmoid`): 1 / (1 + e^t), t = -x, by
# ``_exp_scaled(t, 7, 15)`` on t clamped to +-SIGMOID_FAR (e^t stays far inside float64's range).
# Past it the result is exactly 0 or 1, as the float32 result rounds there and as the C
# library's gives for infinities (so that swish'(-inf) is -inf * 0 = NaN, not -inf).
SIGMOID_FAR = 110.0


@dated_njit(inline="always", error_model="numpy")
def _sigmoid_float32(z):
    """sigmoid of a float32 ``z`` as float64 arithmetic that vectorizes (no libm call, no
    branch); NaN stays NaN."""
    t = -np.float64(z)
    c = SIGMOID_FAR if t > SIGMOID_FAR else t
    c = -SIGMOID_FAR if c < -SIGMOID_FAR else c
    r = 1.0 / (1.0 + _exp_scaled(c, 7, 15))
    r = 0.0 if t > SIGMOID_FAR else r
    r = 1.0 if t < -SIGMOID_FAR else r
    return r


def sigmoid(z):
    """The logistic function of a float scalar, without overflow for any ``z``:
    :func:`_sigmoid_float32` for float32 (C's ``expf`` is scalar), two branches on
    ``math.exp`` for float64."""


@overload(sigmoid, jit_options={"cache": True})
def _sigmoid_ol(z):
    if isinstance(z, types.Float) and z.bitwidth == 32:
        return lambda z: _sigmoid_float32(z)
    return lambda z: _sigmoid_libm(z)


# float32 tanh, evaluated in float64 (see :func:`tanh`).  Below TANH_SMALL, the odd Taylor series
# x * (1 + x^2 P(x^2)) to x^15: its first omitted term is under 5e-12 of the value there.
# From TANH_SMALL, 1 - 2 / (e^2a + 1) with e^2a by ``_exp_scaled(2a, 5, 12)``, a = |x| at most
# TANH_ONE, past which tanh rounds to 1 in float32.  Either error is far below float32's half
# ulp (3e-8), so the one rounding to float32 decides the result.
TANH_SMALL = 0.3125
TANH_ONE = 9.1
_TANH_TAYLOR = (1.0, -1.0 / 3.0, 2.0 / 15.0, -17.0 / 315.0, 62.0 / 2835.0, -1382.0 / 155925.0,
                21844.0 / 6081075.0, -929569.0 / 638512875.0)


@dated_njit(inline="always", error_model="numpy")
def _tanh_float32(z):
    """tanh of a float32 ``z``, correctly rounded but for one value in 4 million (never off by
    more than 0.5000002 ulp in a test of 4 million values), as float64 arithmetic that
    vectorizes (no libm call, no branch): both formulas are computed and one is selected.
    """
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
    q = _exp_scaled(2.0 * (a if a < TANH_ONE else TANH_ONE), 5, 12)
    big = 1.0 - 2.0 / (q + 1.0)
    big = big if x >= 0 else -big
    r = small if a < TANH_SMALL else big
    # NaN stays NaN (it took the clamped branch), and -0 stays -0.
    r = r if a == a else x
    return x if x == 0 else r


def tanh(z):
    """tanh of a float scalar: :func:`_tanh_float32` for float32 (NumPy's own float32 tanh
    is up to 1.4 ulp off, libm's scalar tanh took 19 ns a value here against 2.7 ns
    vectorized), libm's ``math.tanh`` for float64."""


@overload(tanh, jit_options={"cache": True})
def _tanh_ol(z):
    if isinstance(z, types.Float) and z.bitwidth == 32:
        return lambda z: _tanh_float32(z)
    return lambda z: math.tanh(z)


# Like the derivatives below: a function of its own for the loop in ``gemm._activate_rows``.
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
        return 0.5 * z * (1.0 + math.erf(z * _INV_SQRT2))
    if code == LEAKY_RELU:
        return z if not z < 0 else z * LEAKY_RELU_SLOPE
    if code == ELU:
        return z if not z < 0 else ELU_ALPHA * math.expm1(z)
    if code == SELU:
        return SELU_SCALE * z if not z < 0 else SELU_SCALE * SELU_ALPHA * math.expm1(z)
    if code == SWISH:
        return swish(z)
    if code == SOFTPLUS:
        # log(1 + e^z) without overflow for large z nor loss for very negative z.
        return max(z, 0.0) + math.log1p(math.exp(-abs(z))) if z == z else z
    return z


# The derivatives that ``pack.dz_rows`` gives loops of their own, one function each: a loop
# over ``derivative`` with a constant code would inline all of its branches, which Numba types
# again at each call (dz_rows' compile: 1.8 -> 0.8 s).
@dated_njit(inline="always")
def relu_derivative(z):
    """ReLU's derivative at ``z``: 1 above 0, 0 at and below it, NaN for NaN."""
    return 1.0 if z > 0 else (0.0 if z <= 0 else z)


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
        return 0.5 * (1.0 + math.erf(z * _INV_SQRT2)) + z * _INV_SQRT_2PI * math.exp(-0.5 * z * z)
    if code == LEAKY_RELU:
        return 1.0 if z > 0 else (LEAKY_RELU_SLOPE if z <= 0 else z)
    if code == ELU:
        return 1.0 if z > 0 else (ELU_ALPHA * math.exp(z) if z <= 0 else z)
    if code == SELU:
        return SELU_SCALE if z > 0 else (SELU_SCALE * SELU_ALPHA * math.exp(z) if z <= 0 else z)
    if code == SWISH:
        return swish_derivative(z)
    if code == SOFTPLUS:
        return sigmoid(z)
    return 1.0


@dated_njit()
def softmax_row(z, y):
    """Write the softmax of the 1-D ``z`` into ``y`` (may alias), shifted by the max for safety."""
    n = z.shape[0]
    if n == 0:
        return
    m = z[0]
    for j in range(1, n):
        # ``not <=`` lets a NaN become the max, so the whole row turns NaN as it should.
        if not z[j] <= m:
            m = z[j]
    if m == -np.inf:
        m = 0.0
    s = 0.0
    for j in range(n):
        e = math.exp(z[j] - m)
        y[j] = e
        s += e
    inv = 1.0 / s
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
    """``dz = y * (g - <g, y>)``: the softmax Jacobian-vector product for one row."""
    n = g.shape[0]
    dot = 0.0
    for j in range(n):
        dot += g[j] * y[j]
    for j in range(n):
        dz[j] = y[j] * (g[j] - dot)
