"""Weight penalties with Keras semantics: ``l1 * sum|w| + l2 * sum w^2``.

The built-in penalties are fused into the update kernels through their ``l1`` and ``l2``
factors; a custom regularizer supplies its own gradient.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fastdense._config import Configurable


class Regularizer(Configurable):
    """Base class: subclasses return the penalty from ``__call__`` and its gradient."""

    #: Factors the kernels fuse; a custom subclass leaves them at zero.
    l1: float = 0.0
    l2: float = 0.0

    def __call__(self, w: np.ndarray) -> float:
        """Return the penalty for the weights ``w``."""
        raise NotImplementedError

    def gradient(self, w: np.ndarray) -> np.ndarray:
        """Return ``d penalty / d w``, same shape as ``w``."""
        raise NotImplementedError



def _factor(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


class L1L2(Regularizer):
    """``l1 * sum|w| + l2 * sum w^2``; both factors default to 0, as in Keras."""

    def __init__(self, l1: float = 0.0, l2: float = 0.0) -> None:
        self.l1 = _factor("l1", l1)
        self.l2 = _factor("l2", l2)

    def __call__(self, w: np.ndarray) -> float:
        w = np.asarray(w, dtype=np.float64)
        return float(self.l1 * np.abs(w).sum() + self.l2 * np.square(w).sum())

    def gradient(self, w: np.ndarray) -> np.ndarray:
        return self.l1 * np.sign(w) + (2.0 * self.l2) * w

    def get_config(self) -> dict[str, Any]:
        return {"l1": self.l1, "l2": self.l2}


class L1(L1L2):
    """``l1 * sum|w|`` (Keras default ``l1=0.01``)."""

    def __init__(self, l1: float = 0.01) -> None:
        super().__init__(l1=l1)

    def get_config(self) -> dict[str, Any]:
        return {"l1": self.l1}


class L2(L1L2):
    """``l2 * sum w^2`` (Keras default ``l2=0.01``)."""

    def __init__(self, l2: float = 0.01) -> None:
        super().__init__(l2=l2)

    def get_config(self) -> dict[str, Any]:
        return {"l2": self.l2}


class _Callable(Regularizer):
    """Wraps a user's ``(penalty, gradient)`` pair."""

    def __init__(self, penalty, grad) -> None:
        self.penalty = penalty
        self.grad = grad

    def __call__(self, w: np.ndarray) -> float:
        return float(self.penalty(w))

    def gradient(self, w: np.ndarray) -> np.ndarray:
        return np.asarray(self.grad(w))

    def get_config(self) -> dict[str, Any]:
        return {"penalty": self.penalty, "grad": self.grad}

    def __hash__(self) -> int:
        return hash((self.penalty, self.grad))


_BUILTINS: dict[str, type[Regularizer]] = {"L1": L1, "L2": L2, "L1L2": L1L2}
_STRINGS = {
    "l1": lambda: L1(),
    "l2": lambda: L2(),
    # Keras 3 resolves "l1l2" to L1L2() whose factors default to 0: we keep that meaning.
    "l1l2": lambda: L1L2(),
    # Keras documents "l1_l2" (its Keras 2 helper l1_l2(0.01, 0.01)) but rejects the string.
    "l1_l2": lambda: L1L2(0.01, 0.01),
}


def get(identifier: Any) -> Regularizer | None:
    """Resolve a regularizer identifier.

    Parameters
    ----------
    identifier : None, str, Regularizer, dict or (callable, callable)
        ``"l1"``, ``"l2"`` (factor 0.01), ``"l1l2"`` (Keras' ``L1L2()``, factors 0),
        ``"l1_l2"`` (``L1L2(0.01, 0.01)``); a :class:`Regularizer`; a serialized
        ``{"class_name", "config"}``; or a pair ``(penalty, gradient)`` of callables of ``w``.
    """
    if identifier is None or isinstance(identifier, Regularizer):
        return identifier
    if isinstance(identifier, str):
        if identifier not in _STRINGS:
            raise ValueError(
                f"unknown regularizer {identifier!r}; expected one of {', '.join(_STRINGS)}, "
                "a Regularizer, or a pair (penalty, gradient)"
            )
        return _STRINGS[identifier]()
    if isinstance(identifier, dict):
        name = identifier.get("class_name")
        if name not in _BUILTINS:
            raise ValueError(f"unknown regularizer class {name!r}; expected {list(_BUILTINS)}")
        return _BUILTINS[name].from_config(identifier.get("config", {}))
    if (
        isinstance(identifier, tuple)
        and len(identifier) == 2
        and all(callable(f) for f in identifier)
    ):
        return _Callable(*identifier)
    if callable(identifier):
        raise TypeError(
            "a custom regularizer needs its gradient: pass a Regularizer subclass or a pair "
            f"(penalty, gradient); got the single callable {identifier!r}"
        )
    raise TypeError(f"regularizer must be a name, Regularizer or pair; got {identifier!r}")


def serialize(reg: Regularizer | None) -> dict[str, Any] | Regularizer | None:
    """``{"class_name", "config"}`` for a built-in, the object itself for a custom one."""
    if reg is None:
        return None
    if type(reg) in _BUILTINS.values():
        return {"class_name": type(reg).__name__, "config": reg.get_config()}
    return reg
