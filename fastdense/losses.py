"""Losses with Keras semantics: the batch-mean value and its gradient in one fused pass.

Each loss returns the mean over the batch of the per-sample loss (Keras' default
``"sum_over_batch_size"`` reduction) and the gradient of that mean with respect to the
predictions, ``d mean / d y_pred``, which already carries the ``1 / batch`` factor that a layer's
batch-summed backprop expects.

Softmax (sigmoid) followed by categorical (binary) cross-entropy is better differentiated as a
whole: ``dL/dz = (p - y) / N`` needs no division by a probability that may underflow.
:attr:`Loss.fused_activation` names the output activation a loss can absorb this way and
:meth:`Loss.value_and_gradient_from_logits` computes the loss of ``activation(z)`` and its
gradient with respect to ``z``.  Keras does the same when the predictions come straight from a
softmax/sigmoid layer (it reads the logits behind them), so the value is the unclipped
log-softmax one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fastdense._config import Configurable
from fastdense.kernels import loss as _k

EPSILON = _k.EPSILON


def _as_2d_pred(y_pred: Any) -> np.ndarray:
    p = np.asarray(y_pred)
    if p.dtype.kind not in "fiu":
        raise TypeError(f"y_pred must be a real array, got dtype {p.dtype}")
    if p.dtype.kind != "f":
        p = p.astype(np.float64)
    if p.ndim == 1:
        p = p.reshape(-1, 1)
    if p.ndim != 2:
        raise ValueError(f"y_pred must have shape (batch, outputs) or (batch,), got {p.shape}")
    if p.shape[0] == 0:
        raise ValueError(f"y_pred must hold at least one sample, got shape {p.shape}")
    return np.ascontiguousarray(p)


class Loss(Configurable):
    """Base class of fastdense's losses.

    Parameters
    ----------
    from_logits : bool
        Whether predictions are logits (cross-entropies only).
    """

    name = "loss"
    #: Whether ``from_logits`` changes anything.
    _has_logits = False
    #: The output activation this loss can absorb when ``from_logits`` is False.
    _absorbs: str | None = None
    #: Whether the targets are integer class labels.
    sparse = False

    def __init__(self, from_logits: bool = False) -> None:
        if not isinstance(from_logits, (bool, np.bool_)):
            raise TypeError(f"from_logits must be a bool, got {type(from_logits).__name__}")
        if from_logits and not self._has_logits:
            raise ValueError(f"{self.name} has no logits form: from_logits must be False")
        self.from_logits = bool(from_logits)

    @property
    def fused_activation(self) -> str | None:
        """``"softmax"``/``"sigmoid"`` if a final layer of that activation can be fused in."""
        return None if self.from_logits else self._absorbs

    # ------------------------------------------------------------------ validation
    def check_targets(self, y_true: Any, y_pred_shape: tuple[int, int],
                      dtype: Any = np.float64) -> np.ndarray:
        """Return ``y_true`` as a C-contiguous array fit for the kernels, or raise.

        Dense targets must have the predictions' shape (a 1-D target is accepted for a single
        output); sparse targets are integers in ``[0, classes)`` of shape ``(batch,)`` or
        ``(batch, 1)``.
        """
        t = np.asarray(y_true)
        n, d = y_pred_shape
        if self.sparse:
            if t.ndim == 2 and t.shape[1] == 1:
                t = t.reshape(-1)
            if t.shape != (n,):
                raise ValueError(
                    f"{self.name} expects integer labels of shape ({n},) or ({n}, 1), got "
                    f"shape {np.asarray(y_true).shape}"
                )
            if t.dtype.kind == "f":
                if not np.all(np.isfinite(t)) or np.any(t != np.round(t)):
                    raise ValueError(f"{self.name} expects integer class labels, got "
                                     "non-integral values")
            elif t.dtype.kind not in "iub":
                raise TypeError(f"{self.name} expects integer labels, got dtype {t.dtype}")
            if n and (t.min() < 0 or t.max() >= d):
                raise ValueError(
                    f"{self.name}: labels must be in [0, {d}) for {d} outputs, got "
                    f"min {t.min()} and max {t.max()}"
                )
            return np.ascontiguousarray(t, dtype=np.int64)
        if t.dtype.kind not in "fiub":
            raise TypeError(f"{self.name} expects real targets, got dtype {t.dtype}")
        if t.ndim == 1 and d == 1:
            t = t.reshape(-1, 1)
        if t.shape != (n, d):
            hint = (" (integer labels need sparse_categorical_crossentropy)"
                    if t.ndim == 1 and d > 1 else "")
            raise ValueError(
                f"{self.name} expects targets of the predictions' shape {(n, d)}, got "
                f"{np.asarray(y_true).shape}{hint}"
            )
        return np.ascontiguousarray(t, dtype=dtype)

    # ------------------------------------------------------------------ compute
    def _kernel(self, y_true: np.ndarray, y_pred: np.ndarray, grad: np.ndarray,
                rows: np.ndarray, n: int, from_logits: bool) -> float:
        raise NotImplementedError

    def compute(self, y_true: np.ndarray, y_pred: np.ndarray, grad: np.ndarray,
                rows: np.ndarray, n: int, logits: bool | None = None) -> float:
        """Fast path without validation, used by :class:`fastdense.Sequential`.

        ``y_true`` comes from :meth:`check_targets`; ``grad`` has ``y_pred``'s shape and
        dtype; ``rows`` is a float64 workspace of at least ``len(y_pred)``; only the first ``n``
        rows are data, the others padding (zero gradient).  ``logits=True`` treats ``y_pred``
        as the pre-activation of :attr:`fused_activation`.  Returns the mean loss.
        """
        from_logits = self.from_logits if logits is None else logits
        return float(self._kernel(y_true, y_pred, grad, rows, n, from_logits))

    def _run(self, y_true: Any, y_pred: Any, logits: bool) -> tuple[float, np.ndarray]:
        p = _as_2d_pred(y_pred)
        t = self.check_targets(y_true, p.shape)
        grad = np.empty_like(p)
        rows = np.empty(p.shape[0], dtype=np.float64)
        value = self.compute(t, p, grad, rows, p.shape[0], logits)
        shape = np.shape(y_pred)
        return value, grad.reshape(shape)

    def value_and_gradient(self, y_true: Any, y_pred: Any) -> tuple[float, np.ndarray]:
        """The batch-mean loss and ``d mean / d y_pred`` (shaped like ``y_pred``)."""
        return self._run(y_true, y_pred, self.from_logits)

    def value_and_gradient_from_logits(self, y_true: Any, z: Any) -> tuple[float, np.ndarray]:
        """Loss of ``fused_activation(z)`` and its gradient with respect to ``z``.

        Raises
        ------
        ValueError
            If this loss absorbs no activation (see :attr:`fused_activation`).
        """
        if self._absorbs is None:
            raise ValueError(f"{self.name} cannot absorb an output activation")
        return self._run(y_true, z, True)

    def __call__(self, y_true: Any, y_pred: Any) -> float:
        """The batch-mean loss."""
        return self.value_and_gradient(y_true, y_pred)[0]

    def gradient(self, y_true: Any, y_pred: Any) -> np.ndarray:
        """``d mean / d y_pred``, shaped like ``y_pred``."""
        return self.value_and_gradient(y_true, y_pred)[1]

    # ------------------------------------------------------------------ config
    def get_config(self) -> dict[str, Any]:
        """The constructor arguments."""
        return {"from_logits": self.from_logits} if self._has_logits else {}


class MeanSquaredError(Loss):
    """``mean((y_pred - y_true)**2)`` over outputs, then over the batch."""

    name = "mean_squared_error"

    def __init__(self) -> None:
        super().__init__(False)

    def _kernel(self, y_true, y_pred, grad, rows, n, from_logits):
        return _k.mean_squared_error(y_true, y_pred, grad, rows, n)


class MeanAbsoluteError(Loss):
    """``mean(|y_pred - y_true|)`` over outputs, then over the batch (gradient sign, 0 at 0)."""

    name = "mean_absolute_error"

    def __init__(self) -> None:
        super().__init__(False)

    def _kernel(self, y_true, y_pred, grad, rows, n, from_logits):
        return _k.mean_absolute_error(y_true, y_pred, grad, rows, n)


class BinaryCrossentropy(Loss):
    """Binary cross-entropy per output, averaged over outputs then the batch.

    Probabilities are clipped to ``[1e-7, 1 - 1e-7]`` as in Keras; with ``from_logits`` the
    stable ``max(z, 0) - z y + log1p(exp(-|z|))`` is used.  Absorbs a final sigmoid.
    """

    name = "binary_crossentropy"
    _has_logits = True
    _absorbs = "sigmoid"

    def _kernel(self, y_true, y_pred, grad, rows, n, from_logits):
        return _k.binary_crossentropy(y_true, y_pred, grad, rows, n, from_logits)


class CategoricalCrossentropy(Loss):
    """``-sum(y_true * log(y_pred))`` per sample over one-hot (or soft) targets.

    Probabilities are renormalized to sum to one and clipped to ``[1e-7, 1 - 1e-7]`` as in
    Keras; with ``from_logits`` a stable log-softmax is used.  Absorbs a final softmax.
    """

    name = "categorical_crossentropy"
    _has_logits = True
    _absorbs = "softmax"

    def _kernel(self, y_true, y_pred, grad, rows, n, from_logits):
        return _k.categorical_crossentropy(y_true, y_pred, grad, rows, n, from_logits)


class SparseCategoricalCrossentropy(Loss):
    """Categorical cross-entropy with integer class labels.

    Without logits the loss is ``-log(clip(p_y / sum(p)))`` (Keras' JAX/NumPy backends; its
    TensorFlow backend renormalizes once more after clipping, which differs only for clipped
    rows).  Absorbs a final softmax.
    """

    name = "sparse_categorical_crossentropy"
    _has_logits = True
    _absorbs = "softmax"
    sparse = True

    def _kernel(self, y_true, y_pred, grad, rows, n, from_logits):
        return _k.sparse_categorical_crossentropy(y_true, y_pred, grad, rows, n, from_logits)


_BY_NAME: dict[str, type[Loss]] = {
    "mean_squared_error": MeanSquaredError,
    "mse": MeanSquaredError,
    "mean_absolute_error": MeanAbsoluteError,
    "mae": MeanAbsoluteError,
    "binary_crossentropy": BinaryCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
}

_CLASSES: dict[str, type[Loss]] = {
    cls.__name__: cls
    for cls in (MeanSquaredError, MeanAbsoluteError, BinaryCrossentropy,
                CategoricalCrossentropy, SparseCategoricalCrossentropy)
}


def get(identifier: Any) -> Loss:
    """Resolve a loss: a Keras name (``"mse"``, ``"categorical_crossentropy"``, ...) or a
    :class:`Loss` instance.

    Raises
    ------
    ValueError
        For an unknown name.
    TypeError
        For anything else.
    """
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, str):
        key = identifier.lower()
        if key not in _BY_NAME:
            raise ValueError(
                f"unknown loss {identifier!r}; expected one of {', '.join(_BY_NAME)} or a "
                "Loss instance"
            )
        return _BY_NAME[key]()
    if isinstance(identifier, type) and issubclass(identifier, Loss):
        return identifier()
    raise TypeError(f"loss must be a name or a fastdense Loss, got {type(identifier).__name__}")


def serialize(loss: Loss) -> dict[str, Any]:
    """``{"class_name", "config"}`` of a loss."""
    return {"class_name": type(loss).__name__, "config": loss.get_config()}


def deserialize(data: dict[str, Any]) -> Loss:
    """Inverse of :func:`serialize`."""
    name = data.get("class_name") if isinstance(data, dict) else None
    if name not in _CLASSES:
        raise ValueError(f"unknown loss class {name!r}; expected one of {sorted(_CLASSES)}")
    return _CLASSES[name].from_config(dict(data.get("config", {})))


def _functional(cls: type[Loss], doc: str):
    def fn(y_true: Any, y_pred: Any, from_logits: bool = False) -> float:
        loss = cls(from_logits) if cls._has_logits else cls()
        if from_logits and not cls._has_logits:
            raise ValueError(f"{cls.name} has no logits form: from_logits must be False")
        return loss(y_true, y_pred)

    fn.__name__ = cls.name
    fn.__doc__ = doc
    return fn


mean_squared_error = _functional(MeanSquaredError, "Batch-mean squared error.")
mean_absolute_error = _functional(MeanAbsoluteError, "Batch-mean absolute error.")
binary_crossentropy = _functional(BinaryCrossentropy, "Batch-mean binary cross-entropy.")
categorical_crossentropy = _functional(CategoricalCrossentropy,
                                       "Batch-mean categorical cross-entropy.")
sparse_categorical_crossentropy = _functional(SparseCategoricalCrossentropy,
                                              "Batch-mean sparse categorical cross-entropy.")
mse = mean_squared_error
mae = mean_absolute_error
