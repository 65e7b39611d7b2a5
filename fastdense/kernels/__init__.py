"""Numba ``@njit`` kernels: pure functions of arrays and scalars.

Nothing in this package holds Python objects or state; the layer, model and optimizer modules
validate their inputs and call these functions with contiguous arrays of one dtype.
"""
