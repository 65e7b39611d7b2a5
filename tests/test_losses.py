"""Losses: Keras' values, gradients by finite differences (float64), fused logits paths."""

from __future__ import annotations

import numpy as np
import pytest

from fastdense import losses

RNG = np.random.default_rng(0)
N, D = 5, 4
PROBS = RNG.uniform(0.05, 0.95, (N, D))
SOFT = RNG.uniform(0.0, 1.0, (N, D))
ONEHOT = np.eye(D)[RNG.integers(0, D, N)]
LABELS = RNG.integers(0, D, N)
LOGITS = RNG.standard_normal((N, D)) * 2


def _numeric_grad(f, x, h=1e-6):
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        a, b = x.copy(), x.copy()
        a[idx] += h
        b[idx] -= h
        g[idx] = (f(a) - f(b)) / (2 * h)
    return g


CASES = [
    ("mse", losses.MeanSquaredError(), SOFT, LOGITS),
    ("mae", losses.MeanAbsoluteError(), SOFT, LOGITS),
    ("bce", losses.BinaryCrossentropy(), SOFT, PROBS),
    ("bce-logits", losses.BinaryCrossentropy(from_logits=True), SOFT, LOGITS),
    ("cce", losses.CategoricalCrossentropy(), ONEHOT, PROBS),
    ("cce-soft-targets", losses.CategoricalCrossentropy(), SOFT, PROBS),
    ("cce-logits", losses.CategoricalCrossentropy(from_logits=True), ONEHOT, LOGITS),
    ("cce-logits-soft", losses.CategoricalCrossentropy(from_logits=True), SOFT, LOGITS),
    ("scce", losses.SparseCategoricalCrossentropy(), LABELS, PROBS),
    ("scce-logits", losses.SparseCategoricalCrossentropy(from_logits=True), LABELS, LOGITS),
]


@pytest.mark.parametrize("name, loss, y_true, y_pred", CASES, ids=[c[0] for c in CASES])
def test_gradient_matches_finite_differences(name, loss, y_true, y_pred):
    value, grad = loss.value_and_gradient(y_true, y_pred)
    assert grad.shape == y_pred.shape and grad.dtype == np.float64
    assert value == pytest.approx(loss(y_true, y_pred), rel=1e-15)
    numeric = _numeric_grad(lambda p: loss(y_true, p), y_pred)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("loss, y_true", [
    (losses.CategoricalCrossentropy(), ONEHOT),
    (losses.SparseCategoricalCrossentropy(), LABELS),
    (losses.BinaryCrossentropy(), SOFT),
])
def test_fused_from_logits_is_loss_of_activation(loss, y_true):
    """value_and_gradient_from_logits(z) = loss(act(z)) with gradient (p - y)/N wrt z."""
    z = LOGITS
    if loss.fused_activation == "softmax":
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
    else:
        p = 1 / (1 + np.exp(-z))
    value, grad = loss.value_and_gradient_from_logits(y_true, z)
    assert value == pytest.approx(loss(y_true, p), rel=1e-10)
    numeric = _numeric_grad(lambda q: loss.value_and_gradient_from_logits(y_true, q)[0], z)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)
    target = np.eye(D)[y_true] if loss.sparse else y_true
    scale = z.shape[0] * (z.shape[1] if isinstance(loss, losses.BinaryCrossentropy) else 1)
    np.testing.assert_allclose(grad, (p - target) / scale, atol=1e-15)


def test_fused_gradient_is_stable_where_softmax_saturates():
    z = np.array([[1000.0, 0.0, -1000.0]])
    value, grad = losses.SparseCategoricalCrossentropy().value_and_gradient_from_logits([2], z)
    assert np.isfinite(value) and value == pytest.approx(2000.0)
    np.testing.assert_allclose(grad, [[1.0, 0.0, -1.0]], atol=1e-300)


def test_keras_documented_values():
    # Values from the Keras documentation examples.
    assert losses.mean_squared_error([[0, 1], [0, 0]], [[1, 1], [1, 0]]) == pytest.approx(0.5)
    assert losses.mean_absolute_error([[0, 1], [0, 0]], [[1, 1], [1, 0]]) == pytest.approx(0.5)
    assert losses.binary_crossentropy([[0, 1], [0, 0]], [[0.6, 0.4], [0.4, 0.6]]) == pytest.approx(
        0.815, abs=1e-3)
    assert losses.binary_crossentropy([0, 1, 0, 0], [-18.6, 0.51, 2.94, -12.8],
                                 from_logits=True) == pytest.approx(0.865, abs=1e-3)
    y_pred = [[0.05, 0.95, 0], [0.1, 0.8, 0.1]]
    assert losses.categorical_crossentropy([[0, 1, 0], [0, 0, 1]], y_pred) == pytest.approx(
        1.177, abs=1e-3)
    assert losses.sparse_categorical_crossentropy([1, 2], y_pred) == pytest.approx(1.177, abs=1e-3)


