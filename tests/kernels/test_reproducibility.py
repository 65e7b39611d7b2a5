"""Bitwise reproducibility from process to process: fresh compile versus Numba's cache.

The JIT and the cache's object emission are different code generators; if any product were left
to the backend's choice of fusing a multiply and an add, the two would round differently (we
saw it happen before the kernels used explicit FMAs).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import hashlib
    import numpy as np
    import fastdense as fd

    rng = np.random.default_rng(0)
    h = hashlib.sha256()
    for n, i, u in [(32, 100, 10), (1, 64, 128), (130, 300, 70)]:
        for act in ("linear", "tanh"):
            layer = fd.Dense(u, activation=act, seed=0)
            x = rng.standard_normal((n, i)).astype(np.float32)
            y = layer(x)
            dx = layer.backprop(np.ones_like(y), fd.SGD(0.1))
            for a in (y, dx, layer.weight, layer.bias):
                h.update(a.tobytes())
    print(h.hexdigest())
""")


def test_fresh_compile_and_cache_load_give_the_same_bits(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}

    def run() -> str:
        done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                              text=True, timeout=900, check=True)
        return done.stdout.strip()

    fresh = run()  # compiles everything and writes the cache
    cached = run()  # loads the machine code written above
    assert len(fresh) == 64
    assert fresh == cached
