"""In-place parameter updates, with the L1/L2 penalty gradient fused in.

Every kernel works on flat 1-D views of one parameter, its gradient and its slot arrays, and
follows Keras' order of operations for one ``apply``:

1. the gradient of the loss *including* the L1/L2 penalty, ``g + l1 * sign(w) + 2 * l2 * w``
   (Keras adds regularization losses to the loss, so clipping sees the penalty too);
2. clipping: ``g * scale`` with ``scale = clipnorm / max(||g||, clipnorm)`` precomputed by
   :func:`penalized_sumsq`, or ``clip(g, -clipvalue, clipvalue)`` (``clipvalue <= 0`` is off);
3. decoupled weight decay ``w -= w * decay`` with ``decay = weight_decay * learning_rate``;
4. the optimizer's own step.

Each element is independent, so ``prange`` splits them over threads with the same result for
any thread count.  Arithmetic is in float64 and rounded once when stored back (the "plain"
Adam kernels compute in the parameter's dtype, as Keras does).  The kernels use Numba's
``error_model="numpy"``: a division by zero gives inf/NaN as in NumPy instead of a Python
exception, which lets LLVM vectorize the loops (about 5x faster for Adam); results are
otherwise bitwise the same.
"""

import math

import numpy as np
from numba import prange

from fastdense.kernels._codegen import dated_njit

#: Below this many elements the updates run on one thread: a parallel launch (fork and join)
#: costs more than the work, and far more when another process holds a core.
PARALLEL_MIN = 1 << 15

#: Elements per partial sum in :func:`penalized_sumsq`; fixed so that the reduction order, and
#: hence the clipnorm scale, does not depend on the number of threads.
SUMSQ_BLOCK = 4096


@dated_njit(inline="always", error_model="numpy")
def penalty_grad(w, l1, l2):
    """``l1 * sign(w) + 2 * l2 * w``; ``sign(0) = 0`` and a NaN weight stays NaN."""
    s = 1.0 if w > 0 else (-1.0 if w < 0 else w * 0.0)
    return l1 * s + 2.0 * l2 * w


@dated_njit(inline="always", error_model="numpy")
def _clipped(w, g, l1, l2, scale, clipvalue):
    """Steps 1 and 2 above for one element; comparisons written so that NaN stays NaN."""
    gi = g + penalty_grad(w, l1, l2) if (l1 != 0.0 or l2 != 0.0) else g
    gi = gi * scale
    if clipvalue > 0.0:
        if gi > clipvalue:
            gi = clipvalue
        elif gi < -clipvalue:
            gi = -clipvalue
    return gi


@dated_njit(inline="always", error_model="numpy")
def sgd_value(w, g, lr, l1, l2):
    """One weight after plain SGD, ``w - lr * (g + l1 * sign(w) + 2 * l2 * w)`` in float64,
    without the penalty term when ``l1 = l2 = 0`` (so that an infinite weight stays so).

    The one place the SGD formula lives: :func:`sgd_step` and the batch-1 backward pass
    (``dense._row_steps``) apply it element by element; the micro-kernels' ``sgd_n`` repeats its
    arithmetic in vector IR.  Callers split their loops on ``l1 == 0.0 and l2 == 0.0`` and pass
    literal zeros in the plain loop, where the test then folds away.
    """
    if l1 == 0.0 and l2 == 0.0:
        return w - lr * g
    return w - lr * (g + penalty_grad(w, l1, l2))


@dated_njit(inline="always", error_model="numpy")
def sgd_step(param, grad, lr, l1, l2):
    """``param -= lr * (grad + l1 * sign(param) + 2 * l2 * param)`` on 1-D slices, serially
    (:func:`sgd_value`): :func:`sgd` runs it over chunks in parallel, and the GEMM epilogue
    calls it on tile rows and the layers on the bias."""
    if l1 == 0.0 and l2 == 0.0:
        for i in range(param.shape[0]):
            param[i] = sgd_value(param[i], grad[i], lr, 0.0, 0.0)
    else:
        for i in range(param.shape[0]):
            param[i] = sgd_value(param[i], grad[i], lr, l1, l2)


