"""Check each implementation's result against float64 NumPy before it is timed.

A fast but wrong kernel must fail the benchmark, not win it.  Every output is compared
element by element with a float64 reference, within a bound that grows with the reduction
length ``K`` of the product that made it::

    |got - ref| <= SLACK * eps(dtype) * (sqrt(K) * (|A| @ |B|) + |ref|)

``eps * sqrt(K) * (|A| @ |B|)`` is the typical rounding error of a length-``K`` dot product
(errors of opposite sign cancel like a random walk; the worst case, ``K * eps``, is too loose
to catch a kernel that drops a term).  ``SLACK`` covers summation orders and FMA use.
"""

from __future__ import annotations

import numpy as np

from fastdense.bench.cases import Case
from fastdense.bench.workloads import Inputs
from fastdense.reference import act_backward, act_forward

SLACK = 8.0


class DisagreementError(AssertionError):
    """An implementation's result is outside the rounding bound of the float64 reference."""


def bound(abs_product: np.ndarray, k: int, ref: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Element-wise error bound for a length-``k`` product with ``|A| @ |B|`` = ``abs_product``.

    Parameters
    ----------
    abs_product : ndarray
        ``|A| @ |B|`` (or the matching sum of absolute terms), in float64.
    k : int
        Reduction length.
    ref : ndarray
        The float64 reference value.
    dtype : dtype
        The dtype the implementation computed in.
    """
    eps = float(np.finfo(dtype).eps)
    return SLACK * eps * (np.sqrt(max(k, 1)) * abs_product + np.abs(ref))


def references(case: Case, inputs: Inputs, got: dict[str, np.ndarray]
               ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Float64 reference and bound for each output of ``case``.

    For ``backprop`` and ``train_step`` the ReLU mask is taken from the implementation's own
    forward output ``got["y"]`` (itself checked): an activation within rounding of zero may
    fall on either side, and that legitimate difference must not fail the gradients.  For
    the other activations, ``z``'s rounding bound is carried through them: times the largest
    slope over ``z`` plus or minus that bound for ``y``, and times the largest change of the
    slope there for ``dz`` (a kink near ``z``, as leaky ReLU's, then allows either side).

    Returns
    -------
    dict of str to (ref, bound)
    """
    dt = np.dtype(case.dtype)
    x = inputs.x.astype(np.float64)
    w = inputs.w.astype(np.float64)
    k = x.shape[1]
    if case.op == "gemm":
        ref = x @ w
        return {"out": (ref, bound(np.abs(x) @ np.abs(w), k, ref, dt))}
    b = inputs.bias.astype(np.float64)
    z = x @ w + b
    z_abs = np.abs(x) @ np.abs(w) + np.abs(b)
    name = case.activation
    g = inputs.dldy.astype(np.float64)
    # What the activation adds to the error: |act'| (and, for the gradients, the change of
    # act') over the product's own error interval around z.
    dz_err = np.zeros_like(z)
    if name == "relu":
        y = np.maximum(z, 0.0)
        y_bound = bound(z_abs, k, y, dt)
    else:
        y = act_forward(name, z)
        z_bound = bound(z_abs, k, z, dt)
        slopes = [act_backward(name, c, act_forward(name, c), np.ones_like(c))
                  for c in (z - z_bound, z, z + z_bound)]
        y_bound = np.max(np.abs(slopes), axis=0) * z_bound + bound(np.abs(y), 1, y, dt)
        dz_err = np.abs(g) * np.max(np.abs(np.array(slopes) - slopes[1]), axis=0)
    out = {"y": (y, y_bound)}
    if case.op == "forward":
        return out
    m, n = g.shape
    if name == "relu":
        dz = g * (np.asarray(got["y"]) > 0)
    else:
        dz = act_backward(name, z, y, g)
        dz_err = dz_err + bound(np.abs(dz), 1, dz, dt)
    dw = x.T @ dz
    db = dz.sum(axis=0)
    dx = dz @ w.T
    dw_bound = bound(np.abs(x).T @ np.abs(dz), m, dw, dt) + np.abs(x).T @ dz_err
    db_bound = bound(np.abs(dz).sum(axis=0), m, db, dt) + dz_err.sum(axis=0)
    lr = inputs.lr
    new_w = w - lr * dw
    new_b = b - lr * db
    out["dx"] = (dx, bound(np.abs(dz) @ np.abs(w).T, n, dx, dt) + dz_err @ np.abs(w).T)
    # The update adds the gradient's error (scaled by lr) to the rounding of the subtraction.
    out["weight"] = (new_w, lr * dw_bound + bound(np.abs(w) + lr * np.abs(dw), 1, new_w, dt))
    out["bias"] = (new_b, lr * db_bound + bound(np.abs(b) + lr * np.abs(db), 1, new_b, dt))
    return out


def check(case: Case, impl: str, inputs: Inputs, got: dict[str, np.ndarray]) -> float:
    """Raise unless every output of ``impl`` is within its bound.

    Returns
    -------
    float
        The worst ratio ``|got - ref| / bound`` over all outputs (at most 1).

    Raises
    ------
    DisagreementError
        With the output's name, the worst element and its error.
    """
    worst = 0.0
    for name, (ref, tol) in references(case, inputs, got).items():
        if name not in got:
            raise DisagreementError(f"{impl} {case.group}: output {name!r} is missing")
        value = np.asarray(got[name], dtype=np.float64)
        if value.shape != ref.shape:
            raise DisagreementError(
                f"{impl} {case.group}: {name} has shape {value.shape}, expected {ref.shape}")
        err = np.abs(value - ref)
        # Where err is NaN (a NaN or inf result) the ratio is NaN: treat it as a failure.
        ratio = np.where(np.isfinite(err), err / np.maximum(tol, np.finfo(np.float64).tiny),
                         np.inf)
        idx = np.unravel_index(int(np.argmax(ratio)), ratio.shape) if ratio.size else ()
        r = float(ratio[idx]) if ratio.size else 0.0
        if r > 1.0:
            raise DisagreementError(
                f"{impl} {case.group}: {name} disagrees with float64 NumPy at {idx}: "
                f"got {value[idx]!r}, expected {ref[idx]!r} (error {err[idx]:.3g} > bound "
                f"{tol[idx]:.3g}, {r:.3g}x the rounding bound)")
        worst = max(worst, r)
    return worst
