"""Optimizers: objects that update a parameter in place from its gradient.

A layer calls :func:`apply_update` for each parameter.  Any object with a numeric
``learning_rate`` attribute is accepted and acts as plain SGD; fastdense's own optimizers
(:class:`SGD`, :class:`Adam`, :class:`AdamW`, :class:`RMSprop`) follow Keras 3's defaults and
formulas and run their update, with the L1/L2 penalty gradient fused in, in the kernels of
:mod:`fastdense.kernels.update`.

Slot state and the step counter
-------------------------------
Keras builds an optimizer on a list of variables and counts ``iterations`` once per ``apply``
(one call for all variables).  Here a layer calls :meth:`Optimizer.update` once per parameter
per step, with no "step finished" signal, so each parameter keeps its own slot state *and its
own step count* ``t`` (1 on its first update).  As long as every parameter is updated once per
step, as :class:`fastdense.Dense` and :class:`fastdense.Sequential` do, ``t`` equals Keras'
``iterations + 1`` inside ``apply`` and Adam's bias correction is Keras'.  It also stays right
when one optimizer serves several independent layers, or a layer is added later: a new
parameter starts at ``t = 1`` instead of inheriting a global count.  :attr:`Optimizer.iterations`
reports the largest count.

Slots are keyed to the parameter *object*: ``id(param)`` plus a weak reference checked on every
lookup, so a freed array whose id is reused never inherits stale state.  Pass the same array
object every step (a layer passes its ``weight`` and ``bias``); replacing it, e.g. through
``Dense.set_weights``, starts fresh state for the new array.
"""

from __future__ import annotations

import math
import numbers
import weakref
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


