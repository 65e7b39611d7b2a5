"""The same Dense layer in plain, idiomatic NumPy: the tests' oracle and the benchmarks' peer.

Written the way a competent NumPy user writes it (``x @ W + b``, ``np.maximum``, ``x.T @ dz``,
``dz.sum(0)``, ``dz @ W.T``, in-place updates), independently of fastdense's kernels.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fastdense import initializers, regularizers

try:  # SciPy's erfc is vectorized; without SciPy the exact GELU falls back to math.erfc.
    from scipy.special import erfc as _erfc

    #: Whether the exact GELU uses SciPy's vectorized ``erfc`` (else ``math.erfc`` per element).
    VECTORIZED_ERFC = True
except ImportError:  # pragma: no cover - depends on the environment
    _erfc = np.vectorize(math.erfc, otypes=[np.float64])
    VECTORIZED_ERFC = False

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _sigmoid(z):
    return np.exp(-np.logaddexp(0.0, -z))


def act_forward(name: str, z: np.ndarray) -> np.ndarray:
    """``act(z)`` by Keras name, in NumPy."""
    with np.errstate(over="ignore", invalid="ignore"):
        if name == "linear":
            return z
        if name == "relu":
            return np.maximum(z, 0)
        if name == "sigmoid":
            return _sigmoid(z)
        if name == "tanh":
            return np.tanh(z)
        if name == "softmax":
            e = np.exp(z - z.max(axis=-1, keepdims=True))
            return e / e.sum(axis=-1, keepdims=True)
        if name == "gelu":
            # erfc(-x), which is 1 + erf(x) without its cancellation for z < 0 (the sum loses
            # 21 bits at z = -5 and rounds to 0 from z = -8.3).
            return 0.5 * z * _erfc(-z / np.sqrt(2.0))
        if name == "leaky_relu":
            return np.where(z < 0, 0.2 * z, z)
        if name == "elu":
            return np.where(z < 0, np.expm1(np.minimum(z, 0)), z)
        if name == "selu":
            return _SELU_SCALE * np.where(z < 0, _SELU_ALPHA * np.expm1(np.minimum(z, 0)), z)
        if name in ("swish", "silu"):
            return z * _sigmoid(z)
        if name == "softplus":
            return np.logaddexp(0.0, z)
    raise ValueError(f"unknown activation {name!r}")


def act_backward(name: str, z: np.ndarray, y: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``dL/dz`` from ``g = dL/dy`` (the Jacobian-vector product for softmax)."""
    with np.errstate(over="ignore", invalid="ignore"):
        if name == "linear":
            return g
        if name == "relu":
            return g * (z > 0)
        if name == "sigmoid":
            return g * y * (1 - y)
        if name == "tanh":
            return g * (1 - y * y)
        if name == "softmax":
            return y * (g - (g * y).sum(axis=-1, keepdims=True))
        if name == "gelu":
            return g * (0.5 * _erfc(-z / np.sqrt(2.0))
                        + z * np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi))
        if name == "leaky_relu":
            return g * np.where(z > 0, 1.0, 0.2)
        if name == "elu":
            return g * np.where(z > 0, 1.0, np.exp(np.minimum(z, 0)))
        if name == "selu":
            return g * _SELU_SCALE * np.where(z > 0, 1.0, _SELU_ALPHA * np.exp(np.minimum(z, 0)))
        if name in ("swish", "silu"):
            s = _sigmoid(z)
            return g * (s + z * s * (1 - s))
        if name == "softplus":
            return g * _sigmoid(z)
    raise ValueError(f"unknown activation {name!r}")


class NumpyDense:
    """A Dense layer in plain NumPy with the same interface as :class:`fastdense.Dense`.

    Parameters
    ----------
    units : int
    activation : str or None
        A Keras activation name.
    use_bias : bool
    kernel_regularizer, bias_regularizer : str, L1/L2/L1L2 or None
    dtype : float32 or float64
    seed : int or None
        Seeds Glorot-uniform kernel initialization.
    """

    def __init__(self, units: int, activation: str | None = None, use_bias: bool = True,
                 kernel_regularizer: Any = None, bias_regularizer: Any = None,
                 dtype: Any = np.float32, seed: int | None = None) -> None:
        self.units = units
        self.activation = activation or "linear"
        self.use_bias = use_bias
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.dtype = np.dtype(dtype)
        self.seed = seed
        self.weight: np.ndarray | None = None
        self.bias: np.ndarray | None = None

    def build(self, input_dim: int) -> None:
        """Glorot-uniform kernel, zero bias."""
        rng = np.random.default_rng(self.seed)
        init = initializers.GlorotUniform()
        self.weight = init((input_dim, self.units), self.dtype, rng)
        self.bias = np.zeros(self.units, self.dtype) if self.use_bias else None

    def get_weights(self) -> list[np.ndarray]:
        """``[kernel, bias]`` copies."""
        return [self.weight.copy()] + ([self.bias.copy()] if self.use_bias else [])

    def set_weights(self, weights: list[np.ndarray]) -> None:
        """Set ``[kernel, bias]``."""
        self.weight = np.array(weights[0], dtype=self.dtype)
        self.bias = np.array(weights[1], dtype=self.dtype) if self.use_bias else None

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``act(x @ W + b)`` along the last axis."""
        x = np.asarray(x, dtype=self.dtype)
        if self.weight is None:
            self.build(x.shape[-1])
        z = x @ self.weight
        if self.use_bias:
            z += self.bias
        y = act_forward(self.activation, z)
        self._x, self._z, self._y = x, z, y
        return y

    __call__ = forward

    def gradients(self, dLdy: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """``(dW, db, dx)`` for the last forward, penalties included, weights untouched."""
        x = self._x.reshape(-1, self._x.shape[-1])
        dz = act_backward(self.activation, self._z, self._y, np.asarray(dLdy, self.dtype))
        dz = dz.reshape(-1, self.units)
        dW = x.T @ dz
        if self.kernel_regularizer is not None:
            dW += self.kernel_regularizer.gradient(self.weight).astype(self.dtype)
        db = None
        if self.use_bias:
            db = dz.sum(axis=0)
            if self.bias_regularizer is not None:
                db += self.bias_regularizer.gradient(self.bias).astype(self.dtype)
        dx = (dz @ self.weight.T).reshape(self._x.shape)
        return dW, db, dx

    def backprop(self, dLdy: np.ndarray, optimizer: Any) -> np.ndarray:
        """Gradients with the current weights, then ``W -= lr * dW`` and ``b -= lr * db``."""
        dW, db, dx = self.gradients(dLdy)
        lr = optimizer.learning_rate
        self.weight -= lr * dW
        if self.use_bias:
            self.bias -= lr * db
        return dx

    def regularization_loss(self) -> float:
        """The current penalty."""
        loss = 0.0
        if self.kernel_regularizer is not None:
            loss += self.kernel_regularizer(self.weight)
        if self.use_bias and self.bias_regularizer is not None:
            loss += self.bias_regularizer(self.bias)
        return loss
