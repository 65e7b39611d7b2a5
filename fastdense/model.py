"""``Sequential``: a Keras-style stack of Dense layers with ``compile``/``fit``/``evaluate``.

Training loop design
--------------------
* **No allocation per step.**  ``fit`` sets every layer's ``_reuse_outputs`` (outputs and input
  gradients become workspaces reused by the next call) and allocates its own batch buffers once:
  a Numba kernel gathers each shuffled batch into them.  Every batch, the last one included,
  has the full ``batch_size`` rows, so the layers' workspaces never change shape: a short last
  batch is padded with zero rows whose loss gradient is zero, so they add exactly nothing to the
  weight gradients, and the loss and metrics count only the real rows.
* **Softmax/sigmoid fused into the loss.**  When the last layer's activation is the one the loss
  absorbs (softmax with a categorical cross-entropy, sigmoid with binary cross-entropy), the
  layer runs as a linear layer during ``fit``/``evaluate`` and the loss kernel turns the logits
  ``z`` into ``dL/dz = (p - y) / N`` directly, without the softmax Jacobian.  (``Dense`` offers
  no "gradient with respect to z" entry point, so the model swaps the layer's activation to
  linear for the duration of the call and restores it in a ``finally``.)  ``predict`` runs the
  layer as configured.
* **One optimizer call per step.**  The layers hand their updates to a
  :class:`fastdense.optimizers.StepCollector`, which applies the whole step after the last
  backprop (plain Adam: one fused kernel call for every parameter).  The result is bitwise that
  of updating each layer inside its backprop: an update touches only its own parameter and no
  backprop reads another layer's weights.  Other per-step Python work is kept small as well:
  one kernel gathers a batch's inputs and labels, and the progress bar is touched only a few
  times per second.
* **Deterministic.**  Shuffling uses ``numpy.random.default_rng(seed)``; every kernel splits
  work over rows or elements and reduces in a fixed order, so the same seed gives bitwise the
  same weights for any thread count.
"""

from __future__ import annotations

import json
import numbers
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fastdense import activations
from fastdense import losses as _losses
from fastdense import optimizers as _optimizers
from fastdense.dense import Dense, LayerStateError
from fastdense.kernels import activation as _ak
from fastdense.kernels import loss as _lk
from fastdense.kernels import metrics as _mk

_FORMAT = "fastdense.Sequential"
#: Seconds between progress-bar updates during ``fit`` (a few per second at most).
_BAR_REFRESH = 0.25
#: 2 added the optimizer's state; files of version 1 still load.
_FORMAT_VERSION = 2
_CONFIG_KEY = "__config__"
#: Prefix of the optimizer's slot arrays in a saved file.
_OPTIMIZER_PREFIX = "optimizer/"


# ---------------------------------------------------------------------------------- history
class History:
    """What :meth:`Sequential.fit` returns.

    Attributes
    ----------
    history : dict[str, list[float]]
        Per-epoch values, Keras' names: ``"loss"``, each metric (e.g. ``"accuracy"``), and with
        validation data ``"val_loss"`` and ``"val_<metric>"``.
    epoch : list[int]
        Epoch indices (from 0).
    params : dict
        ``epochs``, ``steps`` (per epoch), ``batch_size``, ``samples``, ``verbose``.
    """

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.params: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"History(epochs={len(self.epoch)}, keys={list(self.history)})"


# ---------------------------------------------------------------------------------- metrics
_ACCURACY_NAMES = ("accuracy", "acc")
_METRIC_KINDS = {
    "binary_accuracy": "binary",
    "categorical_accuracy": "categorical",
    "sparse_categorical_accuracy": "sparse",
    "top_k_categorical_accuracy": "top_k",
    "sparse_top_k_categorical_accuracy": "sparse_top_k",
}
#: Kinds that need integer labels, and kinds that need targets of the output's shape.
_SPARSE_KINDS = ("sparse", "sparse_top_k")
_DENSE_KINDS = ("binary", "categorical", "top_k")
#: ``k`` of the top-k accuracies named by string (Keras' default).
_TOP_K = 5


class _Metric:
    """A metric accumulated as ``total / count`` over an epoch (Keras' mean metrics).

    ``kind`` is one of ``_METRIC_KINDS``' values, ``"loss"`` (a loss function as metric) or
    ``"auto"`` (``"accuracy"`` with a regression loss: decided from the output width).
    """

    def __init__(self, name: str, kind: str, loss: _losses.Loss | None = None) -> None:
        self.name = name
        self.kind = kind
        self.loss = loss

    def per_sample(self, out_dim: int) -> int:
        """Counted units per sample: binary accuracy averages over the outputs too."""
        return out_dim if self.kind == "binary" else 1


