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

One step, many parameters
-------------------------
:meth:`Optimizer.update_many` updates several parameters as one step, exactly as calling
:meth:`Optimizer.update` on each in turn would.  :class:`fastdense.Sequential` hands the layers a
:class:`StepCollector` in place of the optimizer: it records each ``(param, grad)`` of a
step's backprops and applies them together at the end of the step.  That is exact because an
update changes only its own parameter and no layer reads another layer's parameters during
backprop; it turns a step's per-parameter Python calls into one, and plain Adam (no penalty,
clipping, decay or AMSGrad) then updates every parameter in a single kernel call.

``global_clipnorm`` needs this notion of a step: its norm is taken over every gradient of one
:meth:`Optimizer.update_many` call (a whole model's step under :class:`fastdense.Sequential`),
while a lone :meth:`Optimizer.update` is a step of one parameter.  A :class:`fastdense.Dense`
used on its own hands over its kernel and its bias in two calls; to clip them together, pass
the layer a :class:`StepCollector` and call :meth:`StepCollector.flush` after the backprop.
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
    lr = getattr(optimizer, "learning_rate", None)
    if type(lr) is float and 0.0 <= lr < math.inf:  # the common case, checked first: a
        return lr  # layer validates the rate on every backprop
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
    global_clipnorm : float or None
        Rescale all gradients of one step by ``global_clipnorm / max(norm, global_clipnorm)``,
        where ``norm`` is the L2 norm of all of them together (see the module notes on what a
        step is).
    weight_decay : float or None
        Decoupled weight decay: before each step ``w -= w * weight_decay * learning_rate``
        (Keras 3 accepts it on every optimizer; :class:`AdamW` sets it by default).

    Notes
    -----
    As in Keras, at most one of ``clipnorm``, ``clipvalue`` and ``global_clipnorm`` may be set,
    and clipping applies to the gradient including the L1/L2 penalty.
    """

    #: Names of the per-parameter slot arrays (zeros like the parameter) this optimizer keeps.
    _slot_names: tuple[str, ...] = ()

    def __init__(self, learning_rate: float = 0.01, *, clipnorm: float | None = None,
                 clipvalue: float | None = None, global_clipnorm: float | None = None,
                 weight_decay: float | None = None) -> None:
        self.learning_rate = learning_rate
        learning_rate_of(self)
        self.clipnorm = _optional_positive("clipnorm", clipnorm)
        self.clipvalue = _optional_positive("clipvalue", clipvalue)
        self.global_clipnorm = _optional_positive("global_clipnorm", global_clipnorm)
        clipping = {"clipnorm": clipnorm, "clipvalue": clipvalue,
                    "global_clipnorm": global_clipnorm}
        given = {k: v for k, v in clipping.items() if v is not None}
        if len(given) > 1:
            raise ValueError(
                "only one of clipnorm, clipvalue and global_clipnorm can be set, got "
                + " and ".join(f"{k}={v!r}" for k, v in given.items())
            )
        self.weight_decay = (
            None if weight_decay is None else _real("weight_decay", weight_decay, 0.0)
        )
        self._slots: dict[int, _Slot] = {}
        # global_clipnorm's factor for the step being applied (set before each _step).
        self._step_scale = 1.0

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
        self._resets = getattr(self, "_resets", 0) + 1  # invalidates prepared plans

    @property
    def slot_names(self) -> tuple[str, ...]:
        """Names of the state arrays kept per parameter (e.g. ``("m", "v")`` for Adam)."""
        return self._slot_names

    def get_slot_state(self, param: np.ndarray) -> tuple[int, dict[str, np.ndarray]] | None:
        """The state this optimizer keeps for ``param``: its step count and copies of its slot
        arrays (shaped like ``param``), or None if it has none (never updated, or reset).

        With :meth:`set_slot_state` this saves and restores training state (Keras saves the
        optimizer's ``iterations`` and slot variables with a model).
        """
        slot = self._slots.get(id(param))
        if slot is None or slot.ref() is not param:
            return None
        return slot.t, {name: a.reshape(slot.shape).copy() for name, a in slot.arrays.items()}

    def set_slot_state(self, param: np.ndarray, step: int,
                       arrays: dict[str, Any]) -> None:
        """Give ``param`` the step count ``step`` and copies of ``arrays`` as its slot state.

        Parameters
        ----------
        param : ndarray
            The parameter, as later passed to :meth:`update`.
        step : int
            Steps already taken (>= 0).
        arrays : dict of str to array_like
            One array of ``param``'s shape per name of :attr:`slot_names`, no other.

        Raises
        ------
        TypeError, ValueError
            For a bad parameter, step count, name set, shape or dtype; nothing is changed then.
        """
        if not isinstance(param, np.ndarray) or param.dtype.kind != "f":
            raise TypeError(f"param must be a float ndarray, got {type(param).__name__}")
        if isinstance(step, (bool, np.bool_)) or not isinstance(step, numbers.Integral) \
                or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        if not isinstance(arrays, dict) or set(arrays) != set(self._slot_names):
            got = sorted(arrays) if isinstance(arrays, dict) else type(arrays).__name__
            raise ValueError(f"{type(self).__name__} keeps the slots "
                             f"{sorted(self._slot_names)}, got {got}")
        converted = {}
        for name, value in arrays.items():
            a = np.asarray(value)
            if a.dtype.kind not in "fiu":
                raise TypeError(f"slot {name!r} must be a real array, got dtype {a.dtype}")
            if a.shape != param.shape:
                raise ValueError(f"slot {name!r} must have the parameter's shape {param.shape}, "
                                 f"got {a.shape}")
            converted[name] = a.reshape(-1)
        slot = self._slot(param)
        for name, a in converted.items():
            slot.arrays[name][...] = a  # in place: a prepared fused plan keeps these arrays
        slot.t = int(step)

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
        """The gradient factor of clipping by norm: ``clipnorm / max(||g||, clipnorm)``, the
        step's global factor with ``global_clipnorm``, else 1.0."""
        if self.clipnorm is not None:
            return _norm_factor(self.clipnorm, _k.penalized_sumsq(p, g, l1, l2, slot.partial))
        if self.global_clipnorm is not None:
            return self._step_scale
        return 1.0

    def _clips_globally(self) -> bool:
        # Keras applies clipnorm first; the two are exclusive unless changed after __init__.
        return self.global_clipnorm is not None and self.clipnorm is None

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
        l1, l2 = float(l1), float(l2)
        if self._clips_globally():
            # A lone parameter is a step of its own: its norm is the step's norm.
            self._step_scale = _norm_factor(
                self.global_clipnorm, _k.penalized_sumsq(p, g, l1, l2, slot.partial))
        slot.t += 1
        self._step(slot, p, g, lr, l1, l2)

    def update_many(self, params: list[np.ndarray], grads: list[np.ndarray],
                    l1s: list[float] | None = None, l2s: list[float] | None = None) -> None:
        """Update several parameters as one step: exactly :meth:`update` on each in turn,
        except that ``global_clipnorm`` clips by the norm of all of the step's gradients.

        Parameters
        ----------
        params, grads : lists of ndarray
            As for :meth:`update`, pairwise.
        l1s, l2s : lists of float, optional
            Penalty factors per parameter (zeros when omitted).
        """
        if len(params) != len(grads):
            raise ValueError(f"got {len(params)} params but {len(grads)} grads")
        n = len(params)
        l1s = [0.0] * n if l1s is None else l1s
        l2s = [0.0] * n if l2s is None else l2s
        if len(l1s) != n or len(l2s) != n:
            raise ValueError(f"l1s and l2s must have one factor per param ({n})")
        if self._clips_globally():
            self._update_global(params, grads, [float(v) for v in l1s],
                                [float(v) for v in l2s])
            return
        for k in range(n):
            self.update(params[k], grads[k], l1s[k], l2s[k])

    def _update_global(self, params: list[np.ndarray], grads: list[np.ndarray],
                       l1s: list[float], l2s: list[float]) -> None:
        """One step clipped by the global norm of all its (penalized) gradients."""
        # Everything is validated before anything changes, and every norm is taken before
        # any parameter moves: Keras computes all gradients (penalties included) first.
        flat = [self._check(params[k], grads[k]) for k in range(len(params))]
        lr = learning_rate_of(self)
        slots = [self._slot(param) for param in params]
        # Fixed-block partial sums per parameter, added in parameter order: the norm does
        # not depend on the thread count.
        sumsq = 0.0
        for k, (p, g) in enumerate(flat):
            sumsq += _k.penalized_sumsq(p, g, l1s[k], l2s[k], slots[k].partial)
        self._step_scale = _norm_factor(self.global_clipnorm, sumsq)
        for k, (p, g) in enumerate(flat):
            slots[k].t += 1
            self._step(slots[k], p, g, lr, l1s[k], l2s[k])

    def _plan(self, params: list[np.ndarray], grads: list[np.ndarray]) -> Any:
        """Prepared state for :meth:`_run_plan` over these exact arrays, or None (no fast
        path).  Subclasses with a fused many-parameter kernel override both."""
        return None

    def _run_plan(self, plan: Any, l1s: list[float], l2s: list[float]) -> bool:
        """One step of every parameter of ``plan``; False (nothing done) when the fast path
        does not apply now, in which case the caller uses :meth:`update_many`."""
        return False

    def _step(self, slot: _Slot, p: np.ndarray, g: np.ndarray, lr: float, l1: float,
              l2: float) -> None:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments."""
        config: dict[str, Any] = {"learning_rate": self.learning_rate}
        for key in ("clipnorm", "clipvalue", "global_clipnorm", "weight_decay"):
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
    clipnorm, clipvalue, global_clipnorm, weight_decay
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
                and self.global_clipnorm is None and not self.weight_decay)

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
    clipnorm, clipvalue, global_clipnorm, weight_decay
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
        # (1 - beta_1, 1 - beta_2, epsilon) in a parameter dtype, as scalars and as an array,
        # keyed by the dtype and the hyper-parameters (which may be changed between steps).
        self._typed: dict[tuple, tuple] = {}

    def _consts(self, dtype: np.dtype) -> tuple:
        key = (dtype, self.beta_1, self.beta_2, self.epsilon)
        consts = self._typed.get(key)
        if consts is None:
            dt = np.dtype(dtype).type
            scalars = (dt(1.0 - self.beta_1), dt(1.0 - self.beta_2), dt(self.epsilon))
            consts = (scalars, np.array(scalars, dtype=dtype))
            if len(self._typed) > 16:  # hyper-parameters changed many times: forget old ones
                self._typed.clear()
            self._typed[key] = consts
        return consts

    def _is_plain(self) -> bool:
        return (not self.amsgrad and self.clipnorm is None and self.clipvalue is None
                and self.global_clipnorm is None and not self.weight_decay)

    def _step(self, slot, p, g, lr, l1, l2):
        t = float(slot.t)
        alpha = lr * math.sqrt(1.0 - self.beta_2**t) / (1.0 - self.beta_1**t)
        a = slot.arrays
        if l1 == 0.0 and l2 == 0.0 and self._is_plain():
            # The common case: a branch-free kernel in the parameter's dtype.
            _k.adam_plain(p, g, a["m"], a["v"], p.dtype.type(alpha), *self._consts(p.dtype)[0])
            return
        vhat = a["vhat"] if self.amsgrad else _k.empty_like_dtype(p.dtype)
        _k.adam(p, g, a["m"], a["v"], vhat, alpha, self.beta_1, self.beta_2, self.epsilon,
                self.amsgrad, l1, l2, self._scale(slot, p, g, l1, l2), self.clipvalue or 0.0,
                self._decay(lr))

    def _plan(self, params, grads):
        if not params:
            return None
        dtype = params[0].dtype
        for p, g in zip(params, grads, strict=True):
            if not (isinstance(p, np.ndarray) and isinstance(g, np.ndarray)
                    and p.dtype == dtype and g.dtype == dtype and p.shape == g.shape
                    and p.flags.c_contiguous and g.flags.c_contiguous and p.flags.writeable
                    and dtype.kind == "f"):
                return None  # mixed dtypes or arrays needing conversion: per-parameter path
        if any(p is q for i, p in enumerate(params) for q in params[:i]):
            return None  # one parameter twice in a step: let update count both steps
        return _AdamPlan(self, params, grads)

    def _run_plan(self, plan, l1s, l2s):
        if not self._is_plain():
            return False
        for k in range(len(l1s)):
            if l1s[k] != 0.0 or l2s[k] != 0.0:
                return False
        if plan.resets != getattr(self, "_resets", 0):
            plan.attach(self)  # reset() since the plan was made: fresh slots
        lr = self.learning_rate
        if type(lr) is not float or not 0.0 <= lr < math.inf:
            lr = learning_rate_of(self)
        alphas = plan.alphas
        last_t = -1
        alpha = 0.0
        for k, slot in enumerate(plan.slots):
            t = slot.t + 1
            slot.t = t
            if t != last_t:  # the same count for every parameter, except right after a change
                alpha = lr * math.sqrt(1.0 - self.beta_2**t) / (1.0 - self.beta_1**t)
                last_t = t
            alphas[k] = alpha  # rounded to the parameter dtype, as the scalar kernel does
        consts = plan.consts
        if consts is None or plan.hyper != (self.beta_1, self.beta_2, self.epsilon):
            plan.hyper = (self.beta_1, self.beta_2, self.epsilon)
            consts = plan.consts = self._consts(plan.dtype)[1]
        _k.adam_plain_many(plan.flat, plan.grad_flat, plan.m, plan.v, alphas, consts)
        return True

    def get_config(self):
        config = super().get_config()
        config.update(beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon,
                      amsgrad=self.amsgrad)
        return config


class _AdamPlan:
    """The flat views, slot arrays and alpha workspace of one list of parameters."""

    def __init__(self, opt: Adam, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        self.params = tuple(params)
        self.grads = tuple(grads)
        self.dtype = params[0].dtype
        # Views (they keep the arrays alive: a plan lives only as long as its collector).
        self.flat = tuple(p.reshape(-1) for p in params)
        self.grad_flat = tuple(g.reshape(-1) for g in grads)
        self.alphas = np.zeros(len(params), dtype=self.dtype)
        self.hyper: tuple | None = None
        self.consts: np.ndarray | None = None
        self.attach(opt)

    def attach(self, opt: Adam) -> None:
        """Take the optimizer's slots of the parameters (created if need be)."""
        self.resets = getattr(opt, "_resets", 0)
        self.slots = tuple(opt._slot(p) for p in self.params)
        self.m = tuple(s.arrays["m"] for s in self.slots)
        self.v = tuple(s.arrays["v"] for s in self.slots)


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
    beta_1, beta_2, epsilon, amsgrad, clipnorm, clipvalue, global_clipnorm
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
    clipnorm, clipvalue, global_clipnorm, weight_decay
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


class StepCollector(Optimizer):
    """Stands in for ``target`` during one step's backprops and applies the step at the end.

    Each :meth:`update` a layer makes is recorded (the arrays, not copies: the gradients must
    stay untouched until :meth:`flush`, as a layer's gradient workspaces do);
    :meth:`flush` hands them all to ``target`` in the recorded order, through its fused
    many-parameter path when it has one (prepared once and reused while the same arrays come
    back every step), else :meth:`Optimizer.update_many`.  The result is exactly that of
    updating each parameter when it is handed over, provided nothing reads an updated
    parameter before :meth:`flush`, which holds for the layers of a
    :class:`fastdense.Sequential` (see the module notes); with ``global_clipnorm`` the recorded
    updates are one step, clipped by the norm of all their gradients.

    Parameters
    ----------
    target : Optimizer
        A fastdense optimizer that is not plain SGD (plain SGD is fused into the layers'
        kernels instead).
    """

    def __init__(self, target: Optimizer) -> None:
        # No Optimizer.__init__: the collector keeps no state of its own besides the records.
        if not isinstance(target, Optimizer) or isinstance(target, StepCollector):
            raise TypeError(f"target must be a fastdense optimizer, got {type(target).__name__}")
        self.target = target
        self._slots = {}
        self._params: list[Any] = []
        self._grads: list[Any] = []
        self._l1s: list[float] = []
        self._l2s: list[float] = []
        self._count = 0
        self._plan_of: Any = None

    @property
    def learning_rate(self) -> Any:  # type: ignore[override]
        """The target's (a layer validates it before its update)."""
        return self.target.learning_rate

    @property
    def iterations(self) -> int:
        """The target's."""
        return self.target.iterations

    def _clips_globally(self) -> bool:
        return False  # update_many only records too: the target clips the step at flush

    def update(self, param, grad, l1=0.0, l2=0.0):
        """Record one parameter's update; it is applied by :meth:`flush`."""
        k = self._count
        if k < len(self._params):
            self._params[k] = param
            self._grads[k] = grad
            self._l1s[k] = l1
            self._l2s[k] = l2
        else:
            self._params.append(param)
            self._grads.append(grad)
            self._l1s.append(l1)
            self._l2s.append(l2)
        self._count = k + 1

    def flush(self) -> None:
        """Apply every recorded update as one step of ``target`` and clear the records."""
        k = self._count
        if k == 0:
            return
        self._count = 0
        params, grads, l1s, l2s = self._params, self._grads, self._l1s, self._l2s
        if k < len(params):  # fewer updates than an earlier step: drop the stale tail
            del params[k:], grads[k:], l1s[k:], l2s[k:]
        target = self.target
        plan = self._plan_of
        if plan is None or not _same(plan.params, params) or not _same(plan.grads, grads):
            plan = self._plan_of = target._plan(params, grads)
        if plan is None or not target._run_plan(plan, l1s, l2s):
            target.update_many(params, grads, l1s, l2s)

    def get_config(self) -> dict[str, Any]:
        return self.target.get_config()

    def __repr__(self) -> str:
        return f"StepCollector({self.target!r})"


def _norm_factor(limit: float, sumsq: float) -> float:
    """``limit / max(sqrt(sumsq), limit)``: the factor that brings a norm down to ``limit``."""
    return limit / max(math.sqrt(sumsq), limit)


def _same(a: tuple, b: list) -> bool:
    """Whether ``a`` and ``b`` hold the same objects, in order."""
    if len(a) != len(b):
        return False
    for i in range(len(a)):
        if a[i] is not b[i]:
            return False
    return True


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
