"""Initializers: Keras formulas checked by their bounds and moments, and seeding."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastdense import Dense, initializers

FAN_IN, FAN_OUT = 300, 200
SHAPE = (FAN_IN, FAN_OUT)
N = FAN_IN * FAN_OUT


def _draw(identifier, shape=SHAPE, dtype=np.float64, seed=0):
    init = initializers.get(identifier)
    return init(shape, dtype, np.random.default_rng(seed))


def _check_moments(w, mean, std):
    """Sample mean and std within 6 standard errors of the target (flakes ~1e-9)."""
    n = w.size
    assert abs(w.mean() - mean) < 6 * std / math.sqrt(n)
    # the standard error of a sample std is about std / sqrt(2n) (a bit more for uniform)
    assert abs(w.std() - std) < 6 * std / math.sqrt(2 * n) * 1.5


@pytest.mark.parametrize("name, limit", [
    ("glorot_uniform", math.sqrt(6 / (FAN_IN + FAN_OUT))),
    ("he_uniform", math.sqrt(6 / FAN_IN)),
    ("lecun_uniform", math.sqrt(3 / FAN_IN)),
    ("uniform", 0.05),
    ("random_uniform", 0.05),
    ("torch", 1 / math.sqrt(FAN_IN)),
])
def test_uniform_families(name, limit):
    w = _draw(name)
    assert w.min() >= -limit and w.max() <= limit
    assert w.min() < -0.99 * limit and w.max() > 0.99 * limit
    _check_moments(w, 0.0, limit / math.sqrt(3))


@pytest.mark.parametrize("name, std", [
    ("glorot_normal", math.sqrt(2 / (FAN_IN + FAN_OUT))),
    ("he_normal", math.sqrt(2 / FAN_IN)),
    ("lecun_normal", math.sqrt(1 / FAN_IN)),
])
def test_truncated_variance_scaling(name, std):
    """Keras scales the truncated normal so that the *truncated* std is sqrt(scale / n)."""
    w = _draw(name)
    stddev_param = std / 0.87962566103423978
    assert np.abs(w).max() <= 2 * stddev_param
    _check_moments(w, 0.0, std)


@pytest.mark.parametrize("name", ["truncated_normal"])
def test_truncated_normal_is_truncated(name):
    w = _draw(name)
    assert np.abs(w).max() <= 2 * 0.05
    # truncation at 2 sigma leaves 0.8796 of the stddev
    _check_moments(w, 0.0, 0.05 * 0.87962566103423978)


@pytest.mark.parametrize("name", ["normal", "random_normal"])
def test_random_normal(name):
    w = _draw(name)
    _check_moments(w, 0.0, 0.05)
    assert np.abs(w).max() > 2 * 0.05  # not truncated


def test_variance_scaling_modes_and_distributions():
    vs = initializers.VarianceScaling
    w = vs(3.0, "fan_out", "untruncated_normal")(SHAPE, np.float64, np.random.default_rng(0))
    _check_moments(w, 0.0, math.sqrt(3.0 / FAN_OUT))
    w = vs(3.0, "fan_avg", "uniform")(SHAPE, np.float64, np.random.default_rng(0))
    limit = math.sqrt(9.0 / ((FAN_IN + FAN_OUT) / 2))
    assert np.abs(w).max() <= limit
    with pytest.raises(ValueError, match="mode"):
        vs(1.0, "fan")
    with pytest.raises(ValueError, match="distribution"):
        vs(1.0, "fan_in", "cauchy")


@pytest.mark.parametrize("shape", [(50, 20), (20, 50), (30, 30)])
def test_orthogonal(shape):
    w = initializers.Orthogonal(gain=2.0)(shape, np.float64, np.random.default_rng(0))
    small = min(shape)
    gram = w.T @ w if shape[0] >= shape[1] else w @ w.T
    np.testing.assert_allclose(gram, 4.0 * np.eye(small), atol=1e-12)


def test_constants_and_identity():
    assert np.all(_draw("zeros") == 0) and np.all(_draw("zero") == 0)
    assert np.all(_draw("ones") == 1) and np.all(_draw("one") == 1)
    assert np.all(initializers.Constant(2.5)((3, 2)) == 2.5)
    np.testing.assert_array_equal(_draw("identity", (3, 4)), np.eye(3, 4))
    with pytest.raises(ValueError, match="2-D"):
        _draw("identity", (3,))


def test_torch_bias_uses_kernel_fan_in():
    layer = Dense(1000, kernel_initializer="torch", bias_initializer="torch", seed=0)
    layer.build(16)
    bound = 1 / math.sqrt(16)
    assert np.abs(layer.bias).max() <= bound and np.abs(layer.bias).max() > 0.9 * bound
    assert np.abs(layer.weight).max() <= bound


def test_callable_initializer_and_its_shape_check():
    layer = Dense(3, kernel_initializer=lambda shape, dtype: np.full(shape, 0.5, dtype))
    layer.build(2)
    assert np.all(layer.weight == 0.5) and layer.weight.dtype == np.float32
    bad = Dense(3, kernel_initializer=lambda shape, dtype: np.ones(3))
    with pytest.raises(ValueError, match="returned shape"):
        bad.build(2)
    assert not bad.built


def test_seed_reproducibility():
    a, b, c = (Dense(8, seed=s, bias_initializer="random_normal") for s in (5, 5, 6))
    for layer in (a, b, c):
        layer.build(4)
    np.testing.assert_array_equal(a.weight, b.weight)
    np.testing.assert_array_equal(a.bias, b.bias)
    assert not np.array_equal(a.weight, c.weight)
    init = initializers.HeNormal(seed=3)
    np.testing.assert_array_equal(init((4, 4)), init((4, 4)))


def test_float32_output_and_serialization():
    for name in initializers.NAMES:
        init = initializers.get(name)
        shape = (6, 6)
        w = init(shape, np.float32)
        assert w.dtype == np.float32 and w.shape == shape and w.flags.c_contiguous
        again = initializers.get(initializers.serialize(init))
        assert again == init
