"""Counting kernels of the top-k accuracy metrics of :class:`fastdense.Sequential`.

Like the counting kernels of :mod:`fastdense.kernels.loss`, they count hits in the first ``n``
rows of a batch (the rest is padding) and allocate nothing.
"""

import numpy as np

from fastdense.kernels._codegen import dated_njit
from fastdense.kernels.loss import argmax_row


@dated_njit()
def _in_top_k(y_pred, i, label, k):
    """Whether ``y_pred[i, label]`` is among the row's ``k`` largest scores.

    Keras' rule (``ops.in_top_k``): fewer than ``k`` scores strictly greater, so ties at the
    boundary count in favour; a NaN score at the label counts as ``-inf`` (Keras' JAX and NumPy
    backends).
    """
    s = y_pred[i, label]
    if s != s:
        s = -np.inf
    greater = 0
    for j in range(y_pred.shape[1]):
        if y_pred[i, j] > s:
            greater += 1
    return greater < k


@dated_njit()
def count_top_k_sparse(labels, y_pred, n, k):
    """Rows among the first ``n`` whose integer label is in the top ``k`` scores."""
    hits = 0
    for i in range(n):
        if _in_top_k(y_pred, i, labels[i], k):
            hits += 1
    return hits


@dated_njit()
def count_top_k_categorical(y_true, y_pred, n, k):
    """Rows among the first ``n`` whose target's argmax (first on ties, as Keras' ``argmax``)
    is in the top ``k`` scores."""
    hits = 0
    for i in range(n):
        if _in_top_k(y_pred, i, argmax_row(y_true, i), k):
            hits += 1
    return hits