def _real(name: str, value: Any, lo: float | None = None, hi: float | None = None,
          lo_open: bool = False, hi_open: bool = False) -> float:
    """Validate a real hyper-parameter in ``[lo, hi]`` (ends open when asked)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    v = float(value)
    bad = not math.isfinite(v)
    if lo is not None:
        bad = bad or (v <= lo if lo_open else v < lo)
    if hi is not None:
        bad = bad or (v >= hi if hi_open else v > hi)
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        rng = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        raise ValueError(f"{name} must be a finite number in {rng}, got {value!r}")
    return v


def _optional_positive(name: str, value: Any) -> float | None:
    return None if value is None else _real(name, value, 0.0, lo_open=True)


class _Slot:
    """State of one parameter: a weak reference to it, its step count and its slot arrays."""

    __slots__ = ("arrays", "grad", "grad_flat", "partial", "ref", "shape", "t")

    def __init__(self, param: np.ndarray, arrays: dict[str, np.ndarray],
                 on_death: Any) -> None:
        self.ref = weakref.ref(param, on_death)
        self.t = 0
        self.arrays = arrays
        self.shape = param.shape
        # The last validated gradient array and its flat view: a layer passes the same
        # workspace every step, which then skips validation (a step's Python overhead).
        self.grad: np.ndarray | None = None
        self.grad_flat: np.ndarray | None = None
        # Workspace of clipnorm's blocked reduction, allocated once so steps do not allocate.
        self.partial = np.empty(max(1, -(-param.size // _k.SUMSQ_BLOCK)), dtype=np.float64)


class Optimizer:
    """Base class of fastdense's optimizers.

    Parameters
    ----------
    learning_rate : float
        Step size.
    clipnorm : float or None
        Rescale each parameter's gradient so that its L2 norm is at most ``clipnorm``.
    clipvalue : float or None
        Clip each gradient element to ``[-clipvalue, clipvalue]``.
    weight_decay : float or None
        Decoupled weight decay: before each step ``w -= w * weight_decay * learning_rate``
        (Keras 3 accepts it on every optimizer; :class:`AdamW` sets it by default).

    Notes
    -----
    As in Keras, at most one of ``clipnorm`` and ``clipvalue`` may be set, and clipping applies
    to the gradient including the L1/L2 penalty.  Keras' ``global_clipnorm`` needs all gradients
    at once and is not supported: a layer hands over one parameter at a time.
    """

    #: Names of the per-parameter slot arrays (zeros like the parameter) this optimizer keeps.
    _slot_names: tuple[str, ...] = ()

    def __init__(self, learning_rate: float = 0.01, *, clipnorm: float | None = None,
                 clipvalue: float | None = None, weight_decay: float | None = None) -> None:
        self.learning_rate = learning_rate
        learning_rate_of(self)
        self.clipnorm = _optional_positive("clipnorm", clipnorm)
        self.clipvalue = _optional_positive("clipvalue", clipvalue)
        if self.clipnorm is not None and self.clipvalue is not None:
            raise ValueError(
                "only one of clipnorm and clipvalue can be set, got "
                f"clipnorm={clipnorm!r} and clipvalue={clipvalue!r}"
            )
        self.weight_decay = (
            None if weight_decay is None else _real("weight_decay", weight_decay, 0.0)
        )
        self._slots: dict[int, _Slot] = {}

    # ------------------------------------------------------------------ state
    @property
    def is_plain_sgd(self) -> bool:
        """Whether the update is exactly ``param -= learning_rate * grad`` (fusable)."""
        return False

    @property
    def iterations(self) -> int:
        """Steps taken: the largest per-parameter step count (0 before any update)."""
        return max((s.t for s in self._slots.values()), default=0)

    def reset(self) -> None:
        """Forget all slot state and step counts."""
        self._slots.clear()

    def _slot(self, param: np.ndarray) -> _Slot:
        """The slot of ``param``, created (zeros, step 0) on first use."""
        key = id(param)
        slot = self._slots.get(key)
        if slot is not None and slot.ref() is param:
            return slot
        slots = self._slots

        def on_death(_ref: weakref.ref, key: int = key) -> None:
            # Drop the state of a freed parameter, unless a newer array already took the id.
            current = slots.get(key)
            if current is not None and current.ref is _ref:
                del slots[key]

        arrays = {name: np.zeros(param.size, dtype=param.dtype) for name in self._slot_names}
        slot = _Slot(param, arrays, on_death)
        slots[key] = slot
        return slot

    def _check(self, param: Any, grad: Any) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(param, np.ndarray) or param.dtype.kind != "f":
            raise TypeError(
                f"param must be a float ndarray, got {type(param).__name__}"
                + (f" of dtype {param.dtype}" if isinstance(param, np.ndarray) else "")
            )
        if not param.flags.c_contiguous or not param.flags.writeable:
            raise ValueError("param must be a writeable C-contiguous array (updated in place)")
        if not isinstance(grad, np.ndarray) or grad.shape != param.shape:
            got = grad.shape if isinstance(grad, np.ndarray) else type(grad).__name__
            raise ValueError(f"grad must be an ndarray of param's shape {param.shape}, got {got}")
        if grad.dtype != param.dtype or not grad.flags.c_contiguous:
            grad = np.ascontiguousarray(grad, dtype=param.dtype)
        return param.reshape(-1), grad.reshape(-1)

    def _scale(self, slot: _Slot, p: np.ndarray, g: np.ndarray, l1: float, l2: float) -> float:
        """The clipnorm factor ``clipnorm / max(||g||, clipnorm)`` (1.0 without clipnorm)."""
        if self.clipnorm is None:
            return 1.0
        norm = math.sqrt(_k.penalized_sumsq(p, g, l1, l2, slot.partial))
        return self.clipnorm / max(norm, self.clipnorm)

    def _decay(self, lr: float) -> float:
        return 0.0 if self.weight_decay is None else self.weight_decay * lr

    # ------------------------------------------------------------------ API
    def update(self, param: np.ndarray, grad: np.ndarray, l1: float = 0.0,
               l2: float = 0.0) -> None:
        """Update ``param`` in place from ``grad`` plus the L1/L2 penalty gradient.

        Parameters
        ----------
        param : ndarray
            A writeable C-contiguous float array; the same object every step (see the module
            notes on slot state).
        grad : ndarray
            ``dL/dparam`` without the penalty, same shape.
        l1, l2 : float
            Penalty factors: ``l1 * sign(param) + 2 * l2 * param`` is added to ``grad``.
        """
        slot = self._slots.get(id(param))
        if (slot is not None and grad is slot.grad and slot.ref() is param
                and param.shape == slot.shape and grad.shape == slot.shape):
            p, g = param.reshape(-1), slot.grad_flat
        else:
            p, g = self._check(param, grad)
            slot = self._slot(param)
            # Cache only a gradient used in place (not a converted copy of it).
            in_place = np.shares_memory(g, grad)
            slot.grad, slot.grad_flat = (grad, g) if in_place else (None, None)
        lr = self.learning_rate
        if type(lr) is not float or not 0.0 <= lr < math.inf:
            lr = learning_rate_of(self)
        slot.t += 1
        self._step(slot, p, g, lr, float(l1), float(l2))

    def _step(self, slot: _Slot, p: np.ndarray, g: np.ndarray, lr: float, l1: float,
              l2: float) -> None:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments."""
        config: dict[str, Any] = {"learning_rate": self.learning_rate}
        for key in ("clipnorm", "clipvalue", "weight_decay"):
            if getattr(self, key) is not None:
                config[key] = getattr(self, key)
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Optimizer:
        """Build an optimizer from :meth:`get_config`'s output."""
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent, Keras' formula.

    ``m = momentum * m - lr * g``; ``w += m`` (or ``w += momentum * m - lr * g`` with
    ``nesterov``); without momentum ``w -= lr * g``, where ``g`` includes the L1/L2 penalty.

    Parameters
    ----------
    learning_rate : float, default 0.01
        Step size (Keras' default).
    momentum : float, default 0.0
        In ``[0, 1]``.
    nesterov : bool, default False
        Nesterov momentum.
    clipnorm, clipvalue, weight_decay
        See :class:`Optimizer`.
    """

    def __init__(self, learning_rate: float = 0.01, momentum: float = 0.0,
                 nesterov: bool = False, **kwargs: Any) -> None:
        super().__init__(learning_rate, **kwargs)
        self.momentum = _real("momentum", momentum, 0.0, 1.0)
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"nesterov must be a bool, got {type(nesterov).__name__}")
        self.nesterov = bool(nesterov)
        self._slot_names = ("momentum",) if self.momentum != 0.0 else ()

    @property
    def is_plain_sgd(self) -> bool:
        return (self.momentum == 0.0 and self.clipnorm is None and self.clipvalue is None
                and not self.weight_decay)

    def _step(self, slot, p, g, lr, l1, l2):
        if self.is_plain_sgd:
            _k.sgd(p, g, lr, l1, l2)
            return
        vel = slot.arrays.get("momentum")
        if vel is None:
            vel = _k.empty_like_dtype(p.dtype)
        _k.sgd_full(p, g, vel, lr, self.momentum, self.nesterov, l1, l2,
                    self._scale(slot, p, g, l1, l2), self.clipvalue or 0.0, self._decay(lr))

    def get_config(self):
        config = super().get_config()
        config.update(momentum=self.momentum, nesterov=self.nesterov)
        return config


class Adam(Optimizer):
    """Adam, Keras' formula (Kingma & Ba's "epsilon hat" form).

    With ``t`` the parameter's step count: ``alpha = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)``,
    ``m += (g - m) * (1 - beta_1)``, ``v += (g**2 - v) * (1 - beta_2)``,
    ``w -= alpha * m / (sqrt(v) + epsilon)``; with ``amsgrad``, ``v`` is replaced by its running
    maximum.

    Parameters
    ----------
    learning_rate : float, default 0.001
    beta_1 : float, default 0.9
    beta_2 : float, default 0.999
    epsilon : float, default 1e-7
        Keras' default (PyTorch and scikit-learn use 1e-8).
    amsgrad : bool, default False
    clipnorm, clipvalue, weight_decay
        See :class:`Optimizer`.
    """

    def __init__(self, learning_rate: float = 0.001, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-7, amsgrad: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(learning_rate, **kwargs)
        self.beta_1 = _real("beta_1", beta_1, 0.0, 1.0, hi_open=True)
        self.beta_2 = _real("beta_2", beta_2, 0.0, 1.0, hi_open=True)
        self.epsilon = _real("epsilon", epsilon, 0.0)
        if not isinstance(amsgrad, (bool, np.bool_)):
            raise TypeError(f"amsgrad must be a bool, got {type(amsgrad).__name__}")
        self.amsgrad = bool(amsgrad)
        self._slot_names = ("m", "v", "vhat") if self.amsgrad else ("m", "v")
        self._typed: dict[type, tuple] = {}  # (1 - beta_1, 1 - beta_2, epsilon) per dtype

    def _step(self, slot, p, g, lr, l1, l2):
        t = float(slot.t)
        alpha = lr * math.sqrt(1.0 - self.beta_2**t) / (1.0 - self.beta_1**t)
        a = slot.arrays
        if (not self.amsgrad and l1 == 0.0 and l2 == 0.0 and self.clipnorm is None
                and self.clipvalue is None and not self.weight_decay):
            # The common case: a branch-free kernel in the parameter's dtype.
            dt = p.dtype.type
            consts = self._typed.get(dt)
            if consts is None:
                consts = (dt(1.0 - self.beta_1), dt(1.0 - self.beta_2), dt(self.epsilon))
                self._typed[dt] = consts
            _k.adam_plain(p, g, a["m"], a["v"], dt(alpha), *consts)
            return
        vhat = a["vhat"] if self.amsgrad else _k.empty_like_dtype(p.dtype)
        _k.adam(p, g, a["m"], a["v"], vhat, alpha, self.beta_1, self.beta_2, self.epsilon,
                self.amsgrad, l1, l2, self._scale(slot, p, g, l1, l2), self.clipvalue or 0.0,
                self._decay(lr))

    def get_config(self):
        config = super().get_config()
        config.update(beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon,
                      amsgrad=self.amsgrad)
        return config


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), Keras' formula.

    Before each Adam step, ``w -= w * weight_decay * learning_rate`` (the undecayed learning
    rate, not Adam's bias-corrected one); the L1/L2 penalty gradient is still computed from the
    weights before the decay, as Keras computes gradients before applying it.

    Parameters
    ----------
    learning_rate : float, default 0.001
    weight_decay : float, default 0.004
        Keras' default.
    beta_1, beta_2, epsilon, amsgrad, clipnorm, clipvalue
        See :class:`Adam`.
    """

    def __init__(self, learning_rate: float = 0.001, weight_decay: float = 0.004,
                 beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7,
                 amsgrad: bool = False, **kwargs: Any) -> None:
        if weight_decay is None:
            raise ValueError("AdamW needs a weight_decay (a number >= 0), got None")
        super().__init__(learning_rate, beta_1, beta_2, epsilon, amsgrad,
                         weight_decay=weight_decay, **kwargs)


