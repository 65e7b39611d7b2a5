"""pytest-benchmark configuration for fastdense's benchmark suite.

Run everything with ``pytest benchmarks/`` (long), the quick subset with
``pytest benchmarks/ -m quick`` or ``FASTDENSE_BENCH_QUICK=1 pytest benchmarks/``.
``FASTDENSE_BENCH_THREADS=N`` pins every implementation to N threads (default: all available
cores).  Save runs with ``--benchmark-autosave`` and compare them with
``--benchmark-compare``: test ids and groups are stable across versions.
"""

from __future__ import annotations

import os

import pytest

from fastdense.bench import machine, workloads
from fastdense.bench.pinning import available_cores, pinned_threads

QUICK_ENV = "FASTDENSE_BENCH_QUICK"
THREADS_ENV = "FASTDENSE_BENCH_THREADS"

if workloads.torch_available():
    # Imported before pinning, so that its intra-op pool is pinned too.
    import torch  # noqa: F401


def bench_threads() -> int:
    """Threads for every implementation: ``$FASTDENSE_BENCH_THREADS`` or all cores."""
    value = os.environ.get(THREADS_ENV)
    return int(value) if value else available_cores()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "quick: the representative subset run by --quick")
    config.addinivalue_line("markers", "torch: needs PyTorch")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(QUICK_ENV, "") not in ("", "0"):
        keep = [item for item in items if item.get_closest_marker("quick")]
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    # Saved runs carry what makes them comparable: BLAS kernel, threads, library versions.
    info = machine.describe(bench_threads())
    # The load average differs on every run and would make --benchmark-compare warn that the
    # machines differ; the rest identifies the machine and software.
    info.pop("load_average_1min", None)
    machine_info["fastdense"] = info


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = [f"fastdense bench: {bench_threads()} threads for every implementation; "
             f"torch {'available' if workloads.torch_available() else 'not installed'}"]
    warning = machine.openblas_coretype_warning()
    if warning:
        lines.append(f"WARNING: {warning}")
    return lines


@pytest.fixture(scope="session", autouse=True)
def _pinned_threads():
    with pinned_threads(bench_threads()):
        yield
