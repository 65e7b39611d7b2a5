"""Optimizers: objects that update a parameter in place from its gradient.

A layer calls :func:`apply_update` for each parameter.  Any object with a numeric
``learning_rate`` attribute is accepted and acts as plain SGD; fastdense's own optimizers run
their update (with the L1/L2 penalty gradient fused in) in the kernels of
:mod:`fastdense.kernels.update`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from fastdense.kernels import update as _k


def learning_rate_of(optimizer: Any) -> float:
    """Return ``optimizer.learning_rate`` as a float, or raise a clear error.

    Raises
    ------
    TypeError
        If there is no ``learning_rate`` attribute or it is not a real number.
    ValueError
        If it is negative, NaN or infinite.
    """
    if not hasattr(optimizer, "learning_rate"):
        raise TypeError(
            "optimizer must have a 'learning_rate' attribute (a real number), got "
            f"{type(optimizer).__name__} without one"
        )
    lr = optimizer.learning_rate
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
        raise TypeError(
            f"optimizer.learning_rate must be a real number, got {type(lr).__name__} {lr!r}"
        )
    lr = float(lr)
    if not math.isfinite(lr) or lr < 0:
        raise ValueError(f"optimizer.learning_rate must be finite and >= 0, got {lr}")
    return lr


class Optimizer:
    """Base class of fastdense's optimizers.

    Parameters
    ----------
    learning_rate : float
        Step size.
    """

    def __init__(self, learning_rate: float = 0.01) -> None:
        self.learning_rate = learning_rate
        learning_rate_of(self)

    @property
    def is_plain_sgd(self) -> bool:
        """Whether the update is exactly ``param -= learning_rate * grad`` (fusable)."""
        return False

    def update(self, param: np.ndarray, grad: np.ndarray, l1: float = 0.0,
               l2: float = 0.0) -> None:
        """Update the C-contiguous ``param`` in place from ``grad`` plus the L1/L2 penalty."""
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments."""
        return {"learning_rate": self.learning_rate}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent: ``w -= learning_rate * (g + dR/dw)``.

    Parameters
    ----------
    learning_rate : float, default 0.01
        Step size (Keras' default).
    """

    @property
    def is_plain_sgd(self) -> bool:
        return True

    def update(self, param, grad, l1=0.0, l2=0.0):
        _k.sgd(param.reshape(-1), grad.reshape(-1), learning_rate_of(self), l1, l2)


def plain_sgd_rate(optimizer: Any) -> float | None:
    """The learning rate if ``optimizer`` performs plain SGD, else None.

    Plain SGD (``w -= lr * g``) can be fused into the gradient kernels.  A foreign object with a
    ``learning_rate`` is plain SGD; a fastdense optimizer is when it says so through
    :attr:`Optimizer.is_plain_sgd`.
    """
    if isinstance(optimizer, Optimizer):
        return learning_rate_of(optimizer) if optimizer.is_plain_sgd else None
    return learning_rate_of(optimizer)


def apply_update(optimizer: Any, param: np.ndarray, grad: np.ndarray, l1: float,
                 l2: float) -> None:
    """Update ``param`` in place with ``optimizer``; a foreign object acts as plain SGD."""
    if isinstance(optimizer, Optimizer):
        optimizer.update(param, grad, l1, l2)
    else:
        _k.sgd(param.reshape(-1), grad.reshape(-1), learning_rate_of(optimizer), l1, l2)