def test_probabilities_are_clipped_like_keras():
    # log(1e-7) bounds the loss of a zero probability.
    assert losses.sparse_categorical_crossentropy([0], [[0.0, 1.0]]) == pytest.approx(
        -np.log(1e-7), rel=1e-12)
    assert losses.binary_crossentropy([[1.0]], [[0.0]]) == pytest.approx(-np.log(1e-7), rel=1e-12)
    # The clip's derivative is zero outside [eps, 1 - eps].
    grad = losses.BinaryCrossentropy().gradient([[1.0]], [[0.0]])
    assert grad[0, 0] == 0.0
    # Categorical renormalizes first.
    assert losses.categorical_crossentropy([[0, 1]], [[1.0, 3.0]]) == pytest.approx(-np.log(0.75))


def test_padding_rows_get_zero_gradient():
    loss = losses.CategoricalCrossentropy(from_logits=True)
    y = np.vstack([ONEHOT, np.zeros((3, D))])
    z = np.vstack([LOGITS, np.full((3, D), 7.0)])
    grad = np.full_like(z, np.nan)
    rows = np.empty(len(z))
    value = loss.compute(y, z, grad, rows, N)
    assert value == pytest.approx(loss(ONEHOT, LOGITS), rel=1e-15)
    np.testing.assert_array_equal(grad[N:], 0.0)
    np.testing.assert_allclose(grad[:N], loss.gradient(ONEHOT, LOGITS), rtol=1e-15)


def test_float32_predictions_give_float32_gradient():
    value, grad = losses.MeanSquaredError().value_and_gradient(SOFT, LOGITS.astype(np.float32))
    assert grad.dtype == np.float32 and isinstance(value, float)


def test_one_dimensional_predictions():
    value, grad = losses.MeanSquaredError().value_and_gradient([1.0, 2.0], [1.5, 2.0])
    assert value == pytest.approx(0.125) and grad.shape == (2,)
    np.testing.assert_allclose(grad, [0.5, 0.0])


def test_get_serialize_and_fused_activation():
    assert isinstance(losses.get("mse"), losses.MeanSquaredError)
    assert isinstance(losses.get("sparse_categorical_crossentropy"),
                      losses.SparseCategoricalCrossentropy)
    loss = losses.CategoricalCrossentropy(from_logits=True)
    assert losses.get(loss) is loss
    assert losses.deserialize(losses.serialize(loss)) == loss
    assert losses.CategoricalCrossentropy().fused_activation == "softmax"
    assert losses.BinaryCrossentropy().fused_activation == "sigmoid"
    assert loss.fused_activation is None  # already logits: nothing to absorb
    assert losses.MeanSquaredError().fused_activation is None


@pytest.mark.parametrize(
    "call, exc, words",
    [
        (lambda: losses.get("hinge"), ValueError, "unknown loss"),
        (lambda: losses.get(3.0), TypeError, "loss must be"),
        (lambda: losses.MeanSquaredError()([[1.0, 2.0]], [[1.0, 2.0, 3.0]]), ValueError,
         r"shape \(1, 3\), got \(1, 2\)"),
        (lambda: losses.CategoricalCrossentropy()([0, 1], PROBS[:2]), ValueError,
         "sparse_categorical_crossentropy"),
        (lambda: losses.SparseCategoricalCrossentropy()([0, 9], PROBS[:2]), ValueError,
         r"labels must be in \[0, 4\)"),
        (lambda: losses.SparseCategoricalCrossentropy()([0.5, 1], PROBS[:2]), ValueError,
         "integer"),
        (lambda: losses.SparseCategoricalCrossentropy()([[0, 1]], PROBS[:1]), ValueError,
         "labels of shape"),
        (lambda: losses.BinaryCrossentropy(from_logits="no"), TypeError, "from_logits"),
        (lambda: losses.mean_squared_error([1.0], [1.0], from_logits=True), ValueError, "logits"),
        (lambda: losses.MeanSquaredError()(["a"], [1.0]), TypeError, "real targets"),
        (lambda: losses.MeanSquaredError()([], np.zeros((0, 2))), ValueError, "at least one"),
        (lambda: losses.MeanSquaredError().value_and_gradient_from_logits([1.0], [1.0]),
         ValueError, "cannot absorb"),
    ],
)
def test_bad_inputs(call, exc, words):
    with pytest.raises(exc, match=words):
        call()
