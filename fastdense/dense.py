"""The Dense layer: Keras' ``Dense`` for NumPy arrays, computed by fastdense's kernels."""

from __future__ import annotations

import numbers
import operator
import os
import warnings
from typing import Any, NamedTuple

import numba
import numpy as np

from fastdense import _aligned, activations, initializers, regularizers
from fastdense.kernels import dense as _k
from fastdense.kernels.activation import LINEAR
from fastdense.kernels.memory import aligned_empty_2d
from fastdense.optimizers import apply_update, learning_rate_of, plain_sgd_rate

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class DtypeWarning(UserWarning):
    """An input's dtype differs from the layer's; it was cast (warned once per layer)."""


class LayerStateError(RuntimeError, ValueError):
    """A call that the layer's current state does not allow (e.g. backprop before forward).

    It is both a :class:`RuntimeError` and a :class:`ValueError`, so either ``except`` works.
    """


def _fusable(reg: regularizers.Regularizer | None) -> bool:
    """Whether the kernels can apply ``reg``'s gradient through its l1/l2 factors."""
    return reg is None or type(reg) in (regularizers.L1, regularizers.L2, regularizers.L1L2)


def _factors(reg: regularizers.Regularizer | None) -> tuple[float, float]:
    return (reg.l1, reg.l2) if reg is not None and _fusable(reg) else (0.0, 0.0)


def _layer_dtype(dtype: Any) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError as err:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from err
    if dt not in _FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _planned(name: str, doc: str) -> property:
    """An attribute of :class:`Dense` whose assignment drops the recorded plans of
    ``forward`` and ``backprop`` (``Dense._make_plan``), so that a replay needs to check only
    its new argument.  Reading it costs what reading a plain attribute does."""
    slot = "_planned_" + name

    def assign(self: Dense, value: Any) -> None:
        self.__dict__[slot] = value
        self._plan = self._backprop_plan = None

    return property(operator.attrgetter(slot), assign, doc=doc)


def _entry_point(kernel: Any, args: tuple) -> Any:
    """``kernel``'s compiled entry point for the types of ``args``, which skips its
    dispatcher's typing of every argument on each call (about 0.25 µs for 7 arguments, 0.4 µs
    for the backward pass's 18); the dispatcher itself if no such specialization exists."""
    try:
        return kernel.get_overload(tuple(numba.typeof(a) for a in args))
    except KeyError:
        return kernel


class _ForwardPlan(NamedTuple):
    """What a forward call decided for a 2-D input (``Dense._make_plan``), in the order the
    replay unpacks it."""

    shape: tuple[int, int]
    dtype: np.dtype
    out_shape: tuple[int, int]
    like: np.ndarray | None  # a fresh output is allocated on a cache line, of this dtype
    run: Any  # the kernel's compiled entry point, or its dispatcher
    weight: np.ndarray
    bias: np.ndarray
    code: int
    z: np.ndarray | None  # kept pre-activations, or None (then z is y)
    y: np.ndarray | None  # the reused output, or None (a fresh one each call)
    ws: np.ndarray
    threads_from: int | None  # forward_rows' last argument, None for the other kernels
    training: bool


