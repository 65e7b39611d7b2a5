"""Loss values, their gradients and accuracy counts, one fused pass each.

Every loss kernel takes ``n``, the number of valid leading rows: rows ``n..`` of the buffers are
padding (a fixed-size last batch, so the layers' workspaces keep their shape), and their
gradient rows are set to zero so they contribute nothing to the weight gradients.  The kernel
writes ``d mean_loss / d y_pred`` into ``grad`` (the Keras "sum over batch size" reduction:
per-sample losses averaged over the ``n`` samples) and each sample's loss into ``rows``; the
batch loss is then summed over ``rows`` in row order, so it is identical for any thread count.

Arithmetic is in float64 and rounded once when stored.  ``EPSILON`` is Keras' fuzz factor,
used to clip probabilities for the non-logit cross-entropies.
"""

import math

from numba import prange

from fastdense.kernels._codegen import dated_njit
from fastdense.kernels.activation import sigmoid

EPSILON = 1e-7

#: Below this many elements a kernel runs on one thread: a parallel launch (fork and join)
#: costs more than the work, and far more when another process holds a core.
PARALLEL_MIN = 1 << 15


@dated_njit()
def _mean_rows(rows, n):
    s = 0.0
    for i in range(n):
        s += rows[i]
    return s / n if n > 0 else 0.0


@dated_njit()
def _zero_tail(grad, n):
    # At most one batch of padding: not worth a parallel launch.
    for i in range(n, grad.shape[0]):
        for j in range(grad.shape[1]):
            grad[i, j] = 0.0


@dated_njit(inline="always")
def _sign(x):
    return 1.0 if x > 0 else (-1.0 if x < 0 else x * 0.0)


@dated_njit(parallel=True)
def _regression(y_true, y_pred, grad, rows, n, absolute):
    """Per-sample mean of ``|p - t|`` (``absolute``) or ``(p - t)**2`` and its gradient."""
    d = y_pred.shape[1]
    c = (1.0 if absolute else 2.0) / (n * d)
    if n * d < PARALLEL_MIN:
        for i in range(n):
            _regression_row(i, y_true, y_pred, grad, rows, c, absolute)
    else:
        for i in prange(n):
            _regression_row(i, y_true, y_pred, grad, rows, c, absolute)
    _zero_tail(grad, n)
    return _mean_rows(rows, n)


@dated_njit(inline="always")
def _regression_row(i, y_true, y_pred, grad, rows, c, absolute):
    d = y_pred.shape[1]
    s = 0.0
    for j in range(d):
        e = y_pred[i, j] - y_true[i, j]
        if absolute:
            s += abs(e)
            grad[i, j] = c * _sign(e)
        else:
            s += e * e
            grad[i, j] = c * e
    rows[i] = s / d


@dated_njit()
def mean_squared_error(y_true, y_pred, grad, rows, n):
    """``mean_j (p - t)**2`` per sample; gradient ``2 (p - t) / (n d)``."""
    return _regression(y_true, y_pred, grad, rows, n, False)


@dated_njit()
def mean_absolute_error(y_true, y_pred, grad, rows, n):
    """``mean_j |p - t|`` per sample; gradient ``sign(p - t) / (n d)`` with ``sign(0) = 0``."""
    return _regression(y_true, y_pred, grad, rows, n, True)




@dated_njit(parallel=True)
def binary_crossentropy(y_true, y_pred, grad, rows, n, from_logits):
    """Per sample ``mean_j -(t log p + (1 - t) log(1 - p))``.

    From logits ``z``: ``max(z, 0) - z t + log1p(exp(-|z|))``, gradient ``(sigmoid(z) - t) /
    (n d)``.  From probabilities: ``p`` is clipped to ``[EPSILON, 1 - EPSILON]`` as in Keras;
    the gradient is ``(p - t) / (p (1 - p)) / (n d)`` inside the clip range and 0 outside it
    (the clip's derivative).
    """
    d = y_pred.shape[1]
    c = 1.0 / (n * d)
    if n * d < PARALLEL_MIN:
        for i in range(n):
            _bce_row(i, y_true, y_pred, grad, rows, c, from_logits)
    else:
        for i in prange(n):
            _bce_row(i, y_true, y_pred, grad, rows, c, from_logits)
    _zero_tail(grad, n)
    return _mean_rows(rows, n)


