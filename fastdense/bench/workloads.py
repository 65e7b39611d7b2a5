"""The implementations compared, each wrapped as timed work plus a one-shot result for checking.

Every implementation of a case gets the same inputs and starts from the same weights; the
ones that train restore those weights before every timed block, so every block of every
implementation performs the same sequence of updates (the layers stay in lockstep).

Peers:

* ``numpy``: :class:`fastdense.reference.NumpyDense` and ``a @ b``, the idiomatic NumPy a
  competent user writes, on the BLAS NumPy ships with.
* ``torch`` (when importable): ``torch.mm``; ``relu(nn.Linear(x))`` (or the case's other
  activation); ``backward`` then
  ``optim.SGD.step``.  The input requires grad, since fastdense and NumPy compute ``dL/dx``
  too, and gradients are reset to ``None`` after each step as ``zero_grad`` does by default.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import fastdense
from fastdense.bench.cases import Case
from fastdense.bench.timing import Timed
from fastdense.reference import NumpyDense

LEARNING_RATE = 1e-3
"""Small enough that the weights drift little within a block, large enough that an update
stands well above float32 rounding of the weights, so a wrong update is detected."""

IMPLEMENTATIONS: tuple[str, ...] = ("fastdense", "numpy", "torch")


def torch_available() -> bool:
    """Whether PyTorch can be imported (without importing it)."""
    return importlib.util.find_spec("torch") is not None


@dataclass(frozen=True)
class Inputs:
    """The arrays of one case, in the case's dtype.

    For ``gemm``, ``x`` and ``w`` are the two operands and the rest is unused.
    """

    x: np.ndarray
    w: np.ndarray
    bias: np.ndarray
    dldy: np.ndarray
    lr: float = LEARNING_RATE


def make_inputs(case: Case, seed: int = 0) -> Inputs:
    """Deterministic inputs for ``case``: the same seed gives the same arrays.

    Inputs and upstream gradients are standard normal (the gradient scaled by ``1/batch``, as
    for a mean loss); weights are Glorot-uniform and the bias small, so about half the ReLUs
    are active.
    """
    rng = np.random.default_rng(seed)
    dt = np.dtype(case.dtype)
    m, k, n = case.shape.m, case.shape.k, case.shape.n
    x = rng.standard_normal((m, k)).astype(dt)
    if case.op == "gemm":
        w = rng.standard_normal((k, n)).astype(dt)
    else:
        limit = np.sqrt(6.0 / (k + n))
        w = rng.uniform(-limit, limit, (k, n)).astype(dt)
    bias = (0.1 * rng.standard_normal(n)).astype(dt)
    dldy = (rng.standard_normal((m, n)) / m).astype(dt)
    return Inputs(x, w, bias, dldy)


@dataclass
class Workload:
    """One implementation of one case.

    Attributes
    ----------
    timed : Timed
        What the timing loops run.
    result : callable
        Runs the operation once from the initial weights and returns its outputs as NumPy
        arrays: ``out`` for ``gemm``; ``y`` for ``forward``; ``y``, ``dx``, ``weight`` and
        ``bias`` (after the update) for ``backprop`` and ``train_step``.
    layer : object or None
        The layer under test (``fastdense.Dense``, ``NumpyDense`` or ``torch.nn.Linear``),
        None for ``gemm``; for inspection only.
    """

    timed: Timed
    result: Callable[[], dict[str, np.ndarray]]
    layer: Any = None


class _Layer:
    """Uniform face over the three layers: forward, backprop (with update), reset, state."""

    module: Any = None

    def forward(self) -> Any:
        raise NotImplementedError

    def backprop(self, y: Any) -> Any:
        """Backprop through the forward that returned ``y``, update, return ``dL/dx``."""
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    def state(self, y: Any, dx: Any) -> dict[str, np.ndarray]:
        raise NotImplementedError


class _NumpyLikeLayer(_Layer):
    """fastdense.Dense or NumpyDense: same API, weights as NumPy arrays."""

    def __init__(self, layer: Any, inputs: Inputs, optimizer: Any) -> None:
        self.layer, self.inputs, self.optimizer = layer, inputs, optimizer
        self.module = layer
        layer.set_weights([inputs.w, inputs.bias])

    def forward(self) -> Any:
        return self.layer.forward(self.inputs.x)

    def backprop(self, y: Any) -> Any:
        # The layer keeps what its last forward needs; ``y`` is only for PyTorch's graph.
        return self.layer.backprop(self.inputs.dldy, self.optimizer)

    def reset(self) -> None:
        # In place: a fresh array per block would add allocation and page faults to the
        # first timed call.
        np.copyto(self.layer.weight, self.inputs.w)
        np.copyto(self.layer.bias, self.inputs.bias)

    def state(self, y: Any, dx: Any) -> dict[str, np.ndarray]:
        return {"y": np.array(y), "dx": np.array(dx), "weight": self.layer.weight.copy(),
                "bias": self.layer.bias.copy()}


def _torch_activation(torch: Any, name: str) -> Callable[[Any], Any]:
    """PyTorch's function for the Keras activation ``name`` (Keras' constants)."""
    f = torch.nn.functional
    return {
        "relu": torch.relu,
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "gelu": f.gelu,  # the exact erf form, as Keras' default
        "leaky_relu": lambda t: f.leaky_relu(t, 0.2),
        "elu": f.elu,
        "selu": f.selu,
        "swish": f.silu,
        "softplus": f.softplus,
    }[name]


class _TorchLayer(_Layer):
    def __init__(self, inputs: Inputs, dtype: str, activation: str) -> None:
        import torch

        self.torch = torch
        self.activation = _torch_activation(torch, activation)
        self.inputs = inputs
        tdt = getattr(torch, dtype)
        k, n = inputs.w.shape
        self.linear = torch.nn.Linear(k, n, dtype=tdt)
        self.module = self.linear
        self.x = torch.from_numpy(inputs.x).requires_grad_(True)
        self.g = torch.from_numpy(inputs.dldy)
        self.w0 = torch.from_numpy(np.ascontiguousarray(inputs.w.T))
        self.b0 = torch.from_numpy(inputs.bias)
        self.optimizer = torch.optim.SGD(self.linear.parameters(), lr=inputs.lr)
        self.reset()

    def forward(self) -> Any:
        return self.activation(self.linear(self.x))

    def backprop(self, y: Any) -> Any:
        self.x.grad = None
        y.backward(self.g)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return self.x.grad

    def reset(self) -> None:
        with self.torch.no_grad():
            self.linear.weight.copy_(self.w0)
            self.linear.bias.copy_(self.b0)

    def state(self, y: Any, dx: Any) -> dict[str, np.ndarray]:
        return {"y": y.detach().numpy().copy(), "dx": dx.numpy().copy(),
                "weight": self.linear.weight.detach().numpy().T.copy(),
                "bias": self.linear.bias.detach().numpy().copy()}


def _gemm_workload(impl: str, inputs: Inputs) -> Workload:
    a, b = inputs.x, inputs.w
    if impl == "fastdense":
        # Looked up at call time, so a substituted fastdense.matmul is what gets checked.
        def call() -> Any:
            return fastdense.matmul(a, b)
        to_numpy = np.asarray
    elif impl == "numpy":
        def call() -> Any:
            return a @ b
        to_numpy = np.asarray
    elif impl == "torch":
        import torch

        at, bt = torch.from_numpy(a), torch.from_numpy(b)

        def call() -> Any:
            return torch.mm(at, bt)

        def to_numpy(t: Any) -> np.ndarray:
            return t.numpy()
    else:
        raise ValueError(f"unknown implementation {impl!r}")
    return Workload(Timed(call), lambda: {"out": np.array(to_numpy(call()))})


def _layer(impl: str, case: Case, inputs: Inputs) -> _Layer:
    n = case.shape.n
    if impl == "fastdense":
        layer = fastdense.Dense(n, activation=case.activation, dtype=case.dtype)
        return _NumpyLikeLayer(layer, inputs, fastdense.SGD(inputs.lr))
    if impl == "numpy":
        layer = NumpyDense(n, activation=case.activation, dtype=case.dtype)
        return _NumpyLikeLayer(layer, inputs, fastdense.SGD(inputs.lr))
    if impl == "torch":
        return _TorchLayer(inputs, case.dtype, case.activation)
    raise ValueError(f"unknown implementation {impl!r}")


def build(case: Case, impl: str, inputs: Inputs) -> Workload:
    """Wrap implementation ``impl`` of ``case`` on ``inputs``.

    Parameters
    ----------
    case : Case
    impl : {"fastdense", "numpy", "torch"}
    inputs : Inputs
        From :func:`make_inputs`; not modified.

    Returns
    -------
    Workload
    """
    if case.op == "gemm":
        return _gemm_workload(impl, inputs)
    layer = _layer(impl, case, inputs)
    is_torch = isinstance(layer, _TorchLayer)
    backprop = layer.backprop

    if case.op == "forward":
        def forward_result() -> dict[str, np.ndarray]:
            y = layer.forward()
            return {"y": y.detach().numpy().copy() if is_torch else np.array(y)}
        return Workload(Timed(layer.forward), forward_result, layer.module)

    def once() -> dict[str, np.ndarray]:
        layer.reset()
        y = layer.forward()
        y_kept = y.detach().clone() if is_torch else np.array(y)
        dx = backprop(y)
        out = layer.state(y_kept, dx)
        layer.reset()
        return out

    if case.op == "backprop":
        pending: list[Any] = []

        def prepare() -> None:
            pending.append(layer.forward())

        def call() -> Any:
            return backprop(pending.pop())

        return Workload(Timed(call, before_call=prepare, before_block=layer.reset), once,
                        layer.module)

    if case.op == "train_step":
        def step() -> Any:
            return backprop(layer.forward())

        return Workload(Timed(step, before_block=layer.reset), once, layer.module)
    raise ValueError(f"unknown operation {case.op!r}")
