"""Activation identifiers: Keras names mapped to the codes the fused kernels understand."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fastdense.kernels import activation as _k
from fastdense.kernels import activation_passes as _passes

_CODES: dict[str, int] = {
    "linear": _k.LINEAR,
    "relu": _k.RELU,
    "sigmoid": _k.SIGMOID,
    "tanh": _k.TANH,
    "softmax": _k.SOFTMAX,
    "gelu": _k.GELU,
    "leaky_relu": _k.LEAKY_RELU,
    "elu": _k.ELU,
    "selu": _k.SELU,
    "swish": _k.SWISH,
    "silu": _k.SWISH,
    "softplus": _k.SOFTPLUS,
}

#: Every activation name :func:`get` accepts.
NAMES: tuple[str, ...] = tuple(_CODES)


@dataclass(frozen=True)
class Activation:
    """A resolved activation.

    Attributes
    ----------
    name : str
        The identifier it was resolved from (``"custom"`` for a callable pair).
    code : int
        Kernel code; custom activations run the linear kernel and apply ``fn`` in NumPy.
    fn, grad : callable or None
        For custom activations only: ``fn(z) -> y`` and ``grad(z, y) -> dy/dz`` element-wise.
    """

    name: str
    code: int
    fn: Callable[[np.ndarray], np.ndarray] | None = None
    grad: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None

    @property
    def is_custom(self) -> bool:
        """Whether this activation is a user-supplied callable pair."""
        return self.fn is not None

    @property
    def needs_z(self) -> bool:
        """Whether backprop needs the pre-activation ``z`` (else the output ``y`` suffices)."""
        return self.is_custom or self.code in _k.NEEDS_Z

    def prepare(self, dtype: np.dtype) -> None:
        """Have the product kernels apply this activation for ``dtype`` by passes of its own,
        compiled (or loaded from Numba's cache) on the first call in a process; see
        :mod:`fastdense.kernels.activation_passes`."""
        _passes.install(self.code, dtype)

    def serialize(self) -> str | tuple:
        """The identifier that :func:`get` turns back into this activation."""
        return (self.fn, self.grad) if self.is_custom else self.name


def get(identifier: str | tuple | Activation | None) -> Activation:
    """Resolve an activation identifier.

    Parameters
    ----------
    identifier : str, None, (callable, callable) or Activation
        A Keras name (see :data:`NAMES`), ``None`` for linear, or a pair ``(fn, grad)`` where
        ``fn(z)`` is the activation and ``grad(z, y)`` its element-wise derivative.

    Raises
    ------
    ValueError
        For an unknown name.
    TypeError
        For anything else that is not an identifier.
    """
    if isinstance(identifier, Activation):
        return identifier
    if identifier is None:
        return Activation("linear", _k.LINEAR)
    if isinstance(identifier, str):
        key = identifier.lower()
        if key not in _CODES:
            raise ValueError(
                f"unknown activation {identifier!r}; expected one of {', '.join(NAMES)}, "
                "None, or a pair (fn, grad)"
            )
        return Activation(key, _CODES[key])
    if (
        isinstance(identifier, tuple)
        and len(identifier) == 2
        and all(callable(f) for f in identifier)
    ):
        return Activation("custom", _k.LINEAR, identifier[0], identifier[1])
    if callable(identifier):
        raise TypeError(
            "a custom activation must be a pair (fn, grad) with grad(z, y) = dy/dz, "
            f"since fastdense has no autodiff; got the single callable {identifier!r}"
        )
    raise TypeError(
        f"activation must be a name, None or a pair (fn, grad); got {type(identifier).__name__}"
    )