def _resolve_metric(identifier: Any, loss: _losses.Loss) -> _Metric:
    """The metric named ``identifier`` for a model trained with ``loss``; as in Keras 3 its
    name (in logs and History) is the identifier as given."""
    if not isinstance(identifier, str):
        raise TypeError(f"metrics must be names (str), got {type(identifier).__name__}")
    key = identifier.lower()
    if key in _ACCURACY_NAMES:
        # Keras picks the accuracy matching the loss.
        if isinstance(loss, _losses.BinaryCrossentropy):
            kind = "binary"
        elif loss.sparse:
            kind = "sparse"
        elif isinstance(loss, _losses.CategoricalCrossentropy):
            kind = "categorical"
        else:
            kind = "auto"  # decided from the output width at fit time
        return _Metric(identifier, kind)
    if key in _METRIC_KINDS:
        metric = _Metric(identifier, _METRIC_KINDS[key])
        if metric.kind in _SPARSE_KINDS and not loss.sparse:
            raise ValueError(f"metric {identifier!r} needs integer labels, but the loss "
                             f"{loss.name} takes targets of the output's shape")
        if metric.kind in _DENSE_KINDS and loss.sparse:
            raise ValueError(f"metric {identifier!r} needs targets of the output's shape, but "
                             f"the loss {loss.name} takes integer labels")
        return metric
    try:
        metric_loss = _losses.get(key)
    except ValueError:
        names = [*_ACCURACY_NAMES, *_METRIC_KINDS, *_losses._BY_NAME]
        raise ValueError(
            f"unknown metric {identifier!r}; expected one of {', '.join(names)}"
        ) from None
    if metric_loss.sparse != loss.sparse:
        raise ValueError(f"metric {identifier!r} and loss {loss.name} need different target "
                         "formats (integer labels and targets of the output's shape)")
    return _Metric(identifier, "loss", metric_loss)


# ---------------------------------------------------------------------------------- helpers
def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _derived_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


class _Workspace:
    """Buffers of one batch size, allocated once per ``fit``/``evaluate`` call."""

    def __init__(self, batch: int, in_dim: int, out_dim: int, dtype: np.dtype,
                 sparse: bool) -> None:
        self.x = np.zeros((batch, in_dim), dtype=dtype)
        self.y = (np.zeros(batch, dtype=np.int64) if sparse
                  else np.zeros((batch, out_dim), dtype=dtype))
        self.grad = np.zeros((batch, out_dim), dtype=dtype)
        self.scratch = np.zeros((batch, out_dim), dtype=dtype)  # gradients of loss metrics
        self.probs = np.zeros((batch, out_dim), dtype=dtype)  # fused outputs, activated
        self.rows = np.zeros(batch, dtype=np.float64)


class _Data:
    """Validated, converted arrays of one dataset."""

    def __init__(self, x: np.ndarray, y: np.ndarray | None) -> None:
        self.x = x
        self.y = y
        self.n = x.shape[0]


