"""The Dense layer against the NumPy reference, finite differences, and its contract."""

from __future__ import annotations

import copy
import pickle
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastdense as fd
from fastdense import Dense, DtypeWarning, LayerStateError
from fastdense.dense import _ForwardPlan
from fastdense.kernels import dense as kernels
from fastdense.reference import NumpyDense
from tests.bounds import dots_bound, unit_roundoff
from tests.helpers import (
    ACTIVATIONS,
    Plain,
    backprop_bounds,
    forward_bound,
    pair,
    state_of,
)

DTYPES = [np.float32, np.float64]


def _data(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


# --------------------------------------------------------------------------- agreement


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("use_bias", [True, False])
def test_forward_matches_reference_within_derived_bound(activation, dtype, use_bias):
    rng = np.random.default_rng(1)
    layer, ref = pair(13, activation, dtype, 37, use_bias=use_bias)
    x = _data(rng, (29, 37), dtype)
    y = layer.forward(x)
    y_ref = ref.forward(x.astype(np.float64))
    assert y.dtype == dtype and y.shape == (29, 13)
    b = ref.bias if use_bias else None
    bound = forward_bound(x, ref.weight, b, y_ref, ref._z, activation, dtype)
    err = np.abs(y - y_ref)
    assert np.all(err <= bound), f"max err {err.max()}, bound there {bound.flat[err.argmax()]}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("fused", [True, False], ids=["plain-sgd", "optimizer"])
def test_backprop_and_update_match_reference(activation, dtype, fused):
    rng = np.random.default_rng(2)
    layer, ref = pair(11, activation, dtype, 19, kreg="l2", breg="l1")
    x = _data(rng, (23, 19), dtype)
    g = _data(rng, (23, 11), dtype)
    w0, b0 = (a.astype(np.float64) for a in layer.get_weights())
    layer.forward(x)
    xs, z, y, _ = state_of(layer)
    # The reference differentiates the very state fastdense kept, so both take the same
    # branch at every kink and the comparison isolates backprop.
    ref._x, ref._z, ref._y = xs, z, y
    dW, db, dx_ref = ref.gradients(g.astype(np.float64))
    lr = 0.5
    dx = layer.backprop(g, Plain(lr) if fused else _NotPlainSGD(lr))
    _, dw_err, db_err, dx_err = backprop_bounds(xs, z, y, g.astype(np.float64), w0, activation,
                                                dtype)
    u = unit_roundoff(dtype)
    assert dx.dtype == dtype
    assert np.all(np.abs(dx - dx_ref) <= dx_err)
    w_ref = w0 - lr * dW
    b_ref = b0 - lr * db
    # penalties add a few roundings relative to |w|; the update rounds once more.
    w_bound = lr * (dw_err + 8 * u * (np.abs(dW) + np.abs(w0))) + 4 * u * np.abs(w_ref)
    b_bound = lr * (db_err + 8 * u * (np.abs(db) + np.abs(b0))) + 4 * u * np.abs(b_ref)
    assert np.all(np.abs(layer.weight - w_ref) <= w_bound)
    assert np.all(np.abs(layer.bias - b_ref) <= b_bound)


class _NotPlainSGD(fd.Optimizer):
    """Forces the unfused path: gradients come back to Python, then a separate update."""

    def update(self, param, grad, l1=0.0, l2=0.0):
        param -= self.learning_rate * (grad + l1 * np.sign(param) + 2 * l2 * param)


def test_same_dtype_reference_agrees_in_float32():
    """fastdense and NumpyDense both in float32: the peer the benchmarks time."""
    rng = np.random.default_rng(3)
    layer = Dense(64, activation="relu", seed=0)
    x = _data(rng, (32, 100), np.float32)
    layer.build(100)
    ref = NumpyDense(64, "relu", dtype=np.float32)
    ref.set_weights(layer.get_weights())
    y, y_ref = layer(x), ref(x)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=float(100 * np.finfo(np.float32).eps
                                                            * np.abs(y_ref).max()))


def test_dx_uses_weights_before_update():
    """A large step makes dZ W_new^T far from dZ W_old^T: dx must use the old weights."""
    rng = np.random.default_rng(4)
    layer, _ = pair(5, None, np.float64, 7)
    x, g = rng.standard_normal((6, 7)), rng.standard_normal((6, 5))
    w_old = layer.weight.copy()
    layer.forward(x)
    dx = layer.backprop(g, Plain(10.0))
    np.testing.assert_allclose(dx, g @ w_old.T, rtol=1e-12, atol=1e-12)
    assert not np.allclose(dx, g @ layer.weight.T)


def test_gradients_are_batch_sums_not_means():
    """Two identical rows give twice the one-row gradient: X is kept, db is summed."""
    rng = np.random.default_rng(5)
    x1 = rng.standard_normal((1, 4))
    g1 = rng.standard_normal((1, 3))
    steps = []
    for reps in (1, 2):
        layer = Dense(3, dtype=np.float64, seed=0, bias_initializer="zeros")
        w0 = layer.forward(np.repeat(x1, reps, 0)) is not None and layer.weight.copy()
        layer.backprop(np.repeat(g1, reps, 0), Plain(1.0))
        steps.append((w0 - layer.weight, -layer.bias))
    np.testing.assert_allclose(steps[1][0], 2 * steps[0][0], rtol=1e-13)
    np.testing.assert_allclose(steps[1][1], 2 * steps[0][1], rtol=1e-13)
    np.testing.assert_allclose(steps[0][0], x1.T @ g1, rtol=1e-13)


