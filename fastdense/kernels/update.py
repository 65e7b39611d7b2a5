"""In-place parameter updates, with the L1/L2 penalty gradient fused in."""

from numba import njit, prange


@njit(cache=True, inline="always")
def penalty_grad(w, l1, l2):
    """``l1 * sign(w) + 2 * l2 * w``; ``sign(0) = 0`` and a NaN weight stays NaN."""
    s = 1.0 if w > 0 else (-1.0 if w < 0 else w * 0.0)
    return l1 * s + 2.0 * l2 * w


@njit(cache=True, parallel=True)
def sgd(param, grad, lr, l1, l2):
    """``param -= lr * (grad + l1 * sign(param) + 2 * l2 * param)`` on flat 1-D arrays."""
    n = param.shape[0]
    if l1 == 0.0 and l2 == 0.0:
        for i in prange(n):
            param[i] -= lr * grad[i]
    else:
        for i in prange(n):
            param[i] -= lr * (grad[i] + penalty_grad(param[i], l1, l2))
