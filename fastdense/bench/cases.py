"""What is benchmarked: operations, dtypes, shapes, and the full and quick grids.

Case names (``Case.group``) are part of the saved-results format: ``--benchmark-compare`` and
JSON diffs match runs by them, so they must not change between versions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

OPERATIONS: tuple[str, ...] = ("gemm", "forward", "backprop", "train_step")
"""``gemm``: ``a @ b``.  ``forward``: ``relu(x @ W + b)``.  ``backprop``: gradients of the
last forward and the SGD update.  ``train_step``: forward, backprop and SGD update."""

DTYPES: tuple[str, ...] = ("float32", "float64")

BATCHES: tuple[int, ...] = (1, 32, 128, 256, 1024)
LAYERS: tuple[tuple[int, int], ...] = (
    (64, 64), (784, 128), (256, 256), (784, 512), (1024, 1024), (4096, 1024),
)
SQUARE_GEMMS: tuple[int, ...] = (256, 512, 1024, 2048)

# The quick subset spans latency-bound (batch 1), typical MLP and compute-bound sizes, so each
# regime is represented while the whole run, compile included, stays within minutes.
QUICK_LAYER_SHAPES: tuple[tuple[int, int, int], ...] = (
    (1, 784, 128), (32, 784, 128), (256, 784, 512), (1024, 1024, 1024),
)
QUICK_SQUARE_GEMMS: tuple[int, ...] = (1024,)

# Matrix-product FLOPs per operation, in units of one (batch x in) @ (in x out) product:
# backprop computes dW = x.T @ dz and dx = dz @ W.T; a training step adds the forward.
_GEMMS_PER_OP = {"gemm": 1, "forward": 1, "backprop": 2, "train_step": 3}


@dataclass(frozen=True, order=True)
class Shape:
    """Problem size: ``(m, k) @ (k, n)``; for a layer, batch ``m``, ``k`` inputs, ``n`` units.

    Attributes
    ----------
    m, k, n : int
    square : bool
        Whether it is one of the square GEMMs (as opposed to a layer shape).
    """

    m: int
    k: int
    n: int
    square: bool = False

    @property
    def id(self) -> str:
        """Stable identifier, e.g. ``b256-784x512`` or ``sq1024``."""
        return f"sq{self.m}" if self.square else f"b{self.m}-{self.k}x{self.n}"

    @property
    def label(self) -> str:
        """Human-readable form for tables, e.g. ``256 x 784->512``."""
        return f"{self.m}^3" if self.square else f"{self.m} x {self.k}->{self.n}"


#: The layers' activation unless another is asked for.
DEFAULT_ACTIVATION = "relu"
#: The activations a layer benchmark can take: the element-wise ones every peer has.
ACTIVATIONS = ("relu", "sigmoid", "tanh", "gelu", "leaky_relu", "elu", "selu", "swish",
               "softplus")


@dataclass(frozen=True, order=True)
class Case:
    """One benchmark: an operation on one shape in one dtype (layers with ``activation``)."""

    op: str
    dtype: str
    shape: Shape
    activation: str = DEFAULT_ACTIVATION

    def __post_init__(self) -> None:
        if self.op not in OPERATIONS:
            raise ValueError(f"unknown operation {self.op!r}; expected one of {OPERATIONS}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; expected one of {DTYPES}")
        if self.shape.square and self.op != "gemm":
            raise ValueError("square shapes are GEMM-only")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; expected one of "
                             f"{ACTIVATIONS}")

    @property
    def group(self) -> str:
        """Stable name, e.g. ``forward-float32-b256-784x512`` (``-gelu`` appended for
        layers of another activation than ReLU)."""
        name = f"{self.op}-{self.dtype}-{self.shape.id}"
        if self.op != "gemm" and self.activation != DEFAULT_ACTIVATION:
            name += f"-{self.activation}"
        return name

    @property
    def flops(self) -> int:
        """Floating-point operations of the matrix products (2 per multiply-add).

        Bias, activation and update are O(batch x units) and not counted, as is customary.
        """
        s = self.shape
        return 2 * s.m * s.k * s.n * _GEMMS_PER_OP[self.op]


def layer_shapes(batches: Iterable[int] = BATCHES,
                 layers: Iterable[tuple[int, int]] = LAYERS) -> list[Shape]:
    """Every ``batch x layer`` combination."""
    layers = list(layers)
    return [Shape(b, i, o) for b in batches for i, o in layers]


def make_grid(ops: Sequence[str], dtypes: Sequence[str], shapes: Sequence[Shape],
              square_sizes: Sequence[int] = ()) -> list[Case]:
    """Cases for every op x dtype x shape; square GEMMs are added to the ``gemm`` operation.

    Returns
    -------
    list of Case
        Ordered by operation, dtype, then shape as given (the table's order).
    """
    cases = []
    for op in ops:
        for dtype in dtypes:
            cases += [Case(op, dtype, s) for s in shapes]
            if op == "gemm":
                cases += [Case(op, dtype, Shape(n, n, n, square=True)) for n in square_sizes]
    return cases


def full_grid(ops: Sequence[str] = OPERATIONS, dtypes: Sequence[str] = DTYPES) -> list[Case]:
    """The whole grid: every batch x layer, plus square GEMMs 256 to 2048."""
    return make_grid(ops, dtypes, layer_shapes(), SQUARE_GEMMS)


def quick_grid(ops: Sequence[str] = OPERATIONS, dtypes: Sequence[str] = DTYPES) -> list[Case]:
    """The representative subset run by ``--quick``."""
    shapes = [Shape(*s) for s in QUICK_LAYER_SHAPES]
    return make_grid(ops, dtypes, shapes, QUICK_SQUARE_GEMMS)


_SHAPE_RE = re.compile(r"^\s*(\d+)\s*[x:]\s*(\d+)\s*[x:]\s*(\d+)\s*$")


def parse_shapes(text: str) -> list[Shape]:
    """Parse ``"B:IN:OUT,..."`` (or ``BxINxOUT``) into layer shapes.

    Raises
    ------
    ValueError
        On a malformed item or a non-positive size.
    """
    shapes = []
    for item in text.split(","):
        if not item.strip():
            continue
        match = _SHAPE_RE.match(item)
        if match is None:
            raise ValueError(f"bad shape {item!r}: expected BATCH:IN:OUT, e.g. 32:784:128")
        m, k, n = (int(v) for v in match.groups())
        if min(m, k, n) < 1:
            raise ValueError(f"bad shape {item!r}: sizes must be positive")
        shapes.append(Shape(m, k, n))
    if not shapes:
        raise ValueError("no shape given")
    return shapes