@dated_njit(inline="always")
def _bce_row(i, y_true, y_pred, grad, rows, c, from_logits):
    d = y_pred.shape[1]
    s = 0.0
    for j in range(d):
        t = y_true[i, j]
        x = y_pred[i, j]
        if from_logits:
            s += max(x, 0.0) - x * t + math.log1p(math.exp(-abs(x)))
            grad[i, j] = c * (sigmoid(x) - t)
        else:
            p = x
            inside = 1.0
            if p < EPSILON:
                p = EPSILON
                inside = 0.0
            elif p > 1.0 - EPSILON:
                p = 1.0 - EPSILON
                inside = 0.0
            s -= t * math.log(p) + (1.0 - t) * math.log(1.0 - p)
            grad[i, j] = c * inside * ((1.0 - t) / (1.0 - p) - t / p)
    rows[i] = s / d


@dated_njit(inline="always")
def _row_max(z, i, d):
    m = z[i, 0]
    for j in range(1, d):
        # ``not <=`` lets a NaN win, so a NaN row gives a NaN loss rather than a silent value.
        if not z[i, j] <= m:
            m = z[i, j]
    if m == -math.inf:
        m = 0.0
    return m


@dated_njit(parallel=True)
def categorical_crossentropy(y_true, y_pred, grad, rows, n, from_logits):
    """Per sample ``-sum_j t_j log p_j``.

    From logits ``z``: ``p = softmax(z)`` through a stable log-sum-exp, gradient
    ``(p - t) / n`` (exactly ``(p - t) / n`` only when ``sum t = 1``; in general
    ``(p sum(t) - t) / n``).  From probabilities: Keras first renormalizes
    ``q = p / sum(p)`` and clips ``q`` to ``[EPSILON, 1 - EPSILON]``; the gradient goes through
    both (zero through a clipped entry).
    """
    d = y_pred.shape[1]
    c = 1.0 / n
    if n * d < PARALLEL_MIN:
        for i in range(n):
            _cce_row(i, y_true, y_pred, grad, rows, c, from_logits)
    else:
        for i in prange(n):
            _cce_row(i, y_true, y_pred, grad, rows, c, from_logits)
    _zero_tail(grad, n)
    return _mean_rows(rows, n)


@dated_njit(inline="always")
def _cce_row(i, y_true, y_pred, grad, rows, c, from_logits):
    d = y_pred.shape[1]
    if from_logits:
        m = _row_max(y_pred, i, d)
        se = 0.0
        for j in range(d):
            se += math.exp(y_pred[i, j] - m)
        lse = m + math.log(se)
        tsum = 0.0
        s = 0.0
        for j in range(d):
            t = y_true[i, j]
            tsum += t
            s -= t * (y_pred[i, j] - lse)
        for j in range(d):
            p = math.exp(y_pred[i, j] - lse)
            grad[i, j] = c * (p * tsum - y_true[i, j])
        rows[i] = s
    else:
        total = 0.0
        for j in range(d):
            total += y_pred[i, j]
        # dL/dp_k = -t_k / p_k [k unclipped] + (1 / S) sum_{j unclipped} t_j.
        acc = 0.0
        s = 0.0
        for j in range(d):
            q = y_pred[i, j] / total
            t = y_true[i, j]
            if q < EPSILON:
                s -= t * math.log(EPSILON)
            elif q > 1.0 - EPSILON:
                s -= t * math.log(1.0 - EPSILON)
            else:
                s -= t * math.log(q)
                acc += t
        for j in range(d):
            q = y_pred[i, j] / total
            g = acc / total
            if EPSILON <= q <= 1.0 - EPSILON:
                g -= y_true[i, j] / y_pred[i, j]
            elif q != q:
                g = q
            grad[i, j] = c * g
        rows[i] = s