class Dense:
    """A fully-connected layer: ``y = activation(x @ kernel + bias)``.

    Parameters
    ----------
    units : int
        Output features.
    activation : str, None or (callable, callable)
        Keras name (``"relu"``, ``"sigmoid"``, ``"tanh"``, ``"softmax"``, ``"gelu"``,
        ``"leaky_relu"``, ``"elu"``, ``"selu"``, ``"swish"``/``"silu"``, ``"softplus"``,
        ``"linear"``), ``None`` (linear), or ``(fn, grad)`` with ``grad(z, y) = dy/dz``.
    use_bias : bool
        Whether to add a bias vector.
    kernel_initializer, bias_initializer : str, Initializer or callable
        Keras identifiers (see :mod:`fastdense.initializers`) or ``fn(shape, dtype)``.
    kernel_regularizer, bias_regularizer : str, Regularizer, (callable, callable) or None
        Penalties added to the gradients in :meth:`backprop` (see
        :mod:`fastdense.regularizers`).
    dtype : float32 or float64
        Dtype of the weights and of the computation.  Inputs of another real dtype are cast,
        with a :class:`DtypeWarning` the first time.
    training : bool
        When False, :meth:`forward` keeps nothing and :meth:`backprop` raises.
    seed : int or None
        Seeds weight initialization: the same seed gives the same weights.
    name : str or None
        A label for summaries and configs.

    Notes
    -----
    The kernel has shape ``(in, units)`` and is built from the last axis of the first input (or
    by :meth:`build`).  Inputs of rank > 2 are transformed along their last axis; a 1-D input
    is one sample.  :meth:`forward` keeps a reference to its input for :meth:`backprop`: do not
    modify the input in place between the two calls.

    For a batch of one or two rows, a layer that has not run :meth:`backprop` yet streams
    weights of less than 512 KiB (256 KiB for two rows) on one thread (inference); from its
    first backprop on, it shares them among the threads as backprop does.  The results have
    the same bits either way (see ``kernels.dense.rows_threads_from``).
    """

    weight = _planned("weight", "The kernel, shape ``(in, units)``; None until built.")
    bias = _planned("bias", "The bias, shape ``(units,)``; None until built or without bias.")
    activation = _planned("activation", "The :class:`~fastdense.activations.Activation`.")
    training = _planned("training", "Whether forward keeps what backprop needs.")
    kernel_regularizer = _planned("kernel_regularizer", "The kernel's penalty, or None.")
    bias_regularizer = _planned("bias_regularizer", "The bias' penalty, or None.")
    _reuse_outputs = _planned("_reuse_outputs", "Whether outputs are reused workspaces.")
    _trains = _planned("_trains", "Whether backprop has run: a batch of one or two then "
                       "shares the weights among the threads as backprop does.")

    def __init__(
        self,
        units: int,
        activation: str | tuple | None = None,
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        dtype: Any = np.float32,
        training: bool = True,
        seed: int | None = None,
        name: str | None = None,
    ) -> None:
        if isinstance(units, bool) or not isinstance(units, numbers.Integral) or units <= 0:
            raise ValueError(f"units must be a positive integer, got {units!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        self.units = int(units)
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.dtype = _layer_dtype(dtype)
        self.training = bool(training)
        self.seed = None if seed is None else int(seed)
        self.name = name if name is not None else "dense"
        self.weight = None
        self.bias = None
        self._warned_dtype = False
        self._cache: tuple | None = None
        self._workspace: dict[str, np.ndarray] = {}
        # What the last forward / backprop call decided, replayed by the next one when it
        # applies (see _make_plan, and backprop's end).
        self._plan: tuple | None = None  # a _ForwardPlan's fields
        self._backprop_plan: tuple | None = None
        # When True (set by Sequential), outputs and input gradients are workspaces reused by
        # the next call instead of fresh arrays: no allocation per step, but the caller must
        # copy what it keeps.
        self._reuse_outputs = False
        # Until the first backprop the layer may be an inference one: its forward at batch 1
        # streams small weights on one thread (kernels.dense.rows_threads_from).
        self._trains = False

    # ------------------------------------------------------------------ building
    @property
    def built(self) -> bool:
        """Whether the weights exist."""
        return self.weight is not None

    @property
    def kernel(self) -> np.ndarray | None:
        """Alias of :attr:`weight`, Keras' name."""
        return self.weight

    @kernel.setter
    def kernel(self, value: np.ndarray) -> None:
        self.set_weights([value] + ([self.bias] if self.use_bias else []))

    @property
    def input_dim(self) -> int | None:
        """Input features, once built."""
        return None if self.weight is None else self.weight.shape[0]

    def build(self, input_dim: int) -> None:
        """Create the weights for ``input_dim`` input features."""
        if (
            isinstance(input_dim, bool)
            or not isinstance(input_dim, numbers.Integral)
            or input_dim <= 0
        ):
            raise ValueError(f"input_dim must be a positive integer, got {input_dim!r}")
        rng = np.random.default_rng(self.seed)
        kernel = self.kernel_initializer((int(input_dim), self.units), self.dtype, rng)
        bias = None
        if self.use_bias:
            init = self.bias_initializer
            if isinstance(init, initializers.TorchLinear) and init.fan_in is None:
                # PyTorch draws the bias from ±1/sqrt(fan_in) of the kernel, not of the bias.
                init = initializers.TorchLinear(fan_in=int(input_dim), seed=init.seed)
            bias = init((self.units,), self.dtype, rng)
        self.weight = _aligned.copy(kernel, self.dtype)
        self.bias = None if bias is None else _aligned.copy(bias, self.dtype)
        self._cache = None
        self._workspace.clear()  # sized for the previous shape

    # ------------------------------------------------------------------ input handling
    def _as_input(self, inputs: Any, what: str) -> np.ndarray:
        x = np.asarray(inputs)
        if x.dtype.kind not in "fiub":
            raise TypeError(
                f"{what} must be a real (float, int or bool) array, got dtype {x.dtype}"
            )
        if x.dtype != self.dtype:
            if not self._warned_dtype:
                warnings.warn(
                    f"{self.name}: {what} has dtype {x.dtype} but the layer computes in "
                    f"{self.dtype}; casting (this warning is shown once per layer)",
                    DtypeWarning,
                    stacklevel=3,
                )
                self._warned_dtype = True
            x = x.astype(self.dtype)
        return x

    # ------------------------------------------------------------------ compute
    def forward(self, inputs: Any) -> np.ndarray:
        """Return ``activation(inputs @ kernel + bias)``.

        Parameters
        ----------
        inputs : array_like, shape (..., in)
            Real values; the last axis is the feature axis.

        Returns
        -------
        ndarray, shape (..., units), the layer's dtype
        """
        plan = self._plan
        # The replay of the previous call's decisions (_make_plan), inline: at batch 1 a
        # method call more is a tenth of the whole call.
        if (plan is not None and type(inputs) is np.ndarray and inputs.shape == plan[0]
                and inputs.flags.c_contiguous and inputs.dtype is plan[1]):
            (shape, dtype, out_shape, like, run, weight, kbias, code, z, y, ws, threads_from,
             training) = plan
            if y is None:  # _aligned.output, inline
                y = np.empty(out_shape, dtype) if like is None else aligned_empty_2d(
                    *out_shape, like)
            if z is None:
                z = y
            if threads_from is None:
                run(inputs, weight, kbias, code, z, y, ws)
            else:
                run(inputs, weight, kbias, code, z, y, ws, threads_from)
            if training:
                self._cache = (inputs, z, y, shape)
            return y
        x = self._as_input(inputs, "inputs")
        if x.ndim == 0:
            raise ValueError("inputs must have at least one axis (features), got a scalar")
        in_dim = x.shape[-1]
        if self.built and in_dim != self.input_dim:
            raise ValueError(
                f"{self.name} expects inputs with {self.input_dim} features on the last axis, "
                f"got shape {x.shape}"
            )
        if not self.built:
            self.build(in_dim)
        x2 = x if x.ndim == 2 and x.flags.c_contiguous else np.ascontiguousarray(
            x.reshape(-1, in_dim))
        n = x2.shape[0]
        act = self.activation
        y = self._buffer("y", (n, self.units), self._reuse_outputs)
        keep_z = self.training and act.needs_z and not act.is_custom
        z = self._buffer("z", (n, self.units)) if keep_z else y
        bias = self.bias if self.use_bias else _k.empty_bias(self.dtype)
        rows, narrow = _k.product_paths(n, in_dim, self.units, self.dtype)
        dots = _k.uses_dots(self.units, self.dtype)
        ws = self._kernel_workspace(n, narrow, dots)
        act.prepare(self.dtype)
        forward = _k.forward_for(act.code, rows, narrow, self.units if dots else 0)
        threads_from = _k.rows_threads_from(self._trains) if rows and not dots else None
        args = (x2, self.weight, bias, act.code, z, y, ws)
        if threads_from is not None:
            args += (threads_from,)
        forward(*args)
        if act.is_custom:
            z = y.copy() if self.training else y
            y = np.ascontiguousarray(act.fn(z), dtype=self.dtype)
            if y.shape != z.shape:
                raise ValueError(f"custom activation returned shape {y.shape}, "
                                 f"expected {z.shape}")
        self._cache = (x2, z, y, x.shape) if self.training else None
        self._plan = None if act.is_custom or x2 is not inputs else self._make_plan(
            forward, args, keep_z)
        return y.reshape((*x.shape[:-1], self.units))

    __call__ = forward

    def _make_plan(self, kernel: Any, args: tuple, keep_z: bool) -> tuple:
        """Record what :meth:`forward` decided (``kernel`` called with ``args``: the 2-D input
        ``x``, weight, bias, code, ``z``, ``y``, workspace and for :func:`forward_rows` its
        ``threads_from``), to be replayed.

        The checks and choices of a forward call cost more than the kernel itself at batch 1
        (about 2 µs of Python), and a network calls a layer with inputs of one shape again and
        again.  The plan keeps the decisions and buffers; the next call replays it when its
        input has the same shape and dtype and is C-contiguous.  Everything else it depends on
        (weights, bias, activation, ``training``, output reuse, regularizers, whether the layer
        has trained) is a :func:`_planned` attribute, whose assignment drops the plan.

        The plan calls the kernel's compiled entry point for these argument types, not its
        dispatcher, which would work out the types again (a quarter of a microsecond).  Only
        the input is new on a replay, and it has the recorded shape, dtype and layout (its
        strides are not compared: a C-contiguous array's are those of its shape, but for axes
        of length 1, which compiled code never steps along, and ``flags.c_contiguous`` costs
        half of comparing them); the type's flags left unchecked (read-only, aligned) do not
        matter to code that only reads it.
        """
        reuse_y = self._workspace.get("y") if self._reuse_outputs else None
        x, weight, bias, code, z, _, ws = args[:7]
        threads_from = args[7] if len(args) > 7 else None
        run = _entry_point(kernel, args)
        out_shape = (x.shape[0], self.units)
        big = _aligned.aligns_output(out_shape, self.dtype.itemsize)
        like = _aligned.like(self.dtype) if big else None
        # Kept as a plain tuple: unpacking a tuple subclass takes Python's slow path (0.1 µs,
        # measured at batch 1).
        return tuple(_ForwardPlan(x.shape, x.dtype, out_shape, like, run, weight, bias, code,
                                  z if keep_z else None, reuse_y, ws, threads_from,
                                  self.training))

    def backprop(self, dLdy: Any, optimizer: Any, *,
                 compute_input_grad: bool = True) -> np.ndarray | None:
        """Backpropagate ``dLdy`` through the last forward pass and update the weights.

        All gradients are computed with the weights of that forward pass; the optimizer then
        updates kernel and bias.  Gradients are sums over the batch.

        Parameters
        ----------
        dLdy : array_like
            Gradient of the loss with respect to the last output, of the output's shape.
        optimizer : object
            A fastdense optimizer, or any object with a numeric ``learning_rate`` (plain SGD).
        compute_input_grad : bool, default True
            False skips ``dL/dinputs`` (and returns None): a network's first layer has no use
            for it, and it is one of the three products of a backward pass.

        Returns
        -------
        ndarray or None
            ``dL/dinputs``, shaped like the last input.
        """
        if not self.training:
            raise LayerStateError(f"{self.name} has training=False: backprop is disabled")
        if self._cache is None:
            raise LayerStateError(
                f"{self.name}: backprop needs a forward pass first (each forward allows one "
                "backprop)"
            )
        plan = self._backprop_plan
        if plan is not None and type(dLdy) is np.ndarray:
            done, dx = self._replay_backprop(plan, dLdy, optimizer, compute_input_grad)
            if done:
                return dx
        learning_rate_of(optimizer)
        x2, z, y, in_shape = self._cache
        out_shape = (*in_shape[:-1], self.units)
        g = self._as_input(dLdy, "dLdy")
        if g.shape != out_shape:
            raise ValueError(
                f"dLdy must have the shape of the last output {out_shape}, got {g.shape}"
            )
        if not self._trains:
            self._trains = True  # (drops the forward's plan: see rows_threads_from)
        g2 = np.ascontiguousarray(g.reshape(-1, self.units))
        n = x2.shape[0]
        act = self.activation
        act.prepare(self.dtype)
        if act.is_custom:
            g2 = np.ascontiguousarray(g2 * act.grad(z, y), dtype=self.dtype)
        kreg, breg = self.kernel_regularizer, self.bias_regularizer
        fusable = _fusable(kreg) and _fusable(breg)
        dz = self._buffer("dz", g2.shape)
        dw = self._buffer("dw", self.weight.shape)
        db = self._buffer("db", (self.units,)) if self.use_bias else _k.empty_bias(self.dtype)
        dx_rows = n if compute_input_grad else 0
        dx = self._buffer("dx", (dx_rows, self.input_dim), self._reuse_outputs)
        bias = self.bias if self.use_bias else _k.empty_bias(self.dtype)
        rows, narrow = _k.product_paths(n, self.input_dim, self.units, self.dtype)
        ws = self._kernel_workspace(n, narrow)
        if rows:
            backward = _k.backward_rows
        elif narrow:
            backward = _k.backward_narrow_for(n, self.input_dim, self.units, self.dtype,
                                               compute_input_grad)
        else:
            backward = _k.backward_for(n, self.input_dim, self.units, self.dtype,
                                       compute_input_grad)
        # (A layer of few units, or taking its input gradient by rows, computes dz apart
        # whatever the input gradient.)
        dz_first = _k.dz_over_threads(n, self.input_dim, self.units, act.code,
                                      compute_input_grad and not narrow
                                      and backward is not _k.backward_dx_by_rows)
        self._backward_and_update(backward, x2, z, y, g2, dz, dw, db, dx, bias, ws, optimizer,
                                  fusable, dz_first)
        plannable = (not act.is_custom and g is dLdy and g.ndim == 2
                     and g.flags.c_contiguous)
        if plannable:
            # The entry point for the types of this call (the flags, rate and penalty factors
            # are typed by their values' classes, which the replay keeps).
            l1w, l2w = _factors(kreg)
            l1b, l2b = _factors(breg)
            backward = _entry_point(backward, (x2, self.weight, bias, z, y, g2, act.code, dz,
                                               dw, db, dx, 0.0, l1w, l2w, l1b, l2b, False, ws))
        self._backprop_plan = None if not plannable else (
            g2.shape, g2.dtype, in_shape, compute_input_grad, backward, dz, dw,
            db, dx if self._reuse_outputs else None, bias, ws, fusable, dz_first)
        return dx.reshape(in_shape) if compute_input_grad else None

    def _backward_and_update(self, backward: Any, x: np.ndarray, z: np.ndarray, y: np.ndarray,
                             g: np.ndarray, dz: np.ndarray, dw: np.ndarray, db: np.ndarray,
                             dx: np.ndarray, bias: np.ndarray, ws: np.ndarray, optimizer: Any,
                             fusable: bool, dz_first: bool) -> None:
        """The gradients by the ``backward`` kernel, then the update: fused into the kernel
        for plain SGD with fusable penalties, else by ``optimizer``.  Ends the forward's state.
        With ``dz_first`` (``kernels.dense.dz_over_threads``), ``dz`` is computed first over the
        threads and handed to the kernel as the gradient of an identity activation.
        """
        kreg, breg = self.kernel_regularizer, self.bias_regularizer
        lr = plain_sgd_rate(optimizer)
        fuse = lr is not None and fusable
        l1w, l2w = _factors(kreg)
        l1b, l2b = _factors(breg)
        code = self.activation.code
        if dz_first:
            _k.activation_grad(g, z, y, code, dz)
            g, code = dz, LINEAR
        backward(x, self.weight, bias, z, y, g, code, dz, dw, db, dx,
                 lr if fuse else 0.0, l1w, l2w, l1b, l2b, fuse, ws)
        if not fuse:
            self._apply(optimizer, self.weight, dw, kreg)
            if self.use_bias:
                self._apply(optimizer, self.bias, db, breg)
        self._cache = None

    def _replay_backprop(self, plan: tuple, g: np.ndarray, optimizer: Any,
                         compute_input_grad: bool) -> tuple[bool, np.ndarray | None]:
        """:meth:`backprop` of the ndarray ``g`` by ``plan`` (what the previous call decided,
        as forward's :meth:`_make_plan` does): ``(True, dL/dinputs)``, or ``(False, None)``
        when the plan does not apply and the full path must run."""
        (shape, dtype, in_shape, want_dx, backward, dz, dw, db, dx, kbias, ws,
         fusable, dz_first) = plan
        x, z, y, cached_shape = self._cache
        # Weights, activation, regularizers and output reuse are _planned attributes: their
        # assignment has dropped the plan.
        if (g.shape != shape or not g.flags.c_contiguous or g.dtype is not dtype
                or cached_shape != in_shape or compute_input_grad != want_dx):
            return False, None
        learning_rate_of(optimizer)  # validated before anything changes, as the full path
        if dx is None:
            dx = self._fresh((shape[0] if want_dx else 0, dw.shape[0]))
        self._backward_and_update(backward, x, z, y, g, dz, dw, db, dx, kbias, ws, optimizer,
                                  fusable, dz_first)
        return True, (dx if want_dx else None)

    def _kernel_workspace(self, batch: int, narrow: bool, dots: bool = False) -> np.ndarray:
        """The kernels' packing workspace: one per layer shape (sizing costs µs), or for a
        layer of few units (``narrow``, see ``kernels.dense.uses_narrow``) one for ``batch``,
        grown to the largest batch so far and never shrunk; with ``dots``, that of the forward
        product by dot products (``kernels.dense.uses_dots``: one or two units, or up to four
        float32 units with the AVX-512 tiles), likewise."""
        if dots or narrow:
            if dots:
                key = "ws_dots"
                size = _k.dots_workspace_size(batch, self.input_dim, self.units,
                                              numba.config.NUMBA_NUM_THREADS)
            else:
                key = "ws_narrow"
                size = _k.narrow_workspace_size(batch, self.input_dim, self.units, self.dtype)
            ws = self._workspace.get(key)
            if ws is None or ws.shape[0] < size:
                ws = self._workspace[key] = _aligned.empty((size,), self.dtype)
            return ws
        ws = self._workspace.get("ws")
        if ws is None:
            size = _k.workspace_size(self.input_dim, self.units, self.dtype)
            ws = self._buffer("ws", (size,))
        return ws

    def _buffer(self, key: str, shape: tuple[int, ...], reuse: bool = True) -> np.ndarray:
        """A workspace of ``shape`` kept across calls, so steady-state steps do not allocate
        (or without ``reuse``, a fresh array: :meth:`_fresh`)."""
        if not reuse:
            return self._fresh(shape)
        buf = self._workspace.get(key)
        if buf is None or buf.shape != shape:
            buf = self._workspace[key] = _aligned.empty(shape, self.dtype)
        return buf

    def _fresh(self, shape: tuple[int, int]) -> np.ndarray:
        """A new output array of ``shape`` (outputs and input gradients returned to the
        caller; see :func:`fastdense._aligned.output`)."""
        return _aligned.output(shape, self.dtype)

    @staticmethod
    def _apply(optimizer: Any, param: np.ndarray, grad: np.ndarray,
               reg: regularizers.Regularizer | None) -> None:
        l1, l2 = _factors(reg)
        if reg is not None and not _fusable(reg):
            grad += np.asarray(reg.gradient(param), dtype=grad.dtype)
        apply_update(optimizer, param, grad, l1, l2)

    def regularization_loss(self) -> float:
        """The current penalty of kernel and bias regularizers (0.0 without any)."""
        loss = 0.0
        if self.built and self.kernel_regularizer is not None:
            loss += self.kernel_regularizer(self.weight)
        if self.built and self.use_bias and self.bias_regularizer is not None:
            loss += self.bias_regularizer(self.bias)
        return float(loss)

    # ------------------------------------------------------------------ config and weights
    def get_config(self) -> dict[str, Any]:
        """Constructor arguments; :meth:`from_config` rebuilds an equal (unbuilt) layer."""
        return {
            "name": self.name,
            "units": self.units,
            "activation": self.activation.serialize(),
            "use_bias": self.use_bias,
            "kernel_initializer": initializers.serialize(self.kernel_initializer),
            "bias_initializer": initializers.serialize(self.bias_initializer),
            "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": regularizers.serialize(self.bias_regularizer),
            "dtype": self.dtype.name,
            "training": self.training,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Dense:
        """Build a layer from :meth:`get_config`'s output."""
        return cls(**config)

    def get_weights(self) -> list[np.ndarray]:
        """``[kernel, bias]`` (``[kernel]`` without bias) as copies."""
        if not self.built:
            raise LayerStateError(f"{self.name} is not built yet: call build() or forward()")
        return [self.weight.copy()] + ([self.bias.copy()] if self.use_bias else [])

    def set_weights(self, weights: list[Any]) -> None:
        """Set ``[kernel, bias]`` (``[kernel]`` without bias); builds the layer if needed."""
        expected = 2 if self.use_bias else 1
        if not isinstance(weights, (list, tuple)) or len(weights) != expected:
            raise ValueError(
                f"expected a list of {expected} arrays ([kernel{', bias' if expected == 2 else ''}]"
                f"), got {type(weights).__name__} of length "
                f"{len(weights) if hasattr(weights, '__len__') else '?'}"
            )
        arrays = [np.asarray(w) for w in weights]
        for a, what in zip(arrays, ("kernel", "bias"), strict=False):
            if a.dtype.kind not in "fiu":
                raise TypeError(f"{what} must be a real array, got dtype {a.dtype}")
        kernel = arrays[0]
        in_dim = self.input_dim
        if kernel.ndim != 2 or kernel.shape[1] != self.units or (
            in_dim is not None and kernel.shape[0] != in_dim
        ):
            want = f"({in_dim if in_dim is not None else 'in'}, {self.units})"
            raise ValueError(f"kernel must have shape {want}, got {kernel.shape}")
        if kernel.shape[0] == 0:
            raise ValueError("kernel must have at least one input feature, got shape "
                             f"{kernel.shape}")
        if self.use_bias and arrays[1].shape != (self.units,):
            raise ValueError(f"bias must have shape ({self.units},), got {arrays[1].shape}")
        if self.input_dim != kernel.shape[0]:
            self._workspace.clear()
        self.weight = _aligned.copy(kernel, self.dtype)
        self.bias = _aligned.copy(arrays[1], self.dtype) if self.use_bias else None
        self._cache = None

    def save_weights(self, path: str | os.PathLike) -> None:
        """Write kernel and bias to an ``.npz`` file."""
        weights = self.get_weights()
        arrays = {"kernel": weights[0]}
        if self.use_bias:
            arrays["bias"] = weights[1]
        # Through a file object, so that the file is written at exactly ``path`` (np.savez
        # appends ".npz" to a bare name).
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    def load_weights(self, path: str | os.PathLike) -> None:
        """Read kernel and bias from an ``.npz`` written by :meth:`save_weights`.

        Raises
        ------
        ValueError
            If the file is not a valid weights file or does not match this layer.
        """
        try:
            with np.load(path, allow_pickle=False) as data:
                found = {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError) as err:
            raise ValueError(f"{path!s} is not a readable .npz weights file: {err}") from err
        expected = {"kernel", "bias"} if self.use_bias else {"kernel"}
        if set(found) != expected:
            raise ValueError(
                f"{path!s} holds arrays {sorted(found)}, expected {sorted(expected)}"
            )
        self.set_weights([found["kernel"]] + ([found["bias"]] if self.use_bias else []))

    def __getstate__(self) -> dict[str, Any]:
        # The plans hold compiled entry points, which do not pickle; the next call rebuilds them.
        state = self.__dict__.copy()
        state["_plan"] = state["_backprop_plan"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__["_trains"] = False  # absent from the pickles of earlier versions
        self.__dict__.update(state)
        # Unpickled arrays have NumPy's alignment: back onto cache lines (see _aligned).
        for name in ("weight", "bias"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, _aligned.copy(value, value.dtype))
        self._workspace.clear()

    def __repr__(self) -> str:
        shape = f"{self.input_dim}->{self.units}" if self.built else f"?->{self.units}"
        return f"Dense({shape}, activation={self.activation.name!r}, dtype={self.dtype.name})"
