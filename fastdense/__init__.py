"""fastdense: a fast, exact, Keras-style Dense layer for NumPy, computed by Numba kernels."""

from fastdense import activations, initializers, losses, regularizers
from fastdense.dense import Dense, DtypeWarning, LayerStateError
from fastdense.functional import linear, matmul
from fastdense.model import History, Sequential, load_model
from fastdense.optimizers import SGD, Adam, AdamW, Optimizer, RMSprop
from fastdense.threads import get_num_threads, set_num_threads, threads

__version__ = "0.1.0"

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "Dense",
    "DtypeWarning",
    "History",
    "LayerStateError",
    "Optimizer",
    "RMSprop",
    "Sequential",
    "__version__",
    "activations",
    "get_num_threads",
    "initializers",
    "linear",
    "load_model",
    "losses",
    "matmul",
    "regularizers",
    "set_num_threads",
    "threads",
]
