"""Weight initializers with Keras' identifiers, defaults and formulas.

Every initializer is called as ``init(shape, dtype, rng)``; ``rng`` is the
:class:`numpy.random.Generator` of the layer (seeded by the layer's ``seed``) or, when omitted, a
generator seeded by the initializer's own ``seed``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fastdense._config import Configurable

# Standard deviation of a unit normal truncated to [-2, 2]: scaling by its inverse keeps the
# requested variance after truncation (the constant Keras uses).
_TRUNC_STD = 0.87962566103423978


def compute_fans(shape: tuple[int, ...]) -> tuple[float, float]:
    """``(fan_in, fan_out)`` of a weight shape, as Keras computes them."""
    if len(shape) == 0:
        return 1.0, 1.0
    if len(shape) == 1:
        return float(shape[0]), float(shape[0])
    if len(shape) == 2:
        return float(shape[0]), float(shape[1])
    receptive = math.prod(shape[:-2])
    return float(shape[-2] * receptive), float(shape[-1] * receptive)


class Initializer(Configurable):
    """Base class; subclasses implement :meth:`sample` in float64."""

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def sample(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def __call__(
        self,
        shape: tuple[int, ...],
        dtype: np.dtype | type = np.float32,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Return a new array of ``shape`` and ``dtype``."""
        shape = tuple(int(s) for s in shape)
        if rng is None:
            rng = np.random.default_rng(self.seed)
        return np.ascontiguousarray(self.sample(shape, rng), dtype=dtype)

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments."""
        return {"seed": self.seed}


def _truncated_normal(rng: np.random.Generator, shape, mean: float, std: float) -> np.ndarray:
    """Normal samples redrawn until every one lies within two standard deviations."""
    out = rng.standard_normal(shape)
    bad = np.abs(out) > 2.0
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2.0
    return mean + std * out


class Zeros(Initializer):
    """All zeros."""

    def sample(self, shape, rng):
        return np.zeros(shape)


class Ones(Initializer):
    """All ones."""

    def sample(self, shape, rng):
        return np.ones(shape)


class Constant(Initializer):
    """All ``value``."""

    def __init__(self, value: float = 0.0, seed: int | None = None) -> None:
        super().__init__(seed)
        self.value = float(value)

    def sample(self, shape, rng):
        return np.full(shape, self.value)

    def get_config(self):
        return {"value": self.value, "seed": self.seed}


class RandomNormal(Initializer):
    """Normal with ``mean`` and ``stddev`` (Keras defaults 0 and 0.05)."""

    def __init__(self, mean: float = 0.0, stddev: float = 0.05, seed: int | None = None) -> None:
        super().__init__(seed)
        self.mean, self.stddev = float(mean), float(stddev)

    def sample(self, shape, rng):
        return rng.normal(self.mean, self.stddev, shape)

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev, "seed": self.seed}


class TruncatedNormal(RandomNormal):
    """Normal with ``mean`` and ``stddev``, values beyond two ``stddev`` redrawn."""

    def sample(self, shape, rng):
        return _truncated_normal(rng, shape, self.mean, self.stddev)


class RandomUniform(Initializer):
    """Uniform on ``[minval, maxval)`` (Keras defaults -0.05 and 0.05)."""

    def __init__(
        self, minval: float = -0.05, maxval: float = 0.05, seed: int | None = None
    ) -> None:
        super().__init__(seed)
        self.minval, self.maxval = float(minval), float(maxval)

    def sample(self, shape, rng):
        return rng.uniform(self.minval, self.maxval, shape)

    def get_config(self):
        return {"minval": self.minval, "maxval": self.maxval, "seed": self.seed}


class VarianceScaling(Initializer):
    """Keras' ``VarianceScaling``: variance ``scale / n`` with ``n`` chosen by ``mode``.

    ``distribution`` is ``"truncated_normal"`` (stddev ``sqrt(scale/n) / 0.8796``, cut at two
    stddev), ``"untruncated_normal"`` (stddev ``sqrt(scale/n)``) or ``"uniform"`` (limit
    ``sqrt(3 scale/n)``).
    """

    MODES = ("fan_in", "fan_out", "fan_avg")
    DISTRIBUTIONS = ("truncated_normal", "untruncated_normal", "uniform")

    def __init__(
        self,
        scale: float = 1.0,
        mode: str = "fan_in",
        distribution: str = "truncated_normal",
        seed: int | None = None,
    ) -> None:
        super().__init__(seed)
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        if distribution == "normal":
            distribution = "truncated_normal"
        if distribution not in self.DISTRIBUTIONS:
            raise ValueError(
                f"distribution must be one of {self.DISTRIBUTIONS}, got {distribution!r}"
            )
        self.scale, self.mode, self.distribution = float(scale), mode, distribution

    def sample(self, shape, rng):
        fan_in, fan_out = compute_fans(shape)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[self.mode]
        scale = self.scale / max(1.0, n)
        if self.distribution == "truncated_normal":
            return _truncated_normal(rng, shape, 0.0, math.sqrt(scale) / _TRUNC_STD)
        if self.distribution == "untruncated_normal":
            return rng.normal(0.0, math.sqrt(scale), shape)
        limit = math.sqrt(3.0 * scale)
        return rng.uniform(-limit, limit, shape)

    def get_config(self):
        return {
            "scale": self.scale,
            "mode": self.mode,
            "distribution": self.distribution,
            "seed": self.seed,
        }


class _Preset(VarianceScaling):
    """A VarianceScaling whose scale, mode and distribution are fixed by the subclass."""

    PRESET: tuple[float, str, str] = (1.0, "fan_in", "truncated_normal")

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(*self.PRESET, seed=seed)

    def get_config(self):
        return {"seed": self.seed}


class GlorotUniform(_Preset):
    """Uniform on ``±sqrt(6 / (fan_in + fan_out))``."""

    PRESET = (1.0, "fan_avg", "uniform")


class GlorotNormal(_Preset):
    """Truncated normal with std ``sqrt(2 / (fan_in + fan_out))`` after truncation."""

    PRESET = (1.0, "fan_avg", "truncated_normal")


class HeUniform(_Preset):
    """Uniform on ``±sqrt(6 / fan_in)``."""

    PRESET = (2.0, "fan_in", "uniform")


class HeNormal(_Preset):
    """Truncated normal with std ``sqrt(2 / fan_in)`` after truncation."""

    PRESET = (2.0, "fan_in", "truncated_normal")


class LecunUniform(_Preset):
    """Uniform on ``±sqrt(3 / fan_in)``."""

    PRESET = (1.0, "fan_in", "uniform")


class LecunNormal(_Preset):
    """Truncated normal with std ``sqrt(1 / fan_in)`` after truncation."""

    PRESET = (1.0, "fan_in", "truncated_normal")


class Orthogonal(Initializer):
    """A (semi-)orthogonal matrix times ``gain``, from the QR decomposition of a normal one."""

    def __init__(self, gain: float = 1.0, seed: int | None = None) -> None:
        super().__init__(seed)
        self.gain = float(gain)

    def sample(self, shape, rng):
        if len(shape) < 2:
            raise ValueError(f"Orthogonal needs a shape of rank >= 2, got {shape}")
        rows, cols = math.prod(shape[:-1]), shape[-1]
        a = rng.standard_normal((max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(a)
        # The sign fix makes Q uniformly distributed (Mezzadri, 2007).
        q *= np.sign(np.diag(r))
        if rows < cols:
            q = q.T
        return self.gain * q.reshape(shape)

    def get_config(self):
        return {"gain": self.gain, "seed": self.seed}


class Identity(Initializer):
    """``gain`` times the identity (rectangular allowed); 2-D shapes only."""

    def __init__(self, gain: float = 1.0, seed: int | None = None) -> None:
        super().__init__(seed)
        self.gain = float(gain)

    def sample(self, shape, rng):
        if len(shape) != 2:
            raise ValueError(f"Identity needs a 2-D shape, got {shape}")
        return self.gain * np.eye(*shape)

    def get_config(self):
        return {"gain": self.gain, "seed": self.seed}


class TorchLinear(Initializer):
    """PyTorch ``nn.Linear``'s default: uniform on ``±1/sqrt(fan_in)`` for kernel and bias.

    For the kernel this is ``kaiming_uniform_(a=sqrt(5))``; the bias uses the kernel's
    ``fan_in``, which the layer passes as ``fan_in``.
    """

    def __init__(self, fan_in: int | None = None, seed: int | None = None) -> None:
        super().__init__(seed)
        self.fan_in = fan_in

    def sample(self, shape, rng):
        fan_in = self.fan_in if self.fan_in is not None else compute_fans(shape)[0]
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        return rng.uniform(-bound, bound, shape)

    def get_config(self):
        return {"fan_in": self.fan_in, "seed": self.seed}


_CLASSES: dict[str, type[Initializer]] = {
    c.__name__: c
    for c in (Zeros, Ones, Constant, RandomNormal, TruncatedNormal, RandomUniform,
              VarianceScaling, GlorotUniform, GlorotNormal, HeUniform, HeNormal, LecunUniform,
              LecunNormal, Orthogonal, Identity, TorchLinear)
}
_STRINGS: dict[str, type[Initializer]] = {
    "zeros": Zeros, "zero": Zeros, "ones": Ones, "one": Ones, "constant": Constant,
    "random_normal": RandomNormal, "normal": RandomNormal, "truncated_normal": TruncatedNormal,
    "random_uniform": RandomUniform, "uniform": RandomUniform,
    "variance_scaling": VarianceScaling, "glorot_uniform": GlorotUniform,
    "glorot_normal": GlorotNormal, "he_uniform": HeUniform, "he_normal": HeNormal,
    "lecun_uniform": LecunUniform, "lecun_normal": LecunNormal, "orthogonal": Orthogonal,
    "identity": Identity, "torch": TorchLinear,
}

#: Every initializer name :func:`get` accepts.
NAMES: tuple[str, ...] = tuple(_STRINGS)


class _Callable(Initializer):
    """Wraps a user's ``fn(shape, dtype) -> array``."""

    def __init__(self, fn) -> None:
        super().__init__(None)
        self.fn = fn

    def __call__(self, shape, dtype=np.float32, rng=None):
        shape = tuple(int(s) for s in shape)
        out = np.asarray(self.fn(shape, np.dtype(dtype)))
        if out.shape != shape:
            raise ValueError(f"initializer {self.fn!r} returned shape {out.shape}, "
                             f"expected {shape}")
        return np.ascontiguousarray(out, dtype=dtype)

    def get_config(self):
        return {"fn": self.fn}

    def __hash__(self) -> int:
        return hash(self.fn)