# --------------------------------------------------------------------------- finite differences

REGULARIZERS = [None, "l1", "l2", "l1_l2",
                (lambda w: 0.3 * np.sum(w ** 4), lambda w: 1.2 * w ** 3)]


def _loss(layer_cfg, weights, x, G):
    probe = Dense.from_config({**layer_cfg, "training": False})
    probe.set_weights(weights)
    loss = float(np.sum(G * probe.forward(x)))
    return loss + probe.regularization_loss()


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("reg", REGULARIZERS, ids=["none", "l1", "l2", "l1_l2", "custom"])
def test_finite_difference_gradients(activation, use_bias, reg):
    rng = np.random.default_rng(6)
    layer = Dense(3, activation=activation, use_bias=use_bias, dtype=np.float64, seed=1,
                  kernel_regularizer=reg, bias_regularizer=reg, bias_initializer="random_normal")
    x = rng.standard_normal((5, 4))
    layer.build(4)
    # Keep every pre-activation away from the kinks of relu-like functions, where a central
    # difference straddles the corner.
    while np.min(np.abs(x @ layer.weight + (layer.bias if use_bias else 0))) < 1e-3:
        x = rng.standard_normal((5, 4))
    G = rng.standard_normal((5, 3))
    cfg = layer.get_config()
    weights = layer.get_weights()
    layer.forward(x)
    dx = layer.backprop(G, Plain(1.0))
    analytic = [w - n for w, n in zip(weights, layer.get_weights(), strict=True)]
    h = 1e-6

    def numeric(array, f):
        out = np.zeros_like(array)
        for idx in np.ndindex(array.shape):
            keep = array[idx]
            array[idx] = keep + h
            up = f()
            array[idx] = keep - h
            down = f()
            array[idx] = keep
            out[idx] = (up - down) / (2 * h)
        return out

    # Central differences are O(h^2) accurate with O(eps / h) cancellation: about 1e-9
    # relative to the loss scale, far below what any wrong gradient term would give.
    scale = 1.0 + np.abs(G).sum()
    tol = 1e-6 * scale
    for i, w in enumerate(weights):
        num = numeric(w, lambda: _loss(cfg, weights, x, G))
        np.testing.assert_allclose(analytic[i], num, atol=tol, rtol=1e-6)
    num_dx = numeric(x, lambda: _loss(cfg, weights, x, G))
    # the penalty does not depend on x, so dL/dx is exactly the layer's dx
    np.testing.assert_allclose(dx, num_dx, atol=tol, rtol=1e-6)


# --------------------------------------------------------------------------- shapes and layout


@pytest.mark.parametrize("dtype", DTYPES)
def test_rank3_input_acts_on_last_axis(dtype):
    rng = np.random.default_rng(7)
    layer = Dense(6, activation="tanh", dtype=dtype, seed=0)
    x = _data(rng, (2, 3, 5), dtype)
    y = layer(x)
    assert y.shape == (2, 3, 6)
    flat = Dense.from_config({**layer.get_config(), "training": False})
    flat.set_weights(layer.get_weights())
    np.testing.assert_array_equal(y.reshape(6, 6), flat(x.reshape(6, 5)))
    dx = layer.backprop(np.ones((2, 3, 6), dtype), Plain(0.1))
    assert dx.shape == x.shape and dx.dtype == dtype


