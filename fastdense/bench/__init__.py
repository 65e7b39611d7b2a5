"""Benchmarks of fastdense against idiomatic NumPy (and PyTorch): ``python -m fastdense bench``.

Modules, one concept each: :mod:`~fastdense.bench.cases` (what is measured),
:mod:`~fastdense.bench.workloads` (the implementations), :mod:`~fastdense.bench.agreement`
(results checked before timing), :mod:`~fastdense.bench.timing` (alternating blocks),
:mod:`~fastdense.bench.pinning` (thread counts), :mod:`~fastdense.bench.machine` (machine
and peak), :mod:`~fastdense.bench.runner` (compile, check, time), :mod:`~fastdense.bench.report`
(table and JSON), :mod:`~fastdense.bench.plot` (PNG) and :mod:`~fastdense.bench.cli`.

The pytest-benchmark suite in ``benchmarks/`` reuses the cases, workloads and checks.
"""