class RMSprop(Optimizer):
    """RMSprop, Keras' formula.

    ``v = rho * v + (1 - rho) * g**2``; centered also tracks ``a = rho * a + (1 - rho) * g``;
    ``inc = lr * g / sqrt(v + epsilon)`` (``sqrt(v - a**2 + epsilon)`` centered); with
    ``momentum``, ``mom = momentum * mom + inc`` and ``w -= mom``, else ``w -= inc``.

    Parameters
    ----------
    learning_rate : float, default 0.001
    rho : float, default 0.9
    momentum : float, default 0.0
    epsilon : float, default 1e-7
    centered : bool, default False
    clipnorm, clipvalue, weight_decay
        See :class:`Optimizer`.
    """

    def __init__(self, learning_rate: float = 0.001, rho: float = 0.9, momentum: float = 0.0,
                 epsilon: float = 1e-7, centered: bool = False, **kwargs: Any) -> None:
        super().__init__(learning_rate, **kwargs)
        self.rho = _real("rho", rho, 0.0, 1.0)
        self.momentum = _real("momentum", momentum, 0.0, 1.0)
        self.epsilon = _real("epsilon", epsilon, 0.0)
        if not isinstance(centered, (bool, np.bool_)):
            raise TypeError(f"centered must be a bool, got {type(centered).__name__}")
        self.centered = bool(centered)
        names = ["velocity"]
        if self.momentum > 0:
            names.append("momentum")
        if self.centered:
            names.append("average_gradient")
        self._slot_names = tuple(names)

    def _step(self, slot, p, g, lr, l1, l2):
        a = slot.arrays
        empty = _k.empty_like_dtype(p.dtype)
        _k.rmsprop(p, g, a["velocity"], a.get("momentum", empty),
                   a.get("average_gradient", empty), lr, self.rho, self.momentum, self.epsilon,
                   self.centered, l1, l2, self._scale(slot, p, g, l1, l2),
                   self.clipvalue or 0.0, self._decay(lr))

    def get_config(self):
        config = super().get_config()
        config.update(rho=self.rho, momentum=self.momentum, epsilon=self.epsilon,
                      centered=self.centered)
        return config