def get(identifier: Any) -> Initializer:
    """Resolve an initializer identifier.

    Parameters
    ----------
    identifier : str, Initializer, dict or callable
        A Keras name (see :data:`NAMES`, plus ``"torch"``), an :class:`Initializer`, a serialized
        ``{"class_name", "config"}``, or a callable ``fn(shape, dtype) -> array``.
    """
    if isinstance(identifier, Initializer):
        return identifier
    if isinstance(identifier, str):
        if identifier not in _STRINGS:
            raise ValueError(
                f"unknown initializer {identifier!r}; expected one of {', '.join(NAMES)}, "
                "an Initializer, or a callable fn(shape, dtype)"
            )
        return _STRINGS[identifier]()
    if isinstance(identifier, dict):
        name = identifier.get("class_name")
        if name not in _CLASSES:
            raise ValueError(f"unknown initializer class {name!r}; expected {list(_CLASSES)}")
        return _CLASSES[name].from_config(identifier.get("config", {}))
    if callable(identifier):
        return _Callable(identifier)
    raise TypeError(
        f"initializer must be a name, Initializer, dict or callable; got {identifier!r}"
    )


def serialize(init: Initializer) -> dict[str, Any] | Initializer:
    """``{"class_name", "config"}`` for a built-in, the object itself for a callable."""
    if type(init).__name__ in _CLASSES and type(init) is _CLASSES[type(init).__name__]:
        return {"class_name": type(init).__name__, "config": init.get_config()}
    return init
