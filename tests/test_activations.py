"""Activation identifiers and the scalar kernels against the NumPy reference formulas."""

from __future__ import annotations

import numpy as np
import pytest

from fastdense import activations
from fastdense.kernels import activation as kact
from fastdense.reference import act_backward, act_forward
from tests.helpers import ACTIVATIONS

Z = np.array([[-40.0, -5.0, -1.0, -1e-3, 0.0, 1e-3, 0.5, 1.0, 5.0, 40.0, 800.0, -800.0]])


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_kernel_matches_reference_on_extremes(name):
    code = activations.get(name).code
    y = np.empty_like(Z)
    kact.activate(code, Z, y)
    expected = act_forward(name, Z)
    np.testing.assert_allclose(y, expected, rtol=1e-13, atol=1e-300)
    assert np.all(np.isfinite(y))


@pytest.mark.parametrize("name", [n for n in ACTIVATIONS if n != "softmax"])
def test_derivative_kernel_matches_reference(name):
    code = activations.get(name).code
    y = act_forward(name, Z)
    d = np.array([kact.derivative(code, z, yy) for z, yy in zip(Z[0], y[0], strict=True)])
    expected = act_backward(name, Z, y, np.ones_like(Z))[0]
    # relu-like kinks: the reference takes the left derivative at exactly 0, as Keras does
    np.testing.assert_allclose(d, expected, rtol=1e-12, atol=1e-300)


def test_keras_constants():
    assert kact.LEAKY_RELU_SLOPE == 0.2
    assert kact.SELU_ALPHA == pytest.approx(1.67326324)
    assert kact.SELU_SCALE == pytest.approx(1.05070098)
    z = np.array([[-1.0]])
    y = np.empty_like(z)
    kact.activate(activations.get("gelu").code, z, y)
    assert y[0, 0] == pytest.approx(-0.15865525393145707, rel=1e-14)  # exact erf form


def test_names_and_aliases():
    assert activations.get(None).name == "linear"
    assert activations.get("silu").code == activations.get("swish").code
    assert activations.get("ReLU").name == "relu"
    assert set(activations.NAMES) >= set(ACTIVATIONS)


def test_custom_pair_in_a_layer():
    from fastdense import Dense

    cube = (lambda z: z ** 3, lambda z, y: 3 * z ** 2)
    layer = Dense(2, activation=cube, dtype=np.float64, seed=0)
    x = np.array([[1.0, 2.0]])
    layer.build(2)
    z = x @ layer.weight + layer.bias
    np.testing.assert_allclose(layer(x), z ** 3, rtol=1e-14)
    w0 = layer.weight.copy()
    dx = layer.backprop(np.ones((1, 2)), type("O", (), {"learning_rate": 1.0})())
    np.testing.assert_allclose(dx, (3 * z ** 2) @ w0.T, rtol=1e-14)