_BY_NAME: dict[str, type[Optimizer]] = {
    "sgd": SGD,
    "adam": Adam,
    "adamw": AdamW,
    "rmsprop": RMSprop,
}


def get(identifier: Any) -> Any:
    """Resolve an optimizer: a Keras name (``"sgd"``, ``"adam"``, ``"adamw"``, ``"rmsprop"``)
    gives a new instance with Keras' defaults; an :class:`Optimizer` or any object with a
    numeric ``learning_rate`` (treated as plain SGD) is returned as is.

    Raises
    ------
    ValueError
        For an unknown name.
    TypeError
        For anything else.
    """
    if isinstance(identifier, str):
        key = identifier.lower()
        if key not in _BY_NAME:
            raise ValueError(
                f"unknown optimizer {identifier!r}; expected one of {', '.join(_BY_NAME)} "
                "or an optimizer object"
            )
        return _BY_NAME[key]()
    if isinstance(identifier, Optimizer):
        return identifier
    if hasattr(identifier, "learning_rate"):
        learning_rate_of(identifier)
        return identifier
    raise TypeError(
        "optimizer must be a name or an object with a 'learning_rate', got "
        f"{type(identifier).__name__}"
    )


def serialize(optimizer: Any) -> dict[str, Any]:
    """``{"class_name", "config"}`` of a fastdense optimizer (foreign objects: plain SGD)."""
    if isinstance(optimizer, Optimizer):
        return {"class_name": type(optimizer).__name__, "config": optimizer.get_config()}
    return {"class_name": "SGD", "config": {"learning_rate": learning_rate_of(optimizer)}}


def deserialize(data: dict[str, Any]) -> Optimizer:
    """Inverse of :func:`serialize`."""
    classes = {cls.__name__: cls for cls in _BY_NAME.values()}
    name = data.get("class_name") if isinstance(data, dict) else None
    if name not in classes:
        raise ValueError(f"unknown optimizer class {name!r}; expected one of {sorted(classes)}")
    return classes[name].from_config(dict(data.get("config", {})))


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