def test_one_dimensional_input_is_one_sample():
    layer = Dense(4, seed=0, dtype=np.float64)
    x = np.arange(3.0)
    y = layer(x)
    assert y.shape == (4,)
    np.testing.assert_allclose(y, x @ layer.weight + layer.bias, rtol=1e-14)
    dx = layer.backprop(np.ones(4), Plain(0.0))
    assert dx.shape == (3,)
    np.testing.assert_allclose(dx, layer.weight.sum(axis=1), rtol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch(dtype):
    layer = Dense(4, dtype=dtype, seed=0, kernel_regularizer="l2")
    y = layer(np.empty((0, 3), dtype))
    assert y.shape == (0, 4) and y.dtype == dtype
    w0 = layer.weight.copy()
    dx = layer.backprop(np.empty((0, 4), dtype), Plain(0.1))
    assert dx.shape == (0, 3)
    # no data: only the penalty moves the weights
    np.testing.assert_allclose(layer.weight, w0 - 0.1 * 2 * 0.01 * w0, rtol=1e-6)


@pytest.mark.parametrize("layout", ["fortran", "strided", "transposed-view"])
def test_non_contiguous_inputs_give_identical_results(layout):
    rng = np.random.default_rng(8)
    base = _data(rng, (12, 10), np.float32)
    if layout == "fortran":
        x = np.asfortranarray(base)
    elif layout == "strided":
        big = np.zeros((24, 20), np.float32)
        big[::2, ::2] = base
        x = big[::2, ::2]
    else:
        x = np.ascontiguousarray(base.T).T
    assert not x.flags.c_contiguous
    a = Dense(7, activation="relu", seed=3)
    b = Dense(7, activation="relu", seed=3)
    np.testing.assert_array_equal(a(x), b(np.ascontiguousarray(x)))
    g = _data(rng, (12, 7), np.float32)
    g_f = np.asfortranarray(g)
    np.testing.assert_array_equal(a.backprop(g_f, Plain(0.1)), b.backprop(g, Plain(0.1)))
    np.testing.assert_array_equal(a.weight, b.weight)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_nan_and_inf_propagate_per_sample(activation):
    layer = Dense(4, activation=activation, seed=0, dtype=np.float64)
    x = np.ones((3, 5))
    x[1, 2] = np.nan
    y = layer(x)
    assert np.all(np.isnan(y[1])), y[1]
    assert np.all(np.isfinite(y[[0, 2]]))
    x[1, 2] = np.inf
    y = layer(x)
    assert np.all(np.isfinite(y[[0, 2]]))
    if activation == "linear":
        # each unit gets +-inf * w plus finite terms: an infinity, never a finite number
        assert np.all(np.isinf(y[1]))


def test_nan_in_upstream_gradient_reaches_weights():
    layer = Dense(2, seed=0, dtype=np.float64)
    layer(np.ones((2, 3)))
    g = np.array([[np.nan, 0.0], [0.0, 0.0]])
    dx = layer.backprop(g, Plain(0.1))
    assert np.all(np.isnan(dx[0])) and np.all(np.isfinite(dx[1]))
    assert np.all(np.isnan(layer.weight[:, 0])) and np.all(np.isfinite(layer.weight[:, 1]))


# --------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("in_dtype", [np.float64, np.int32, np.bool_, np.float16, np.uint8])
def test_other_real_dtypes_warn_once_and_cast(in_dtype):
    layer = Dense(3, seed=0)
    x = np.ones((2, 4), dtype=in_dtype)
    with pytest.warns(DtypeWarning, match="float32"):
        y = layer(x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, Dense(3, seed=0)(np.ones((2, 4), np.float32)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(x)  # second time: silent


@pytest.mark.parametrize("bad", [np.ones((2, 3), complex), np.array([["a", "b"]]),
                                 np.array([[object(), 1]], dtype=object)],
                         ids=["complex", "str", "object"])
def test_non_real_inputs_raise_type_error(bad):
    layer = Dense(3, seed=0)
    with pytest.raises(TypeError, match="real"):
        layer(bad)
    assert not layer.built


def test_float64_layer():
    layer = Dense(3, dtype="float64", seed=0)
    assert layer(np.ones((2, 2))).dtype == np.float64
    assert layer.weight.dtype == np.float64 and layer.bias.dtype == np.float64


@pytest.mark.parametrize("dtype", [np.int32, np.float16, "complex64", "nonsense"])
def test_unsupported_layer_dtype(dtype):
    with pytest.raises(TypeError, match="float32 or float64"):
        Dense(3, dtype=dtype)


# --------------------------------------------------------------------------- training flag


def test_training_false_keeps_nothing_and_backprop_raises():
    layer = Dense(3, seed=0, training=False)
    layer(np.ones((2, 2), np.float32))
    assert layer._cache is None
    with pytest.raises(RuntimeError, match="training=False"):
        layer.backprop(np.ones((2, 3), np.float32), fd.SGD())
    layer.training = True
    layer(np.ones((2, 2), np.float32))
    layer.backprop(np.ones((2, 3), np.float32), fd.SGD())


def test_each_forward_allows_one_backprop():
    layer = Dense(3, seed=0)
    layer(np.ones((2, 2), np.float32))
    layer.backprop(np.ones((2, 3), np.float32), fd.SGD())
    with pytest.raises(LayerStateError, match="forward pass first"):
        layer.backprop(np.ones((2, 3), np.float32), fd.SGD())


def test_regularization_loss():
    layer = Dense(3, seed=0, kernel_regularizer=fd.regularizers.L1L2(0.1, 0.2),
                  bias_regularizer="l2", bias_initializer="ones", dtype=np.float64)
    assert layer.regularization_loss() == 0.0
    layer.build(4)
    w = layer.weight
    expected = 0.1 * np.abs(w).sum() + 0.2 * (w ** 2).sum() + 0.01 * 3
    assert layer.regularization_loss() == pytest.approx(expected, rel=1e-12)


def test_sgd_learning_rate_and_kernel_alias():
    layer = Dense(2, seed=0, dtype=np.float64)
    assert layer.kernel is None
    layer(np.ones((1, 2)))
    assert layer.kernel is layer.weight
    w0 = layer.weight.copy()
    layer.backprop(np.ones((1, 2)), fd.SGD(learning_rate=0.25))
    np.testing.assert_allclose(layer.weight, w0 - 0.25, rtol=1e-14)
    assert fd.SGD().learning_rate == 0.01


# --------------------------------------------------------------------------- determinism


def test_bitwise_identical_for_one_and_two_threads():
    rng = np.random.default_rng(9)
    x = _data(rng, (64, 300), np.float32)
    g = _data(rng, (64, 200), np.float32)
    results = []
    for n in (1, 2):
        with fd.threads(n):
            layer = Dense(200, activation="gelu", seed=4, bias_initializer="random_normal")
            y = layer(x)
            dx = layer.backprop(g, fd.SGD(0.1))
            results.append((y, dx, layer.weight.copy(), layer.bias.copy()))
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("activation", ["relu", "softmax", "linear"])
def test_skipping_the_input_gradient_updates_the_same(activation):
    rng = np.random.default_rng(10)
    x = _data(rng, (40, 70), np.float32)
    g = _data(rng, (40, 50), np.float32)
    a, b = (Dense(50, activation=activation, seed=1) for _ in range(2))
    a(x)
    b(x)
    assert a.backprop(g, fd.SGD(0.1), compute_input_grad=False) is None
    assert b.backprop(g, fd.SGD(0.1)).shape == x.shape
    np.testing.assert_array_equal(a.weight, b.weight)
    np.testing.assert_array_equal(a.bias, b.bias)


# --------------------------------------------------------------------------- repeated calls
# A forward call replays the decisions of the previous one when nothing relevant changed
# (Dense._replay); these tests change one thing at a time and compare with a fresh layer.


def _fresh_output(layer, x):
    """What a new layer with ``layer``'s configuration and weights returns for ``x``."""
    twin = Dense(layer.units, activation=layer.activation.name, dtype=layer.dtype,
                 training=layer.training)
    twin.set_weights(layer.get_weights())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DtypeWarning)
        return twin(x)


@pytest.mark.parametrize("batch", [1, 2, 5, 40])
def test_repeated_forward_returns_a_new_array_each_call(batch):
    rng = np.random.default_rng(11)
    x = _data(rng, (batch, 33), np.float32)
    layer = Dense(20, activation="relu", seed=0)
    y1 = layer(x)
    y1_copy = y1.copy()
    y2 = layer(x)
    assert y2 is not y1 and not np.shares_memory(y1, y2)
    np.testing.assert_array_equal(y1, y1_copy)  # the second call did not write into y1
    np.testing.assert_array_equal(y2, y1)


def _change(layer, x, what):
    """Change one thing the replayed forward depends on; return the next input."""
    rng = np.random.default_rng(12)
    if what == "set_weights":
        layer.set_weights([w + 1 for w in layer.get_weights()])
    elif what == "weight_in_place":
        layer.weight[...] *= -1
    elif what == "weight_attribute":
        layer.weight = layer.weight * 2
    elif what == "bias_attribute":
        layer.bias = layer.bias + 3
    elif what == "training":
        layer.training = not layer.training
    elif what == "activation":
        layer.activation = fd.activations.get("tanh")
    elif what == "batch":
        return _data(rng, (x.shape[0] + 1, x.shape[1]), np.float32)
    elif what == "values":
        return x + 1
    elif what == "strides":
        big = np.zeros((x.shape[0], 2 * x.shape[1]), np.float32)
        big[:, ::2] = x
        return big[:, ::2]
    elif what == "row_stride":
        # Every other row: not contiguous for several rows; C-contiguous for one row, whose
        # stride then differs from the recorded input's.
        rows = np.zeros((2 * x.shape[0], x.shape[1]), np.float32)
        rows[::2] = x + 1
        return rows[::2]
    elif what == "dtype":
        return x.astype(np.float64)
    elif what == "rank":
        return x.reshape(1, *x.shape)
    elif what == "read_only":
        x = x.copy()
        x.flags.writeable = False
        return x
    elif what == "unaligned":
        raw = np.zeros(x.nbytes + 1, np.uint8)
        moved = np.frombuffer(raw.data, np.float32, x.size, offset=1).reshape(x.shape)
        moved[...] = x
        assert not moved.flags.aligned
        return moved
    return x


@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("what", ["set_weights", "weight_in_place", "weight_attribute",
                                  "bias_attribute", "training", "activation", "batch", "values",
                                  "strides", "row_stride", "dtype", "rank", "read_only",
                                  "unaligned"])
def test_repeated_forward_sees_every_change(batch, what):
    rng = np.random.default_rng(13)
    x = _data(rng, (batch, 9), np.float32)
    layer = Dense(6, activation="relu", seed=0, bias_initializer="random_normal")
    layer(x)
    layer(x)
    x = _change(layer, x, what)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DtypeWarning)
        y = layer(x)
    np.testing.assert_array_equal(y, _fresh_output(layer, x))
    assert (layer._cache is not None) == layer.training


@pytest.mark.parametrize("activation", ["relu", "gelu", "softmax"])
def test_backprop_after_repeated_forward(activation):
    rng = np.random.default_rng(14)
    x = _data(rng, (3, 8), np.float32)
    g = _data(rng, (3, 5), np.float32)
    a, b = (Dense(5, activation=activation, seed=2) for _ in range(2))
    a(x + 1)
    a(x)  # replayed: the state for backprop must be this call's
    b(x)
    np.testing.assert_array_equal(a.backprop(g, fd.SGD(0.1)), b.backprop(g, fd.SGD(0.1)))
    np.testing.assert_array_equal(a.weight, b.weight)
    np.testing.assert_array_equal(a(x), b(x))  # and the next forward sees the update


@pytest.mark.parametrize("change", ["none", "input_grad", "regularizer", "bias_regularizer",
                                    "optimizer", "batch", "learning_rate", "weights",
                                    "weight_attribute", "activation", "reuse_outputs"])
def test_repeated_backprop_matches_the_full_path(change):
    """Steps whose upstream gradient is a C-contiguous array replay the previous backprop's
    decisions; a Fortran-ordered copy of the same gradient always takes the full path.  The
    two layers must stay bitwise equal through a change of each thing the replay depends on."""
    rng = np.random.default_rng(15)
    a, b = (Dense(6, activation="relu", seed=3, bias_initializer="random_normal")
            for _ in range(2))
    opt_a, opt_b = fd.SGD(0.05), fd.SGD(0.05)
    want_dx = True
    batch = 5
    for step in range(4):
        if step == 2:
            if change == "input_grad":
                want_dx = False
            elif change == "regularizer":
                for layer in (a, b):
                    layer.kernel_regularizer = fd.regularizers.get("l2")
            elif change == "optimizer":
                opt_a, opt_b = fd.Adam(0.01), fd.Adam(0.01)
            elif change == "batch":
                batch = 3
            elif change == "learning_rate":
                opt_a.learning_rate = opt_b.learning_rate = 0.2
            elif change == "bias_regularizer":
                for layer in (a, b):
                    layer.bias_regularizer = fd.regularizers.get("l1")
            elif change == "weights":
                for layer in (a, b):
                    layer.set_weights([w * 0.5 for w in layer.get_weights()])
            elif change == "weight_attribute":
                for layer in (a, b):
                    layer.weight = layer.weight * 0.5
            elif change == "activation":
                for layer in (a, b):
                    layer.activation = fd.activations.get("tanh")
            elif change == "reuse_outputs":
                # What Sequential.fit does: outputs become workspaces (copied below, since
                # the next call overwrites them).
                for layer in (a, b):
                    layer._reuse_outputs = True
        x = _data(rng, (batch, 4), np.float32)
        g = _data(rng, (batch, 6), np.float32)
        np.testing.assert_array_equal(a(x), b(x))
        dx_a = a.backprop(g, opt_a, compute_input_grad=want_dx)
        dx_a = None if dx_a is None else dx_a.copy()
        dx_b = b.backprop(np.asfortranarray(g), opt_b, compute_input_grad=want_dx)
        assert (dx_a is None) == (dx_b is None) == (not want_dx)
        if want_dx:
            np.testing.assert_array_equal(dx_a, dx_b)
        np.testing.assert_array_equal(a.weight, b.weight)
        np.testing.assert_array_equal(a.bias, b.bias)
    assert a._backprop_plan is not None and b._backprop_plan is None


def _layer_with_plans(rng, batch, n_in, units):
    """A relu layer that has recorded both plans (forward, backprop, forward), with its input
    and upstream gradient."""
    x = _data(rng, (batch, n_in), np.float32)
    g = _data(rng, (batch, units), np.float32)
    layer = Dense(units, activation="relu", seed=0)
    layer(x)
    layer.backprop(g, fd.SGD(0.1))
    layer(x)
    assert layer._plan is not None and layer._backprop_plan is not None
    return layer, x, g


@pytest.mark.parametrize("attribute", ["weight", "bias", "activation", "training",
                                       "kernel_regularizer", "bias_regularizer",
                                       "_reuse_outputs"])
def test_assigning_what_a_replay_depends_on_drops_the_plans(attribute):
    """The replays check only their new argument: every other thing they depend on drops
    both plans when assigned, even to an equal value."""
    layer, _, _ = _layer_with_plans(np.random.default_rng(17), 4, 3, 2)
    setattr(layer, attribute, getattr(layer, attribute))
    assert layer._plan is None and layer._backprop_plan is None


#: Units of a layer that takes the general kernels, not those of few units, with either tile
#: set (``kernels.dense.is_narrow``).
UNITS_OF_THE_GENERAL_KERNELS = 20


@pytest.mark.parametrize("batch", [1, 40])
def test_replayed_forward_calls_the_compiled_entry_point(batch):
    """The plan calls the kernel's compiled function for the recorded types directly (the
    batch-1 row kernel, or the product's)."""
    x = np.ones((batch, 8), np.float32)
    layer = Dense(UNITS_OF_THE_GENERAL_KERNELS, seed=0)
    y = layer(x)
    run = _ForwardPlan(*layer._plan).run
    kernel = kernels.forward_rows if batch == 1 else kernels.forward
    entries = [compiled.entry_point for compiled in kernel.overloads.values()]
    assert any(run is entry for entry in entries)
    np.testing.assert_array_equal(layer(x), y)


@pytest.mark.parametrize("batch", [1, 40])
def test_replayed_backprop_calls_the_compiled_entry_point(batch):
    """The backprop plan too holds the backward kernel's compiled function for the recorded
    types, and its replays give the full path's bits (a twin taking the full path each time:
    Fortran-ordered gradients are never planned)."""
    rng = np.random.default_rng(19)
    units = UNITS_OF_THE_GENERAL_KERNELS
    x = _data(rng, (batch, 8), np.float32)
    g = _data(rng, (batch, units), np.float32)
    a, b = (Dense(units, activation="relu", seed=0, kernel_regularizer="l2") for _ in range(2))
    for _ in range(3):
        a(x)
        b(x)
        dx_a = a.backprop(g, fd.SGD(0.1))
        np.testing.assert_array_equal(dx_a, b.backprop(np.asfortranarray(g), fd.SGD(0.1)))
        np.testing.assert_array_equal(a.weight, b.weight)
    run = a._backprop_plan[4]
    kernel = kernels.backward_rows if batch == 1 else kernels.backward
    entries = [compiled.entry_point for compiled in kernel.overloads.values()]
    assert any(run is entry for entry in entries)


@pytest.mark.parametrize("copier", ["pickle", "deepcopy"])
def test_a_layer_with_plans_pickles_and_copies(copier):
    """Pickled or copied after forward and backprop (plans recorded), a layer computes what
    the original does, and the two do not share weights."""
    layer, x, g = _layer_with_plans(np.random.default_rng(18), 3, 5, 4)
    twin = pickle.loads(pickle.dumps(layer)) if copier == "pickle" else copy.deepcopy(layer)
    assert not np.shares_memory(twin.weight, layer.weight)
    np.testing.assert_array_equal(twin.backprop(g, fd.SGD(0.1)), layer.backprop(g, fd.SGD(0.1)))
    for _ in range(2):
        np.testing.assert_array_equal(twin(x), layer(x))
    np.testing.assert_array_equal(twin.weight, layer.weight)


def test_repeated_backprop_returns_a_new_input_gradient():
    rng = np.random.default_rng(16)
    x = _data(rng, (4, 3), np.float32)
    g = _data(rng, (4, 2), np.float32)
    layer = Dense(2, seed=0)
    layer(x)
    dx1 = layer.backprop(g, fd.SGD(0.1))
    kept = dx1.copy()
    layer(x)
    dx2 = layer.backprop(g, fd.SGD(0.1))
    assert not np.shares_memory(dx1, dx2)
    np.testing.assert_array_equal(dx1, kept)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 40, 300])