# ---------------------------------------------------------------------------------- model
class Sequential:
    """A linear stack of :class:`fastdense.Dense` layers, trained Keras-style.

    Parameters
    ----------
    layers : sequence of Dense, optional
        The layers, input to output.
    name : str, optional

    Examples
    --------
    >>> model = Sequential([Dense(100, "relu"), Dense(10, "softmax")])
    >>> model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    >>> history = model.fit(x, y, epochs=10, validation_split=0.1)    # doctest: +SKIP
    """

    def __init__(self, layers: Sequence[Dense] | None = None, name: str | None = None) -> None:
        self.name = name if name is not None else "sequential"
        self.layers: list[Dense] = []
        self.optimizer: Any = None
        self.loss: _losses.Loss | None = None
        self._metrics: list[_Metric] = []
        self._metric_names: list[str] = []
        if layers is not None:
            if isinstance(layers, Dense) or not isinstance(layers, (list, tuple)):
                raise TypeError(
                    f"layers must be a list of Dense layers, got {type(layers).__name__}"
                )
            for layer in layers:
                self.add(layer)

    # ------------------------------------------------------------------ structure
    def add(self, layer: Dense) -> None:
        """Append a layer.

        Raises
        ------
        TypeError
            If ``layer`` is not a :class:`fastdense.Dense`.
        ValueError
            If the layer is built with an input width that does not match the previous layer.
        """
        if not isinstance(layer, Dense):
            raise TypeError(f"Sequential holds Dense layers, got {type(layer).__name__}")
        if any(layer is other for other in self.layers):
            raise ValueError(f"layer {layer.name!r} is already in the model")
        if self.layers and layer.built and layer.input_dim != self.layers[-1].units:
            raise ValueError(
                f"layer {layer.name!r} expects {layer.input_dim} inputs but the previous layer "
                f"has {self.layers[-1].units} units"
            )
        self.layers.append(layer)

    @property
    def built(self) -> bool:
        """Whether every layer has weights."""
        return bool(self.layers) and all(layer.built for layer in self.layers)

    @property
    def input_dim(self) -> int | None:
        """Input features, once built."""
        return self.layers[0].input_dim if self.layers else None

    @property
    def output_dim(self) -> int:
        """Units of the last layer."""
        self._require_layers()
        return self.layers[-1].units

    @property
    def dtype(self) -> np.dtype:
        """The first layer's dtype: inputs are converted to it once per call."""
        self._require_layers()
        return self.layers[0].dtype

    def _require_layers(self) -> None:
        if not self.layers:
            raise ValueError("the model has no layers: add Dense layers first")

    def build(self, input_dim: int, seed: int | None = None) -> None:
        """Create the weights of every unbuilt layer for ``input_dim`` input features.

        Parameters
        ----------
        input_dim : int
        seed : int or None
            For layers without a seed of their own: each gets one derived from ``seed`` and its
            position, so the same seed builds the same weights.
        """
        self._require_layers()
        _check_int("input_dim", input_dim, 1)
        width = int(input_dim)
        for i, layer in enumerate(self.layers):
            if layer.built:
                if layer.input_dim != width:
                    raise ValueError(
                        f"layer {i} ({layer.name!r}) is built for {layer.input_dim} inputs, "
                        f"but receives {width}"
                    )
            elif seed is not None and layer.seed is None:
                layer.seed = _derived_seed(seed, i)
                try:
                    layer.build(width)
                finally:
                    layer.seed = None
            else:
                layer.build(width)
            width = layer.units

    def count_params(self) -> int:
        """The number of weights (0 for unbuilt layers)."""
        return sum(sum(w.size for w in layer.get_weights()) for layer in self.layers
                   if layer.built)

    def summary(self, print_fn: Callable[[str], Any] | None = None) -> str:
        """Print (and return) a table of layers, output shapes and parameter counts."""
        rows = [("Layer (type)", "Output Shape", "Param #")]
        total = 0
        for layer in self.layers:
            if layer.built:
                count = sum(w.size for w in layer.get_weights())
                total += count
                params = f"{count:,}"
            else:
                params = "0 (unbuilt)"
            act = layer.activation.name
            rows.append((f"{layer.name} (Dense, {act})", f"(None, {layer.units})", params))
        widths = [max(len(r[i]) for r in rows) + 2 for i in range(3)]
        line = "─" * sum(widths)
        out = [f'Model: "{self.name}"', line]
        for k, r in enumerate(rows):
            out.append("".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
            out.append("═" * sum(widths) if k == 0 else line)
        out.append(f"Total params: {total:,}")
        text = "\n".join(out)
        (print_fn or print)(text)
        return text

    # ------------------------------------------------------------------ compile
    def compile(self, optimizer: Any = "rmsprop", loss: Any = None,
                metrics: Sequence[str] | None = None) -> None:
        """Choose the optimizer, the loss and the metrics.

        Parameters
        ----------
        optimizer : str or optimizer, default "rmsprop" (Keras' default)
            ``"sgd"``, ``"adam"``, ``"adamw"``, ``"rmsprop"``, a fastdense optimizer, or any
            object with a ``learning_rate`` (plain SGD).
        loss : str or Loss
            ``"mse"``, ``"mae"``, ``"binary_crossentropy"``, ``"categorical_crossentropy"``,
            ``"sparse_categorical_crossentropy"`` (long names also) or a
            :class:`fastdense.losses.Loss`.
        metrics : list of str, optional
            Keras' identifiers: ``"accuracy"``/``"acc"`` (picks binary/categorical/sparse
            accuracy from the loss, as Keras does), ``"binary_accuracy"`` (threshold 0.5),
            ``"categorical_accuracy"``, ``"sparse_categorical_accuracy"``,
            ``"top_k_categorical_accuracy"``, ``"sparse_top_k_categorical_accuracy"`` (k=5),
            or a loss name such as ``"mse"``/``"mean_squared_error"`` or
            ``"mae"``/``"mean_absolute_error"``.  Each is named in logs and History as given
            (``"mae"``, ``"val_mae"``) and averaged over an epoch's samples.

        Raises
        ------
        ValueError, TypeError
            For an unknown or unfit optimizer, loss or metric; the model is then unchanged.
        """
        if loss is None:
            raise ValueError("compile needs a loss, e.g. loss='categorical_crossentropy'")
        # Everything is resolved before anything is assigned: a bad argument changes nothing.
        resolved_optimizer = _optimizers.get(optimizer)
        resolved_loss = _losses.get(loss)
        if metrics is None:
            metrics = []
        if isinstance(metrics, str) or not isinstance(metrics, (list, tuple)):
            raise TypeError(f"metrics must be a list of names, got {type(metrics).__name__}")
        resolved_metrics = [_resolve_metric(m, resolved_loss) for m in metrics]
        names = ["loss", *(m.name for m in resolved_metrics)]
        if len(set(names)) != len(names):
            raise ValueError(f"metric names must be unique and not 'loss', got {names}")
        self.optimizer = resolved_optimizer
        self.loss = resolved_loss
        self._metrics = resolved_metrics
        self._metric_names = names[1:]

    def _require_compiled(self) -> None:
        if self.loss is None:
            raise LayerStateError("the model must be compiled before fit/evaluate: call "
                                  "model.compile(optimizer, loss)")

    # ------------------------------------------------------------------ data
    def _prepare_x(self, x: Any, what: str = "x") -> np.ndarray:
        self._require_layers()
        a = np.asarray(x)
        if a.dtype.kind not in "fiub":
            raise TypeError(f"{what} must be a real array, got dtype {a.dtype}")
        if a.ndim != 2:
            raise ValueError(f"{what} must be 2-D (samples, features), got shape {a.shape}")
        if a.shape[0] == 0:
            raise ValueError(f"{what} must hold at least one sample, got shape {a.shape}")
        if self.input_dim is not None and a.shape[1] != self.input_dim:
            raise ValueError(
                f"{what} must have {self.input_dim} features, got shape {a.shape}"
            )
        # One conversion per call, so batches are gathered without casts.
        return np.ascontiguousarray(a, dtype=self.dtype)

    def _prepare(self, x: Any, y: Any, what: str = "") -> _Data:
        xa = self._prepare_x(x, what + "x")
        if y is None:
            raise ValueError(f"{what}y is required")
        ya = np.asarray(y)
        if ya.ndim == 0 or ya.shape[0] != xa.shape[0]:
            got = "a scalar" if ya.ndim == 0 else f"{ya.shape[0]}"
            raise ValueError(
                f"{what}x and {what}y must have the same number of samples, got "
                f"{xa.shape[0]} and {got}"
            )
        assert self.loss is not None
        yt = self.loss.check_targets(ya, (xa.shape[0], self.output_dim), self.dtype)
        return _Data(xa, yt)

    # ------------------------------------------------------------------ internals
    def _fused(self) -> bool:
        assert self.loss is not None
        act = self.loss.fused_activation
        fused = act is not None and self.layers[-1].activation.name == act
        if fused:
            self._absorbed_code = self.layers[-1].activation.code
        return fused

    class _Session:
        """Context: reuse-outputs on, the absorbed activation swapped out; restored at exit."""

        def __init__(self, model: Sequential, fused: bool) -> None:
            self.model = model
            self.fused = fused

        def __enter__(self) -> Sequential._Session:
            layers = self.model.layers
            self.reuse = [layer._reuse_outputs for layer in layers]
            self.activation = layers[-1].activation
            for layer in layers:
                layer._reuse_outputs = True
            if self.fused:
                layers[-1].activation = activations.get("linear")
            return self

        def __exit__(self, *exc: object) -> None:
            layers = self.model.layers
            layers[-1].activation = self.activation
            for layer, reuse in zip(layers, self.reuse, strict=True):
                layer._reuse_outputs = reuse
            for layer in layers:
                layer._cache = None  # a pending backprop would see the wrong activation

    def _metric_kinds(self, fused: bool) -> list[tuple[_Metric, str, float]]:
        """(metric, resolved kind, binary threshold) for this call."""
        assert self.loss is not None
        out = []
        # Raw logits (from_logits) are compared with 0, probabilities with 0.5 (sigmoid(0) =
        # 0.5); a fused activation is applied before the comparison (see _batch_stats).
        threshold = 0.0 if self.loss.from_logits else 0.5
        for m in self._metrics:
            kind = m.kind
            if kind == "auto":  # only with a regression loss, whose targets are dense
                kind = "binary" if self.output_dim == 1 else "categorical"
            # (compile checked that each metric's target format is the loss's.)
            out.append((m, kind, threshold))
        return out

    def _forward(self, xb: np.ndarray) -> np.ndarray:
        h = xb
        for layer in self.layers:
            h = layer.forward(h)
        return h

    def _batch_stats(self, ws: _Workspace, out: np.ndarray, n: int, fused: bool,
                     kinds: list[tuple[_Metric, str, float]], totals: list[float]) -> float:
        """Loss (into ``ws.grad``) and metric sums of one batch; returns the mean loss."""
        assert self.loss is not None
        value = self.loss.compute(ws.y, out, ws.grad, ws.rows, n, True if fused else None)
        probs = None
        for k, (m, kind, threshold) in enumerate(kinds):
            if kind == "categorical":
                totals[k] += _lk.count_categorical(ws.y, out, n)
            elif kind == "sparse":
                totals[k] += _lk.count_sparse(ws.y, out, n)
            else:
                # These see the model's outputs: with the activation fused into the loss,
                # ``out`` holds logits, so apply the activation first (a softmax's logits
                # are no probabilities to threshold, and top-k ranks Keras' probabilities,
                # whose rounding may tie logits that differ).
                if fused and probs is None:
                    probs = ws.probs
                    _ak.activate(self._absorbed_code, out, probs)
                pred = probs if fused else out
                if kind == "binary":
                    totals[k] += _lk.count_binary(ws.y, pred, n, threshold)
                elif kind == "top_k":
                    totals[k] += _mk.count_top_k_categorical(ws.y, pred, n, _TOP_K)
                elif kind == "sparse_top_k":
                    totals[k] += _mk.count_top_k_sparse(ws.y, pred, n, _TOP_K)
                else:
                    totals[k] += n * m.loss.compute(ws.y, pred, ws.scratch, ws.rows, n)
        return value

    def _regularization(self) -> float:
        loss = 0.0
        for layer in self.layers:
            if layer.kernel_regularizer is not None or layer.bias_regularizer is not None:
                loss += layer.regularization_loss()
        return loss

    def _run_eval(self, data: _Data, ws: _Workspace, index: np.ndarray, fused: bool,
                  kinds: list[tuple[_Metric, str, float]]) -> dict[str, float]:
        batch = ws.x.shape[0]
        loss_sum = 0.0
        totals = [0.0] * len(kinds)
        for start in range(0, data.n, batch):
            n = min(batch, data.n - start)
            self._gather(data, index, start, n, ws)
            out = self._forward(ws.x)
            loss_sum += n * self._batch_stats(ws, out, n, fused, kinds, totals)
        reg = self._regularization()
        logs = {"loss": loss_sum / data.n + reg}
        for (m, kind, _), total in zip(kinds, totals, strict=True):
            logs[m.name] = total / (data.n * m.per_sample(self.output_dim)) if kind != "loss" \
                else total / data.n
        return logs

    @staticmethod
    def _gather(data: _Data, index: np.ndarray, start: int, n: int, ws: _Workspace) -> None:
        if data.y.ndim == 1:
            _lk.gather_batch(data.x, data.y, index, start, n, ws.x, ws.y)
        else:
            _lk.gather_rows(data.x, index, start, n, ws.x)
            _lk.gather_rows(data.y, index, start, n, ws.y)

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        x: Any,
        y: Any,
        batch_size: int = 32,
        epochs: int = 1,
        validation_data: tuple[Any, Any] | None = None,
        validation_split: float = 0.0,
        shuffle: bool = True,
        verbose: int = 1,
        seed: int | None = None,
        callbacks: Sequence[Any] | None = None,
    ) -> History:
        """Train for ``epochs`` passes over ``(x, y)``.

        Parameters
        ----------
        x : array_like (samples, features)
        y : array_like
            Targets in the loss's format: the output's shape, or integer labels for the sparse
            loss.
        batch_size : int, default 32
        epochs : int, default 1
        validation_data : (x_val, y_val), optional
            Evaluated at the end of every epoch (``val_`` entries of the history).
        validation_split : float in [0, 1), default 0
            Fraction of the data, taken from the end before any shuffling (as Keras does), held
            out for validation; ignored when ``validation_data`` is given.
        shuffle : bool, default True
            Reshuffle the training samples every epoch.
        verbose : {0, 1, 2}, default 1
            0 silent, 1 a tqdm progress bar per epoch (loss, metrics, samples/s), 2 one line per
            epoch.
        seed : int or None
            Seeds the shuffling and the weights of layers that are unbuilt and unseeded.  The
            same seed gives bitwise the same trained weights for any thread count.
        callbacks : list, optional
            Objects with optional ``on_epoch_begin(epoch, logs)`` / ``on_epoch_end(epoch,
            logs)`` methods.

        Returns
        -------
        History
        """
        self._require_layers()
        self._require_compiled()
        batch_size = _check_int("batch_size", batch_size, 1)
        epochs = _check_int("epochs", epochs, 0)
        if verbose not in (0, 1, 2) or isinstance(verbose, bool):
            raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
        if not isinstance(shuffle, (bool, np.bool_)):
            raise TypeError(f"shuffle must be a bool, got {type(shuffle).__name__}")
        if isinstance(validation_split, bool) or not isinstance(validation_split, numbers.Real) \
                or not 0.0 <= validation_split < 1.0:
            raise ValueError(f"validation_split must be a number in [0, 1), got "
                             f"{validation_split!r}")
        if seed is not None:
            _check_int("seed", seed, 0)
        callbacks = list(callbacks or [])

        x0 = np.asarray(x)
        if not self.built:
            if x0.ndim != 2:
                raise ValueError(f"x must be 2-D (samples, features), got shape {x0.shape}")
            self.build(x0.shape[1], seed)
        data = self._prepare(x, y)
        val: _Data | None = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("validation_data must be a pair (x_val, y_val), got "
                                 f"{type(validation_data).__name__}")
            val = self._prepare(validation_data[0], validation_data[1], "validation ")
        elif validation_split > 0.0:
            n_val = int(data.n * validation_split)
            if n_val == 0 or n_val == data.n:
                raise ValueError(
                    f"validation_split={validation_split} of {data.n} samples leaves "
                    f"{n_val} for validation and {data.n - n_val} for training; both must be > 0"
                )
            split = data.n - n_val
            val = _Data(data.x[split:], data.y[split:])
            data = _Data(data.x[:split], data.y[:split])

        fused = self._fused()
        kinds = self._metric_kinds(fused)
        assert self.loss is not None
        ws = _Workspace(batch_size, data.x.shape[1], self.output_dim, self.dtype,
                        self.loss.sparse)
        index = np.arange(data.n, dtype=np.int64)
        val_index = np.arange(val.n, dtype=np.int64) if val is not None else None
        rng = np.random.default_rng(seed)
        steps = -(-data.n // batch_size)
        history = History()
        history.params = {"epochs": epochs, "steps": steps, "batch_size": batch_size,
                          "samples": data.n, "verbose": verbose}
        keys = ["loss", *self._metric_names]
        if val is not None:
            keys += [f"val_{k}" for k in keys]
        history.history = {k: [] for k in keys}
        optimizer = self.optimizer
        # The layers hand their updates to a collector that applies the whole step at once
        # (one fused kernel call for plain Adam): see fastdense.optimizers.  Plain SGD stays
        # fused into the layers' kernels, and foreign optimizer objects are used as they are.
        collector = None
        if isinstance(optimizer, _optimizers.Optimizer) and not optimizer.is_plain_sgd:
            collector = _optimizers.StepCollector(optimizer)
            optimizer = collector
        layers = self.layers
        reversed_layers = layers[::-1]
        first_layer = layers[0]
        has_reg = any(layer.kernel_regularizer is not None or layer.bias_regularizer is not None
                      for layer in layers)

        with self._Session(self, fused):
            for epoch in range(epochs):
                for cb in callbacks:
                    if hasattr(cb, "on_epoch_begin"):
                        cb.on_epoch_begin(epoch, {})
                t0 = time.perf_counter()
                if shuffle:
                    rng.shuffle(index)  # in place: no allocation
                bar = self._progress(epoch, epochs, data.n) if verbose == 1 else None
                if verbose == 1 and bar is None:
                    verbose = 2  # no tqdm: one line per epoch instead of a bar
                last_refresh = t0
                pending = 0  # samples not yet shown on the bar
                loss_sum = 0.0
                totals = [0.0] * len(kinds)
                seen = 0
                for start in range(0, data.n, batch_size):
                    n = min(batch_size, data.n - start)
                    self._gather(data, index, start, n, ws)
                    out = ws.x
                    for layer in layers:
                        out = layer.forward(out)
                    value = self._batch_stats(ws, out, n, fused, kinds, totals)
                    if has_reg:
                        value += self._regularization()  # Keras reports the penalty too
                    g = ws.grad
                    try:
                        for layer in reversed_layers:
                            # nothing consumes the first layer's input gradient: skip that
                            # product
                            g = layer.backprop(g, optimizer,
                                               compute_input_grad=layer is not first_layer)
                    finally:
                        # Also when a backprop raises: the layers before it are updated, as
                        # they would have been without the collector.
                        if collector is not None:
                            collector.flush()
                    loss_sum += n * value
                    seen += n
                    if bar is not None:
                        pending += n
                        now = time.perf_counter()
                        # A bar update and the postfix's formatting cost more than a step:
                        # touch the bar only a few times per second.
                        if now - last_refresh >= _BAR_REFRESH:
                            last_refresh = now
                            bar.set_postfix_str(self._format(
                                self._epoch_logs(loss_sum, totals, kinds, seen)), refresh=False)
                            bar.update(pending)
                            pending = 0
                if bar is not None and pending:
                    bar.update(pending)
                logs = self._epoch_logs(loss_sum, totals, kinds, data.n)
                if val is not None:
                    assert val_index is not None
                    for k, v in self._run_eval(val, ws, val_index, fused, kinds).items():
                        logs[f"val_{k}"] = v
                for k in keys:
                    history.history[k].append(logs[k])
                history.epoch.append(epoch)
                elapsed = time.perf_counter() - t0
                if bar is not None:
                    bar.set_postfix_str(self._format(logs), refresh=False)
                    bar.close()
                elif verbose == 2:
                    print(f"Epoch {epoch + 1}/{epochs} - {elapsed:.2f}s - "
                          f"{data.n / max(elapsed, 1e-12):,.0f} samples/s - "
                          f"{self._format(logs, ' - ')}", file=sys.stdout)
                for cb in callbacks:
                    if hasattr(cb, "on_epoch_end"):
                        cb.on_epoch_end(epoch, logs)
        return history

    @staticmethod
    def _progress(epoch: int, epochs: int, total: int) -> Any:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            # tqdm is an optional dependency (the "train" extra): fall back to epoch lines.
            warnings.warn("verbose=1 draws a progress bar with tqdm, which is not installed "
                          "(pip install 'fastdense[train]'); printing one line per epoch",
                          stacklevel=4)
            return None

        return tqdm(total=total, desc=f"Epoch {epoch + 1}/{epochs}", unit="sample",
                    unit_scale=False, leave=True, dynamic_ncols=True)

    @staticmethod
    def _format(logs: dict[str, float], sep: str = ", ") -> str:
        return sep.join(f"{k}: {v:.4f}" for k, v in logs.items())

    def _epoch_logs(self, loss_sum: float, totals: list[float],
                    kinds: list[tuple[_Metric, str, float]], seen: int) -> dict[str, float]:
        logs = {"loss": loss_sum / seen}
        for (m, kind, _), total in zip(kinds, totals, strict=True):
            logs[m.name] = total / seen if kind == "loss" \
                else total / (seen * m.per_sample(self.output_dim))
        return logs

    # ------------------------------------------------------------------ evaluate / predict
    def evaluate(self, x: Any, y: Any, batch_size: int = 32, verbose: int = 0,
                 return_dict: bool = False) -> float | list[float] | dict[str, float]:
        """Loss (plus regularization penalties) and metrics over ``(x, y)``.

        Returns
        -------
        float, list or dict
            The loss alone without metrics, else ``[loss, *metrics]`` (Keras' order), or a dict
            with ``return_dict``.
        """
        self._require_compiled()
        batch_size = _check_int("batch_size", batch_size, 1)
        if not self.built:
            raise LayerStateError("the model is not built: fit it, or call build(input_dim)")
        data = self._prepare(x, y)
        fused = self._fused()
        kinds = self._metric_kinds(fused)
        assert self.loss is not None
        batch = min(batch_size, data.n)
        ws = _Workspace(batch, data.x.shape[1], self.output_dim, self.dtype, self.loss.sparse)
        with self._Session(self, fused):
            logs = self._run_eval(data, ws, np.arange(data.n, dtype=np.int64), fused, kinds)
        if verbose:
            print(self._format(logs, " - "))
        if return_dict:
            return logs
        values = list(logs.values())
        return values[0] if len(values) == 1 else values

    def predict(self, x: Any, batch_size: int = 32, verbose: int = 0) -> np.ndarray:
        """The model's outputs for ``x``, computed ``batch_size`` rows at a time.

        Returns
        -------
        ndarray (samples, output_dim), the first layer's dtype
        """
        batch_size = _check_int("batch_size", batch_size, 1)
        xa = self._prepare_x(x)
        if not self.built:
            self.build(xa.shape[1])
        out = np.empty((xa.shape[0], self.output_dim), dtype=self.layers[-1].dtype)
        with self._Session(self, fused=False):
            for start in range(0, xa.shape[0], batch_size):
                stop = min(start + batch_size, xa.shape[0])
                out[start:stop] = self._forward(xa[start:stop])
        if verbose:
            print(f"predicted {xa.shape[0]} samples")
        return out

    __call__ = predict

    # ------------------------------------------------------------------ weights and config
    def get_weights(self) -> list[np.ndarray]:
        """Copies of every layer's ``[kernel, bias]``, in order."""
        return [w for layer in self.layers for w in layer.get_weights()]

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Inverse of :meth:`get_weights`."""
        weights = list(weights)
        need = sum(2 if layer.use_bias else 1 for layer in self.layers)
        if len(weights) != need:
            raise ValueError(f"expected {need} arrays, got {len(weights)}")
        k = 0
        for layer in self.layers:
            m = 2 if layer.use_bias else 1
            layer.set_weights(weights[k:k + m])
            k += m

    def get_config(self) -> dict[str, Any]:
        """The architecture (and compile settings) as JSON-serializable data."""
        layers = []
        for i, layer in enumerate(self.layers):
            config = layer.get_config()
            try:
                json.dumps(config)
            except TypeError as err:
                raise TypeError(
                    f"layer {i} ({layer.name!r}) has a custom activation, initializer or "
                    f"regularizer that cannot be saved as JSON: {err}"
                ) from None
            layers.append({"class_name": "Dense", "config": config})
        compiled = None
        if self.loss is not None:
            compiled = {
                "optimizer": _optimizers.serialize(self.optimizer),
                "loss": _losses.serialize(self.loss),
                "metrics": list(self._metric_names),
            }
        return {"name": self.name, "layers": layers, "input_dim": self.input_dim,
                "compile": compiled}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Sequential:
        """Rebuild an unbuilt (but compiled, if it was) model from :meth:`get_config`."""
        layers = []
        for spec in config["layers"]:
            if spec.get("class_name") != "Dense":
                raise ValueError(f"unknown layer class {spec.get('class_name')!r}")
            layers.append(Dense.from_config(spec["config"]))
        model = cls(layers, name=config.get("name"))
        compiled = config.get("compile")
        if compiled:
            model.compile(_optimizers.deserialize(compiled["optimizer"]),
                          _losses.deserialize(compiled["loss"]), compiled["metrics"])
        return model

    def _parameters(self) -> list[tuple[str, np.ndarray]]:
        """``("layers/<i>/kernel" | "layers/<i>/bias", array)`` of every weight, in order."""
        out = []
        for i, layer in enumerate(self.layers):
            out.append((f"layers/{i}/kernel", layer.weight))
            if layer.use_bias:
                out.append((f"layers/{i}/bias", layer.bias))
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Write the architecture, compile settings, weights and optimizer state to the single
        ``.npz`` file ``path``.

        The file holds the JSON under ``__config__`` (a string array) and each weight as
        ``layers/<i>/kernel`` / ``layers/<i>/bias``; nothing is pickled.  Of a compiled model
        the optimizer's state is saved as well, as Keras does: each weight's step count (in
        the JSON, ``"optimizer_state"``) and slot arrays (``optimizer/layers/<i>/kernel/m``
        and so on), so that :func:`load_model` continues training exactly where it stopped.
        The file is written at ``path`` exactly (no suffix is added).
        """
        if not self.built:
            raise LayerStateError("the model is not built: there are no weights to save")
        config = {"format": _FORMAT, "format_version": _FORMAT_VERSION, **self.get_config()}
        arrays: dict[str, np.ndarray] = {}
        for key, param in self._parameters():
            arrays[key] = param
        steps: dict[str, int] = {}
        optimizer = self.optimizer
        if self.loss is not None and isinstance(optimizer, _optimizers.Optimizer):
            for key, param in self._parameters():
                state = optimizer.get_slot_state(param)
                if state is not None:  # never updated (or reset): starts fresh when loaded
                    steps[key] = state[0]
                    for name, slot in state[1].items():
                        arrays[f"{_OPTIMIZER_PREFIX}{key}/{name}"] = slot
        config["optimizer_state"] = {"steps": steps} if self.loss is not None else None
        arrays[_CONFIG_KEY] = np.array(json.dumps(config))
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    def _load_optimizer_state(self, state: Any, arrays: dict[str, np.ndarray],
                              path: str) -> None:
        """Give the optimizer the state :meth:`save` wrote (the weights are already set)."""
        optimizer = self.optimizer
        if not arrays and not (isinstance(state, dict) and state.get("steps")):
            return
        if not isinstance(optimizer, _optimizers.Optimizer) or not isinstance(state, dict) \
                or not isinstance(state.get("steps"), dict):
            raise ValueError(f"{path}: optimizer arrays {sorted(arrays)} without a compiled "
                             "optimizer and its step counts")
        params = dict(self._parameters())
        steps = state["steps"]
        unknown = sorted(set(steps) - set(params))
        if unknown:
            raise ValueError(f"{path}: optimizer state for unknown weights {unknown}; the "
                             f"model has {sorted(params)}")
        expected = {f"{_OPTIMIZER_PREFIX}{key}/{name}" for key in steps
                    for name in optimizer.slot_names}
        if set(arrays) != expected:
            raise ValueError(f"{path}: holds optimizer arrays {sorted(arrays)}, expected "
                             f"{sorted(expected)} for {type(optimizer).__name__}")
        for key, step in steps.items():
            slots = {name: arrays[f"{_OPTIMIZER_PREFIX}{key}/{name}"]
                     for name in optimizer.slot_names}
            try:
                optimizer.set_slot_state(params[key], step, slots)
            except (TypeError, ValueError) as err:
                raise ValueError(f"{path}: optimizer state of {key}: {err}") from err

    def __repr__(self) -> str:
        inner = ", ".join(repr(layer) for layer in self.layers)
        return f"Sequential([{inner}])"


def load_model(path: str | os.PathLike) -> Sequential:
    """Load a model written by :meth:`Sequential.save` (no pickle: ``allow_pickle=False``).

    A model saved compiled comes back compiled with the same optimizer (and its state: step
    counts and slots), loss and metrics; continuing ``fit`` gives bitwise the weights that
    continuing on the saved model would.  Files without optimizer state (older versions, or
    uncompiled models) load with a fresh optimizer, if any.

    Raises
    ------
    ValueError
        If the file is not a fastdense model file or its weights do not match its config.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"{path!s} is not a readable .npz model file: {err}") from err
    if _CONFIG_KEY not in arrays:
        raise ValueError(f"{path!s} has no {_CONFIG_KEY!r} entry: not a fastdense model file")
    try:
        config = json.loads(str(arrays.pop(_CONFIG_KEY)))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path!s}: the model config is not valid JSON: {err}") from err
    if config.get("format") != _FORMAT:
        raise ValueError(f"{path!s}: expected format {_FORMAT!r}, got {config.get('format')!r}")
    if config.get("format_version", 0) > _FORMAT_VERSION:
        raise ValueError(f"{path!s}: format version {config['format_version']} is newer than "
                         f"this fastdense understands ({_FORMAT_VERSION})")
    model = Sequential.from_config(config)
    optimizer_arrays = {k: arrays.pop(k) for k in list(arrays)
                        if k.startswith(_OPTIMIZER_PREFIX)}
    expected = set()
    for i, layer in enumerate(model.layers):
        expected.add(f"layers/{i}/kernel")
        if layer.use_bias:
            expected.add(f"layers/{i}/bias")
    if set(arrays) != expected:
        raise ValueError(f"{path!s} holds arrays {sorted(arrays)}, expected {sorted(expected)}")
    for i, layer in enumerate(model.layers):
        weights = [arrays[f"layers/{i}/kernel"]]
        if layer.use_bias:
            weights.append(arrays[f"layers/{i}/bias"])
        layer.set_weights(weights)
    for i in range(1, len(model.layers)):
        if model.layers[i].input_dim != model.layers[i - 1].units:
            raise ValueError(f"{path!s}: layer {i} has {model.layers[i].input_dim} inputs but "
                             f"layer {i - 1} has {model.layers[i - 1].units} units")
    model._load_optimizer_state(config.get("optimizer_state"), optimizer_arrays, str(path))
    return model
