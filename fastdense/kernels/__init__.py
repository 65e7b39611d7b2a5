"""Numba ``@njit`` kernels: pure functions of arrays and scalars.

Nothing in this package holds Python objects, and the only state is
``activation_passes.TABLE``: the addresses of the activation passes compiled so far, which the
product kernels call.  The layer, model and optimizer modules validate their inputs, install
their activation's passes, and call these functions with contiguous arrays of one dtype.
"""
