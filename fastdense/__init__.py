"""fastdense: a fast, exact, Keras-style Dense layer for NumPy, computed by Numba kernels."""

from fastdense import activations, initializers, regularizers
from fastdense.dense import Dense, DtypeWarning, LayerStateError
from fastdense.functional import linear, matmul
from fastdense.optimizers import SGD, Optimizer
from fastdense.threads import get_num_threads, set_num_threads, threads

__version__ = "0.1.0"

__all__ = [
    "SGD",
    "Dense",
    "DtypeWarning",
    "LayerStateError",
    "Optimizer",
    "__version__",
    "activations",
    "get_num_threads",
    "initializers",
    "linear",
    "matmul",
    "regularizers",
    "set_num_threads",
    "threads",
]
