"""Dense's contract: bad input raises clearly and leaves the layer unchanged; round trips."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastdense as fd
from fastdense import Dense
from fastdense.reference import NumpyDense
from tests.bounds import unit_roundoff
from tests.helpers import ACTIVATIONS, Plain, backprop_bounds, forward_bound, state_of


def _snapshot(layer):
    cache = None if layer._cache is None else tuple(
        a.copy() if isinstance(a, np.ndarray) else a for a in layer._cache)
    return [w.copy() for w in layer.get_weights()], cache


def _assert_unchanged(layer, snap):
    weights, cache = snap
    for a, b in zip(layer.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(a, b)
    if cache is None:
        assert layer._cache is None
    else:
        for a, b in zip(layer._cache, cache, strict=True):
            if isinstance(b, np.ndarray):
                np.testing.assert_array_equal(a, b)
            else:
                assert a == b


@pytest.fixture
def trained():
    layer = Dense(3, activation="relu", seed=0)
    layer(np.ones((4, 5), np.float32))
    return layer


# --------------------------------------------------------------------------- construction


@pytest.mark.parametrize("units", [0, -2, 2.5, "3", True, None])
def test_units_must_be_positive_int(units):
    with pytest.raises(ValueError, match="units must be a positive integer"):
        Dense(units)


@pytest.mark.parametrize("kwargs, err, match", [
    ({"activation": "relux"}, ValueError, "unknown activation 'relux'"),
    ({"activation": 3}, TypeError, "activation must be"),
    ({"activation": np.tanh}, TypeError, "pair"),
    ({"kernel_initializer": "glorot"}, ValueError, "unknown initializer 'glorot'"),
    ({"bias_initializer": 1.5}, TypeError, "initializer must be"),
    ({"kernel_regularizer": "l3"}, ValueError, "unknown regularizer 'l3'"),
    ({"bias_regularizer": lambda w: 0.0}, TypeError, "gradient"),
    ({"seed": "x"}, TypeError, "seed"),
])
def test_unknown_identifiers_fail_at_construction(kwargs, err, match):
    with pytest.raises(err, match=match):
        Dense(2, **kwargs)


# --------------------------------------------------------------------------- calls


def test_wrong_feature_size_after_build(trained):
    snap = _snapshot(trained)
    with pytest.raises(ValueError, match=r"expects inputs with 5 features.*got shape \(4, 6\)"):
        trained(np.ones((4, 6), np.float32))
    _assert_unchanged(trained, snap)


def test_scalar_input(trained):
    snap = _snapshot(trained)
    with pytest.raises(ValueError, match="at least one axis"):
        trained(np.float32(1.0))
    _assert_unchanged(trained, snap)


@pytest.mark.parametrize("shape", [(4, 2), (3, 3), (12,), (4, 3, 1)])
def test_dldy_shape_must_match_last_output(trained, shape):
    snap = _snapshot(trained)
    with pytest.raises(ValueError, match="shape of the last output \\(4, 3\\)"):
        trained.backprop(np.ones(shape, np.float32), fd.SGD())
    _assert_unchanged(trained, snap)


def test_backprop_before_forward():
    layer = Dense(3)
    with pytest.raises(ValueError, match="forward pass first"):
        layer.backprop(np.ones((1, 3), np.float32), fd.SGD())


@pytest.mark.parametrize("opt, err, match", [
    (object(), TypeError, "learning_rate"),
    (Plain("0.1"), TypeError, "real number"),
    (Plain(None), TypeError, "real number"),
    (Plain(True), TypeError, "real number"),
    (Plain(float("nan")), ValueError, "finite"),
    (Plain(-1.0), ValueError, ">= 0"),
])
def test_optimizer_needs_usable_learning_rate(trained, opt, err, match):
    snap = _snapshot(trained)
    with pytest.raises(err, match=match):
        trained.backprop(np.ones((4, 3), np.float32), opt)
    _assert_unchanged(trained, snap)
    trained.backprop(np.ones((4, 3), np.float32), fd.SGD())  # the cache survived


@pytest.mark.parametrize("weights, match", [
    ([np.ones((5, 4)), np.ones(3)], "kernel must have shape \\(5, 3\\)"),
    ([np.ones((6, 3)), np.ones(3)], "kernel must have shape \\(5, 3\\)"),
    ([np.ones((5, 3)), np.ones(4)], "bias must have shape \\(3,\\)"),
    ([np.ones((5, 3))], "list of 2 arrays"),
    (np.ones((5, 3)), "list of 2 arrays"),
])
def test_set_weights_checks_shapes(trained, weights, match):
    snap = _snapshot(trained)
    with pytest.raises(ValueError, match=match):
        trained.set_weights(weights)
    _assert_unchanged(trained, snap)


def test_get_weights_before_build():
    with pytest.raises(ValueError, match="not built"):
        Dense(2).get_weights()


# --------------------------------------------------------------------------- round trips


def test_config_round_trip_is_exact():
    layer = Dense(7, activation="selu", use_bias=False,
                  kernel_initializer=fd.initializers.VarianceScaling(2.0, "fan_out", "uniform"),
                  bias_initializer="torch", kernel_regularizer=fd.regularizers.L1L2(0.1, 0.3),
                  bias_regularizer="l1", dtype=np.float64, training=False, seed=11,
                  name="hidden")
    cfg = layer.get_config()
    assert cfg["kernel_initializer"] == {
        "class_name": "VarianceScaling",
        "config": {"scale": 2.0, "mode": "fan_out", "distribution": "uniform", "seed": None}}
    assert cfg["kernel_regularizer"] == {"class_name": "L1L2", "config": {"l1": 0.1, "l2": 0.3}}
    clone = Dense.from_config(cfg)
    assert clone.get_config() == cfg
    layer.build(4)
    clone.build(4)
    np.testing.assert_array_equal(layer.weight, clone.weight)


def test_config_is_json_serializable():
    import json

    cfg = Dense(3, activation="relu", kernel_regularizer="l2", seed=2).get_config()
    assert Dense.from_config(json.loads(json.dumps(cfg))).get_config() == cfg


def test_weights_file_round_trip(tmp_path, trained):
    path = tmp_path / "w.npz"
    trained.save_weights(path)
    other = Dense(3, activation="relu", seed=99)
    other.load_weights(path)
    for a, b in zip(trained.get_weights(), other.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32)
    np.testing.assert_array_equal(trained(x), other(x))


def test_corrupt_weights_file(tmp_path, trained):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"not a zip file at all")
    snap = _snapshot(trained)
    with pytest.raises(ValueError, match=r"not a readable \.npz"):
        trained.load_weights(path)
    _assert_unchanged(trained, snap)


def test_mismatched_weights_file(tmp_path, trained):
    path = tmp_path / "other.npz"
    np.savez(path, kernel=np.ones((5, 4)), bias=np.ones(4))
    snap = _snapshot(trained)
    with pytest.raises(ValueError, match="kernel must have shape"):
        trained.load_weights(path)
    np.savez(path, kernel=np.ones((5, 3)))
    with pytest.raises(ValueError, match="expected \\['bias', 'kernel'\\]"):
        trained.load_weights(path)
    np.savez(path, kernel=np.array([[object()]] * 5, dtype=object), bias=np.ones(3))
    with pytest.raises(ValueError, match="not a readable"):
        trained.load_weights(path)
    _assert_unchanged(trained, snap)


# --------------------------------------------------------------------------- properties


@st.composite
def _cases(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    batch = draw(st.lists(st.integers(0, 5), min_size=0, max_size=2))
    in_dim = draw(st.integers(1, 9))
    units = draw(st.integers(1, 9))
    activation = draw(st.sampled_from(ACTIVATIONS))
    use_bias = draw(st.booleans())
    layout = draw(st.sampled_from(["C", "F", "strided"]))
    return dtype, tuple(batch), in_dim, units, activation, use_bias, layout


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_cases(), st.integers(0, 2**31 - 1))
def test_property_matches_reference(case, seed):
    dtype, batch, in_dim, units, activation, use_bias, layout = case
    rng = np.random.default_rng(seed)
    shape = (*batch, in_dim)
    x = rng.standard_normal(shape).astype(dtype)
    if layout == "F":
        x = np.asfortranarray(x)
    elif layout == "strided":
        x = np.repeat(x, 2, axis=-1)[..., ::2]
    layer = Dense(units, activation=activation, use_bias=use_bias, dtype=dtype, seed=seed,
                  bias_initializer="random_normal")
    y = layer(x)
    assert y.shape == (*batch, units) and y.dtype == dtype
    ref = NumpyDense(units, activation, use_bias=use_bias, dtype=np.float64)
    ref.set_weights([w.astype(np.float64) for w in layer.get_weights()])
    y_ref = ref(x.astype(np.float64))
    bound = forward_bound(x, ref.weight, ref.bias, y_ref, ref._z, activation, dtype)
    assert np.all(np.abs(y - y_ref) <= bound)

    g = rng.standard_normal(y.shape).astype(dtype)
    xs, z, ys, _ = state_of(layer)
    w0 = ref.weight.copy()
    dx = layer.backprop(g, Plain(0.0))
    assert dx.shape == x.shape and dx.dtype == dtype
    g2 = g.reshape(-1, units).astype(np.float64)
    dz, _, _, dx_err = backprop_bounds(xs, z, ys, g2, w0, activation, dtype)
    np.testing.assert_array_less(np.abs(dx.reshape(-1, in_dim) - dz @ w0.T),
                                 dx_err + unit_roundoff(dtype) * 1e-300 + 1e-300)