def test_relu_of_minus_infinity_is_zero(batch, dtype):
    """relu(-inf) = 0 as in Keras and NumPy's maximum (``z * 0.0`` would make it NaN), +inf
    and NaN pass through; on every path: row kernels, the direct product, the micro-kernel's
    own epilogue on full tiles and the edge tiles' store."""
    units, n_in = 70, 300
    w = np.zeros((n_in, units), dtype)
    w[0, ::3] = 1.0
    w[0, 1::3] = -1.0
    w[1, 2::3] = 1.0
    x = np.ones((batch, n_in), dtype)
    x[:, 0] = np.inf
    x[batch // 2, 1] = np.nan
    layer = Dense(units, activation="relu", dtype=dtype, bias_initializer="zeros")
    layer.build(n_in)
    layer.set_weights([w, np.zeros(units, dtype)])
    ref = NumpyDense(units, "relu", dtype=dtype)
    ref.set_weights([w, np.zeros(units, dtype)])
    with np.errstate(invalid="ignore"):
        expected = ref(x)
    y = layer(x)
    assert np.all(y[:, 1::3][np.arange(batch) != batch // 2] == 0)
    np.testing.assert_array_equal(y, expected)


def _never_planned(a):
    """``a``'s values as a strided view: a layer never records a plan for such an input."""
    wide = np.repeat(a, 2, axis=-1)
    return wide[..., ::2]


_STEPS = ["same", "values", "batch", "read_only", "weight", "bias", "activation", "training",
          "regularizer", "reuse_outputs", "backprop", "backprop_no_dx", "adam"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(st.sampled_from(_STEPS), min_size=1, max_size=10),
       batch=st.sampled_from([1, 3, 40]), seed=st.integers(0, 2**16))
def test_property_replays_give_the_full_paths_bits(steps, batch, seed):
    """Any sequence of calls and changes: a layer fed plannable arrays (so it replays) and its
    twin fed strided views of the same values (so it always takes the full path) return the
    same bits and keep the same weights."""
    rng = np.random.default_rng(seed)
    n_in, units = 7, 5
    a, b = (Dense(units, activation="relu", seed=1, bias_initializer="random_normal")
            for _ in range(2))
    a.build(n_in)
    b.build(n_in)
    x = _data(rng, (batch, n_in), np.float32)
    opt_a, opt_b = fd.SGD(0.05), fd.SGD(0.05)
    for step in steps:
        if step == "values":
            x = x + 1
        elif step == "batch":
            batch = 1 + batch % 4
            x = _data(rng, (batch, n_in), np.float32)
        elif step == "read_only":
            x = x.copy()
            x.flags.writeable = False
        elif step == "adam":
            opt_a, opt_b = fd.Adam(0.01), fd.Adam(0.01)
        for layer in (a, b):
            if step == "weight":
                layer.weight = layer.weight * 0.5
            elif step == "bias":
                layer.bias = layer.bias - 0.25
            elif step == "activation":
                name = "tanh" if layer.activation.name == "relu" else "relu"
                layer.activation = fd.activations.get(name)
            elif step == "training":
                layer.training = not layer.training
            elif step == "regularizer":
                layer.kernel_regularizer = fd.regularizers.get("l2")
            elif step == "reuse_outputs":
                layer._reuse_outputs = not layer._reuse_outputs
        y_a = a(x).copy()
        np.testing.assert_array_equal(y_a, b(_never_planned(x)))
        if step.startswith("backprop") or step == "adam":
            if not a.training:
                continue
            g = _data(rng, (batch, units), np.float32)
            want_dx = step != "backprop_no_dx"
            dx_a = a.backprop(g, opt_a, compute_input_grad=want_dx)
            dx_b = b.backprop(_never_planned(g), opt_b, compute_input_grad=want_dx)
            if want_dx:
                np.testing.assert_array_equal(dx_a, dx_b)
            np.testing.assert_array_equal(a.weight, b.weight)
            np.testing.assert_array_equal(a.bias, b.bias)


@pytest.mark.parametrize("activation", ["tanh", "softmax", "gelu"])
def test_a_large_dz_over_the_threads_gives_the_kernel_bits(activation):
    """A first layer (no input gradient) of 300 x 256 outputs has its dz computed over the
    threads before the backward kernel (kernels.dense.dz_over_threads); the kernel alone
    computes it on one thread.  Same bits, twice (the second step replays the plan)."""
    rng = np.random.default_rng(21)
    x = rng.standard_normal((300, 40)).astype(np.float32)
    layer = Dense(256, activation=activation, seed=0, bias_initializer="random_normal")
    code = layer.activation.code
    assert kernels.dz_over_threads(300, 40, 256, code, False)
    assert kernels.dz_over_threads(300, 40, 256, code, True) == (activation == "softmax")
    layer.build(40)
    w, b = layer.weight.copy(), layer.bias.copy()
    ws = np.empty(kernels.workspace_size(40, 256, np.float32), np.float32)
    for _ in range(2):
        layer(x)
        _, z, y, _ = layer._cache
        z, y = z.copy(), y.copy()
        g = rng.standard_normal((300, 256)).astype(np.float32)
        layer.backprop(g, fd.SGD(0.1), compute_input_grad=False)
        kernels.backward(x, w, b, z, y, g, code, np.empty_like(g), np.empty_like(w),
                         np.empty_like(b), np.empty((0, 40), np.float32), 0.1, 0.0, 0.0, 0.0,
                         0.0, True, ws)
        np.testing.assert_array_equal(layer.weight, w)
        np.testing.assert_array_equal(layer.bias, b)


@pytest.mark.parametrize("units", [1, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_layer_of_few_units_gives_the_bits_of_the_untransposed_products(dtype, units,
                                                                          monkeypatch):
    """A layer of 1 or 3 units runs its products by its own kernels
    (``kernels.dense.uses_narrow``), with a workspace for its batch: through replays, batch
    changes (the workspace grows, and is kept when the batch shrinks), both optimizer paths
    and softmax, it returns the bits of a twin that runs the general ones (a layer of one
    unit forwards by dot products in both twins: ``kernels.uses_dots``)."""
    rng = np.random.default_rng(21)
    n_in = 150
    assert all(kernels.uses_narrow(batch, n_in, units, dtype) for batch in (64, 200))
    for a, b in _twins(rng, monkeypatch, "uses_narrow", lambda *args: False, dtype, n_in,
                       units, (64, 64, 200, 64)):
        assert "ws_narrow" in a._workspace and "ws_narrow" not in b._workspace


# Every layer that forwards by dot products: up to four float32 units with the AVX-512 tiles.
_DOT_LAYERS = [(dtype, units) for dtype in DTYPES
               for units in range(1, kernels.DOT_UNITS_MAX[np.dtype(dtype).name] + 1)]


@pytest.mark.parametrize(("dtype", "units"), _DOT_LAYERS,
                         ids=[f"{np.dtype(d).name}-{u}" for d, u in _DOT_LAYERS])
def test_a_layer_of_few_units_forwards_by_dot_products(dtype, units):
    """A layer of few units (``kernels.uses_dots``) computes its forward product by
    ``kernels.forward_dots`` (or ``forward_unit_dots``) at every batch size (one and two rows
    included), through replays and batch changes (its workspace grows, and is kept when the
    batch shrinks), and ``fastdense.linear`` gives the same bits; a row's outputs do not
    depend on its batch."""
    rng = np.random.default_rng(23)
    n_in = 70
    layer = Dense(units, activation="tanh", dtype=dtype, seed=4,
                  bias_initializer="random_normal")
    x = _data(rng, (200, n_in), dtype)
    ys = {}
    for batch in (200, 3, 1, 2, 200, 200):
        y = layer(x[:batch]).copy()
        z_k = np.empty((batch, units), dtype)
        y_k = np.empty((batch, units), dtype)
        ws = np.empty(kernels.dots_workspace_size(batch, n_in, units, 8), dtype)
        kernels.forward_for(layer.activation.code, dots=units)(
            x[:batch], layer.weight, layer.bias, layer.activation.code, z_k, y_k, ws)
        np.testing.assert_array_equal(y, y_k)
        np.testing.assert_array_equal(
            fd.linear(x[:batch], layer.weight, layer.bias, activation="tanh"), y)
        ys[batch] = y
        assert layer._workspace["ws_dots"].shape[0] >= kernels.dots_workspace_size(
            200, n_in, units, 1)
    for batch in (1, 2, 3):
        np.testing.assert_array_equal(ys[batch], ys[200][:batch])
    ref = NumpyDense(units, activation="tanh", dtype=np.float64)
    ref.build(n_in)
    ref.weight, ref.bias = layer.weight.astype(np.float64), layer.bias.astype(np.float64)
    want = ref.forward(x.astype(np.float64))
    # The dot products' bound (kernels.forward_dots: lanes, tree, tail, bias), carried through
    # tanh (slope at most 1), and a few roundings of tanh itself.
    tol = dots_bound(x, layer.weight, layer.bias, dtype) + 8 * unit_roundoff(dtype)
    assert np.all(np.abs(ys[200] - want) <= tol)


def _twins(rng, monkeypatch, picker: str, general, dtype, n_in: int, units: int,
           batches: tuple[int, ...]) -> list[tuple[Dense, Dense]]:
    """Twin layers, for ReLU and for softmax, through forward and backprop at each of
    ``batches`` (plain SGD, then Adam from the fourth): the first with ``kernels``'s
    ``picker`` as it is, the second with ``general`` in its place.  Outputs, input gradients,
    weights and biases must agree bitwise after every step; returns the pairs."""
    picks = getattr(kernels, picker)
    pairs = []
    for activation in ("relu", "softmax"):
        a, b = (Dense(units, activation=activation, dtype=dtype, seed=2,
                      bias_initializer="random_normal") for _ in range(2))
        opts = [fd.SGD(0.05), fd.SGD(0.05)]
        for step, batch in enumerate(batches):
            if step == 3:
                opts = [fd.Adam(0.01), fd.Adam(0.01)]
            x = _data(rng, (batch, n_in), dtype)
            g = _data(rng, (batch, units), dtype)
            outs = []
            for layer, opt, own in ((a, opts[0], True), (b, opts[1], False)):
                monkeypatch.setattr(kernels, picker, picks if own else general)
                outs.append((layer(x).copy(), layer.backprop(g, opt).copy()))
            for u, v in zip(*outs, strict=True):
                np.testing.assert_array_equal(u, v)
            np.testing.assert_array_equal(a.weight, b.weight)
            np.testing.assert_array_equal(a.bias, b.bias)
        pairs.append((a, b))
    return pairs


@pytest.mark.parametrize("activation", ["tanh", "softmax"])
def test_a_large_dz_of_few_units_over_the_threads_gives_the_kernel_bits(activation):
    """A layer of few units takes its dz apart (``kernels.dense.backward_narrow``), over the
    threads from DZ_THREADS_MIN elements, input gradient or not: the bits of the untransposed
    kernel, which computes it on one thread (or fuses it into its packing)."""
    rng = np.random.default_rng(22)
    batch, n_in, units = 8200, 40, 8
    assert batch * units >= kernels.DZ_THREADS_MIN
    x = rng.standard_normal((batch, n_in)).astype(np.float32)
    layer = Dense(units, activation=activation, seed=0, bias_initializer="random_normal")
    assert kernels.uses_narrow(batch, n_in, units, np.float32)
    code = layer.activation.code
    layer.build(n_in)
    w, b = layer.weight.copy(), layer.bias.copy()
    ws = np.empty(kernels.workspace_size(n_in, units, np.float32), np.float32)
    layer(x)
    _, z, y, _ = layer._cache
    z, y = z.copy(), y.copy()
    g = rng.standard_normal((batch, units)).astype(np.float32)
    dx = layer.backprop(g, fd.SGD(0.1))
    dx_k = np.empty_like(x)
    kernels.backward(x, w, b, z, y, g, code, np.empty_like(g), np.empty_like(w),
                     np.empty_like(b), dx_k, 0.1, 0.0, 0.0, 0.0, 0.0, True, ws)
    np.testing.assert_array_equal(dx, dx_k)
    np.testing.assert_array_equal(layer.weight, w)
    np.testing.assert_array_equal(layer.bias, b)


def test_a_layer_of_few_units_on_the_general_kernels_takes_its_input_gradient_by_rows(
        monkeypatch):
    """A float64 layer of 12 units (above the few-unit kernels' 8, or 4 with the AVX2 tiles)
    over more than DIRECT_ROWS rows takes ``kernels.dense.backward_dx_by_rows``: through
    replays, a batch change, both optimizer paths and softmax, it returns the bits of a twin
    that takes ``backward``."""
    rng = np.random.default_rng(23)
    dtype, n_in, units = np.float64, 150, 12
    batches = (300, 300, kernels.DIRECT_ROWS + 40, 300)
    assert all(kernels.product_paths(batch, n_in, units, dtype) == (False, False)
               and kernels.backward_for(batch, n_in, units, dtype)
               is kernels.backward_dx_by_rows for batch in batches)
    _twins(rng, monkeypatch, "backward_for", lambda *args: kernels.backward, dtype, n_in, units,
           batches)