@dated_njit(parallel=True)
def sparse_categorical_crossentropy(labels, y_pred, grad, rows, n, from_logits):
    """:func:`categorical_crossentropy` with integer class ``labels`` (valid, in ``[0, d)``)."""
    d = y_pred.shape[1]
    c = 1.0 / n
    if n * d < PARALLEL_MIN:
        for i in range(n):
            _sparse_row(i, labels, y_pred, grad, rows, c, from_logits)
    else:
        for i in prange(n):
            _sparse_row(i, labels, y_pred, grad, rows, c, from_logits)
    _zero_tail(grad, n)
    return _mean_rows(rows, n)


@dated_njit(inline="always")
def _sparse_row(i, labels, y_pred, grad, rows, c, from_logits):
    d = y_pred.shape[1]
    k = labels[i]
    if from_logits:
        m = _row_max(y_pred, i, d)
        se = 0.0
        for j in range(d):
            se += math.exp(y_pred[i, j] - m)
        lse = m + math.log(se)
        rows[i] = lse - y_pred[i, k]
        for j in range(d):
            grad[i, j] = c * math.exp(y_pred[i, j] - lse)
        grad[i, k] -= c
    else:
        total = 0.0
        for j in range(d):
            total += y_pred[i, j]
        q = y_pred[i, k] / total
        inside = EPSILON <= q <= 1.0 - EPSILON
        qc = min(max(q, EPSILON), 1.0 - EPSILON) if q == q else q
        rows[i] = -math.log(qc)
        g = c / total if inside else 0.0
        for j in range(d):
            grad[i, j] = g
        if inside:
            grad[i, k] -= c / y_pred[i, k]


@dated_njit()
def argmax_row(a, i):
    """Column of the largest ``a[i, j]``, the first on ties (Keras' ``argmax``)."""
    d = a.shape[1]
    best = 0
    m = a[i, 0]
    for j in range(1, d):
        if a[i, j] > m:
            m = a[i, j]
            best = j
    return best


@dated_njit()
def count_categorical(y_true, y_pred, n):
    """Rows among the first ``n`` whose argmax agrees (ties: first index, as NumPy)."""
    hits = 0
    for i in range(n):
        if argmax_row(y_true, i) == argmax_row(y_pred, i):
            hits += 1
    return hits


@dated_njit()
def count_sparse(labels, y_pred, n):
    """Rows among the first ``n`` whose argmax equals the integer label."""
    hits = 0
    for i in range(n):
        if argmax_row(y_pred, i) == labels[i]:
            hits += 1
    return hits


@dated_njit()
def count_binary(y_true, y_pred, n, threshold):
    """Elements of the first ``n`` rows with ``(p > threshold) == (t > 0.5)``."""
    hits = 0
    for i in range(n):
        for j in range(y_pred.shape[1]):
            if (y_pred[i, j] > threshold) == (y_true[i, j] > 0.5):
                hits += 1
    return hits


@dated_njit(parallel=True)
def gather_rows(src, index, start, n, dst):
    """``dst[:n] = src[index[start:start + n]]`` and ``dst[n:] = 0`` (padding rows).

    ``src`` and ``dst`` are 2-D with the same number of columns.
    """
    m = dst.shape[0]
    if m * dst.shape[1] < PARALLEL_MIN:
        for r in range(m):
            _gather_row(r, src, index, start, n, dst)
    else:
        for r in prange(m):
            _gather_row(r, src, index, start, n, dst)


@dated_njit(inline="always")
def _gather_row(r, src, index, start, n, dst):
    d = dst.shape[1]
    if r < n:
        s = index[start + r]
        for j in range(d):
            dst[r, j] = src[s, j]
    else:
        for j in range(d):
            dst[r, j] = 0


@dated_njit()
def gather_labels(src, index, start, n, dst):
    """``dst[:n] = src[index[start:start + n]]`` and ``dst[n:] = 0`` for 1-D integer labels."""
    for r in range(dst.shape[0]):
        dst[r] = src[index[start + r]] if r < n else 0


@dated_njit()
def gather_batch(x, labels, index, start, n, xb, yb):
    """:func:`gather_rows` of ``x`` into ``xb`` and :func:`gather_labels` of ``labels`` into
    ``yb`` in one call (a training step gathers both)."""
    gather_rows(x, index, start, n, xb)
    gather_labels(labels, index, start, n, yb)