@dated_njit(parallel=True, error_model="numpy")
def sgd(param, grad, lr, l1, l2):
    """``param -= lr * (grad + l1 * sign(param) + 2 * l2 * param)`` on flat 1-D arrays."""
    n = param.shape[0]
    if n < PARALLEL_MIN:
        sgd_step(param, grad, lr, l1, l2)
        return
    # Element-wise, so the split changes no result; chunks keep the inner loop vectorized.
    chunk = PARALLEL_MIN
    for c in prange((n + chunk - 1) // chunk):
        lo = c * chunk
        hi = min(n, lo + chunk)
        sgd_step(param[lo:hi], grad[lo:hi], lr, l1, l2)


@dated_njit(parallel=True, error_model="numpy")
def penalized_sumsq(param, grad, l1, l2, partial):
    """``sum((grad + penalty_grad(param))**2)``, the squared norm that ``clipnorm`` uses.

    ``partial`` (at least ``ceil(n / SUMSQ_BLOCK)`` long) receives one partial sum per fixed
    block; the blocks are then added in order, so the result is the same for every thread
    count.
    """
    n = param.shape[0]
    nblocks = (n + SUMSQ_BLOCK - 1) // SUMSQ_BLOCK
    for b in prange(nblocks):
        lo = b * SUMSQ_BLOCK
        hi = min(n, lo + SUMSQ_BLOCK)
        s = 0.0
        for i in range(lo, hi):
            gi = grad[i] + penalty_grad(param[i], l1, l2)
            s += gi * gi
        partial[b] = s
    total = 0.0
    for b in range(nblocks):
        total += partial[b]
    return total


@dated_njit(parallel=True, error_model="numpy")
def sgd_full(param, grad, velocity, lr, momentum, nesterov, l1, l2, scale, clipvalue, decay):
    """Keras' SGD with momentum, Nesterov, clipping and decoupled weight decay.

    ``m = momentum * m - lr * g``; then ``w += m`` or, with Nesterov,
    ``w += momentum * m - lr * g``.  Without momentum (``velocity`` may then be empty)
    ``w -= lr * g``.
    """
    n = param.shape[0]
    if n < PARALLEL_MIN:
        for i in range(n):
            _sgd_elem(i, param, grad, velocity, lr, momentum, nesterov, l1, l2, scale,
                      clipvalue, decay)
    else:
        for i in prange(n):
            _sgd_elem(i, param, grad, velocity, lr, momentum, nesterov, l1, l2, scale,
                      clipvalue, decay)


@dated_njit(inline="always", error_model="numpy")
def _sgd_elem(i, param, grad, velocity, lr, momentum, nesterov, l1, l2, scale, clipvalue,
              decay):
    w = param[i]
    g = _clipped(w, grad[i], l1, l2, scale, clipvalue)
    w = w - w * decay
    if momentum != 0.0:
        m = -g * lr + velocity[i] * momentum
        velocity[i] = m
        if nesterov:
            w = w + (-g * lr + m * momentum)
        else:
            w = w + m
    else:
        w = w - g * lr
    param[i] = w


@dated_njit(parallel=True, error_model="numpy")
def adam(param, grad, m, v, vhat, alpha, beta_1, beta_2, epsilon, amsgrad, l1, l2, scale,
         clipvalue, decay):
    """Keras' Adam / AdamW step with the bias correction folded into ``alpha``.

    ``alpha = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)``, ``m += (g - m) * (1 - beta_1)``,
    ``v += (g**2 - v) * (1 - beta_2)``, with AMSGrad ``vhat = max(vhat, v)`` used in place of
    ``v``; ``w -= alpha * m / (sqrt(v) + epsilon)``.  ``vhat`` may be empty without AMSGrad.
    """
    n = param.shape[0]
    if n < PARALLEL_MIN:
        for i in range(n):
            _adam_elem(i, param, grad, m, v, vhat, alpha, beta_1, beta_2, epsilon, amsgrad,
                       l1, l2, scale, clipvalue, decay)
    else:
        for i in prange(n):
            _adam_elem(i, param, grad, m, v, vhat, alpha, beta_1, beta_2, epsilon, amsgrad,
                       l1, l2, scale, clipvalue, decay)


@dated_njit(parallel=True, error_model="numpy")
def adam_plain(param, grad, m, v, alpha, one_minus_beta_1, one_minus_beta_2, epsilon):
    """:func:`adam` without penalty, clipping, decay or AMSGrad, in the scalars' dtype.

    The scalars come typed as the parameter's dtype, so float32 parameters are updated in
    float32 arithmetic, as Keras computes in the variable's dtype; the straight-line body
    lets the compiler vectorize it.
    """
    n = param.shape[0]
    if n < PARALLEL_MIN:
        for i in range(n):
            _adam_plain_elem(i, param, grad, m, v, alpha, one_minus_beta_1, one_minus_beta_2,
                             epsilon)
    else:
        for i in prange(n):
            _adam_plain_elem(i, param, grad, m, v, alpha, one_minus_beta_1, one_minus_beta_2,
                             epsilon)


@dated_njit(parallel=True, error_model="numpy")
def adam_plain_many(params, grads, ms, vs, alphas, consts):
    """:func:`adam_plain` on several parameters in one call (one step of a whole model).

    ``params``, ``grads``, ``ms``, ``vs`` are equally long tuples of flat arrays of one dtype;
    ``alphas[k]`` is parameter ``k``'s bias-corrected step size and ``consts`` holds
    ``(1 - beta_1, 1 - beta_2, epsilon)``, both arrays of that dtype, so the arithmetic is
    exactly :func:`adam_plain`'s on each parameter.
    """
    omb1 = consts[0]
    omb2 = consts[1]
    epsilon = consts[2]
    for k in range(len(params)):
        param = params[k]
        grad = grads[k]
        m = ms[k]
        v = vs[k]
        alpha = alphas[k]
        n = param.shape[0]
        if n < PARALLEL_MIN:
            for i in range(n):
                _adam_plain_elem(i, param, grad, m, v, alpha, omb1, omb2, epsilon)
        else:
            for i in prange(n):
                _adam_plain_elem(i, param, grad, m, v, alpha, omb1, omb2, epsilon)


@dated_njit(inline="always", error_model="numpy")
def _adam_plain_elem(i, param, grad, m, v, alpha, omb1, omb2, epsilon):
    g = grad[i]
    mi = m[i] + (g - m[i]) * omb1
    vi = v[i] + (g * g - v[i]) * omb2
    m[i] = mi
    v[i] = vi
    param[i] = param[i] - (mi * alpha) / (np.sqrt(vi) + epsilon)


@dated_njit(inline="always", error_model="numpy")
def _adam_elem(i, param, grad, m, v, vhat, alpha, beta_1, beta_2, epsilon, amsgrad, l1, l2,
               scale, clipvalue, decay):
    w = param[i]
    g = _clipped(w, grad[i], l1, l2, scale, clipvalue)
    w = w - w * decay
    m[i] = m[i] + (g - m[i]) * (1.0 - beta_1)
    v[i] = v[i] + (g * g - v[i]) * (1.0 - beta_2)
    # Use the values as stored (rounded to the slot dtype), as Keras reads its variables.
    mi = m[i]
    vi = v[i]
    if amsgrad:
        if not vhat[i] >= vi:
            vhat[i] = vi
        vi = vhat[i]
    param[i] = w - (mi * alpha) / (math.sqrt(vi) + epsilon)


@dated_njit(parallel=True, error_model="numpy")
def rmsprop(param, grad, velocity, mom, avg, lr, rho, momentum, epsilon, centered, l1, l2,
            scale, clipvalue, decay):
    """Keras' RMSprop: ``v = rho * v + (1 - rho) * g**2``, ``inc = lr * g / sqrt(v + eps)``.

    Centered: ``a = rho * a + (1 - rho) * g`` and the denominator is ``sqrt(v - a**2 + eps)``.
    With momentum: ``mom = momentum * mom + inc``, ``w -= mom``; otherwise ``w -= inc``.
    ``mom`` and ``avg`` may be empty when unused.
    """
    n = param.shape[0]
    if n < PARALLEL_MIN:
        for i in range(n):
            _rmsprop_elem(i, param, grad, velocity, mom, avg, lr, rho, momentum, epsilon,
                          centered, l1, l2, scale, clipvalue, decay)
    else:
        for i in prange(n):
            _rmsprop_elem(i, param, grad, velocity, mom, avg, lr, rho, momentum, epsilon,
                          centered, l1, l2, scale, clipvalue, decay)


@dated_njit(inline="always", error_model="numpy")
def _rmsprop_elem(i, param, grad, velocity, mom, avg, lr, rho, momentum, epsilon, centered,
                  l1, l2, scale, clipvalue, decay):
    w = param[i]
    g = _clipped(w, grad[i], l1, l2, scale, clipvalue)
    w = w - w * decay
    velocity[i] = rho * velocity[i] + (1.0 - rho) * (g * g)
    vi = velocity[i]
    if centered:
        avg[i] = rho * avg[i] + (1.0 - rho) * g
        ai = avg[i]
        denom = vi - ai * ai + epsilon
    else:
        denom = vi + epsilon
    inc = lr * g / math.sqrt(denom)
    if momentum > 0.0:
        mom[i] = momentum * mom[i] + inc
        w = w - mom[i]
    else:
        w = w - inc
    param[i] = w


def empty_like_dtype(dtype):
    """A (0,) array standing for an unused slot."""
    return np.empty(0, dtype=dtype)
