"""Optimizers against NumPy transcriptions of Keras 3's update formulas."""

from __future__ import annotations

import gc
import math

import numba
import numpy as np
import pytest

from fastdense.dense import Dense
from fastdense.optimizers import (
    SGD,
    Adam,
    AdamW,
    Optimizer,
    RMSprop,
    StepCollector,
    apply_update,
    get,
    learning_rate_of,
    plain_sgd_rate,
)
from fastdense.threads import threads

# ------------------------------------------------------------------ NumPy references (float64)


def _grad(w, g, l1, l2, clipnorm, clipvalue):
    """Keras: the penalty is part of the loss, so its gradient is clipped with the rest."""
    g = g + l1 * np.sign(w) + 2.0 * l2 * w
    if clipnorm is not None:
        norm = math.sqrt(float(np.sum(g * g)))
        g = g * clipnorm / max(norm, clipnorm)
    if clipvalue is not None:
        g = np.clip(g, -clipvalue, clipvalue)
    return g


class RefSGD:
    def __init__(self, lr=0.01, momentum=0.0, nesterov=False, clipnorm=None, clipvalue=None,
                 weight_decay=None):
        self.__dict__.update(locals())
        self.m = None

    def step(self, w, g, l1, l2):
        g = _grad(w, g, l1, l2, self.clipnorm, self.clipvalue)
        if self.weight_decay:
            w = w - w * self.weight_decay * self.lr
        if self.momentum:
            if self.m is None:
                self.m = np.zeros_like(w)
            self.m = -g * self.lr + self.m * self.momentum
            return w + (-g * self.lr + self.m * self.momentum if self.nesterov else self.m)
        return w - g * self.lr


class RefAdam:
    def __init__(self, lr=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False,
                 clipnorm=None, clipvalue=None, weight_decay=None):
        self.__dict__.update(locals())
        self.t = 0
        self.m = self.v = self.vhat = None

    def step(self, w, g, l1, l2):
        g = _grad(w, g, l1, l2, self.clipnorm, self.clipvalue)
        if self.weight_decay:
            w = w - w * self.weight_decay * self.lr
        if self.m is None:
            self.m, self.v, self.vhat = np.zeros_like(w), np.zeros_like(w), np.zeros_like(w)
        self.t += 1
        alpha = self.lr * math.sqrt(1 - self.beta_2**self.t) / (1 - self.beta_1**self.t)
        self.m = self.m + (g - self.m) * (1 - self.beta_1)
        self.v = self.v + (g * g - self.v) * (1 - self.beta_2)
        v = self.v
        if self.amsgrad:
            self.vhat = np.maximum(self.vhat, self.v)
            v = self.vhat
        return w - self.m * alpha / (np.sqrt(v) + self.epsilon)


class RefRMSprop:
    def __init__(self, lr=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False,
                 clipnorm=None, clipvalue=None):
        self.__dict__.update(locals())
        self.v = self.mom = self.a = None

    def step(self, w, g, l1, l2):
        g = _grad(w, g, l1, l2, self.clipnorm, self.clipvalue)
        if self.v is None:
            self.v, self.mom, self.a = np.zeros_like(w), np.zeros_like(w), np.zeros_like(w)
        self.v = self.rho * self.v + (1 - self.rho) * g * g
        if self.centered:
            self.a = self.rho * self.a + (1 - self.rho) * g
            denom = self.v - self.a * self.a + self.epsilon
        else:
            denom = self.v + self.epsilon
        inc = self.lr * g / np.sqrt(denom)
        if self.momentum > 0:
            self.mom = self.momentum * self.mom + inc
            return w - self.mom
        return w - inc


CASES = [
    ("sgd", dict(), dict()),
    ("sgd-momentum", dict(momentum=0.9), dict(momentum=0.9)),
    ("sgd-nesterov", dict(momentum=0.8, nesterov=True), dict(momentum=0.8, nesterov=True)),
    ("sgd-clipnorm", dict(momentum=0.5, clipnorm=0.3), dict(momentum=0.5, clipnorm=0.3)),
    ("sgd-clipvalue", dict(clipvalue=0.2), dict(clipvalue=0.2)),
    ("sgd-wd", dict(learning_rate=0.1, weight_decay=0.05), dict(lr=0.1, weight_decay=0.05)),
    ("adam", dict(), dict()),
    ("adam-lr", dict(learning_rate=0.05, beta_1=0.8, beta_2=0.99, epsilon=1e-4),
     dict(lr=0.05, beta_1=0.8, beta_2=0.99, epsilon=1e-4)),
    ("adam-amsgrad", dict(amsgrad=True, learning_rate=0.01), dict(amsgrad=True, lr=0.01)),
    ("adam-clipnorm", dict(clipnorm=0.5), dict(clipnorm=0.5)),
    ("adam-clipvalue", dict(clipvalue=0.1), dict(clipvalue=0.1)),
    ("rmsprop", dict(), dict()),
    ("rmsprop-centered-momentum", dict(centered=True, momentum=0.7, learning_rate=0.01),
     dict(centered=True, momentum=0.7, lr=0.01)),
    ("rmsprop-clipnorm", dict(rho=0.8, clipnorm=0.4), dict(rho=0.8, clipnorm=0.4)),
]


def _make(case):
    name, kwargs, refkw = case
    kind = name.split("-")[0]
    cls, ref = {"sgd": (SGD, RefSGD), "adam": (Adam, RefAdam),
                "rmsprop": (RMSprop, RefRMSprop)}[kind]
    return cls(**kwargs), ref(**refkw)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("penalty", [(0.0, 0.0), (0.01, 0.02)], ids=["nopen", "l1l2"])
def test_update_matches_keras_formula(case, penalty):
    opt, ref = _make(case)
    rng = np.random.default_rng(1)
    w = rng.standard_normal((7, 5))
    w_ref = w.copy()
    for _ in range(6):
        g = rng.standard_normal(w.shape)
        opt.update(w, g, *penalty)
        w_ref = ref.step(w_ref, g, *penalty)
        np.testing.assert_allclose(w, w_ref, rtol=1e-12, atol=1e-14)
    assert opt.iterations == 6


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adamw_decoupled_weight_decay(amsgrad):
    opt = AdamW(learning_rate=0.01, weight_decay=0.1, amsgrad=amsgrad)
    ref = RefAdam(lr=0.01, weight_decay=0.1, amsgrad=amsgrad)
    rng = np.random.default_rng(2)
    w = rng.standard_normal(40)
    w_ref = w.copy()
    for _ in range(5):
        g = rng.standard_normal(w.shape)
        opt.update(w, g, 0.0, 0.01)
        w_ref = ref.step(w_ref, g, 0.0, 0.01)
    np.testing.assert_allclose(w, w_ref, rtol=1e-12)
    # The decay is not an L2 penalty: with a zero gradient the Adam step is 0 and only the
    # decay remains.
    opt2 = AdamW(learning_rate=0.5, weight_decay=0.2)
    w2 = np.ones(3)
    opt2.update(w2, np.zeros(3))
    np.testing.assert_allclose(w2, 1 - 0.2 * 0.5)


def test_adamw_defaults_are_keras():
    opt = AdamW()
    assert (opt.learning_rate, opt.weight_decay, opt.beta_1, opt.beta_2, opt.epsilon) == (
        0.001, 0.004, 0.9, 0.999, 1e-7)
    assert RMSprop().get_config() == {"learning_rate": 0.001, "rho": 0.9, "momentum": 0.0,
                                      "epsilon": 1e-7, "centered": False}
    assert Adam().epsilon == 1e-7 and SGD().learning_rate == 0.01


def test_float32_params_track_float64_reference():
    opt, ref = Adam(learning_rate=0.01), RefAdam(lr=0.01)
    rng = np.random.default_rng(3)
    w64 = rng.standard_normal(100)
    w32 = w64.astype(np.float32)
    for _ in range(10):
        g = rng.standard_normal(100)
        opt.update(w32, g.astype(np.float32))
        w64 = ref.step(w64, g, 0.0, 0.0)
    assert w32.dtype == np.float32
    np.testing.assert_allclose(w32, w64, rtol=1e-5, atol=1e-6)


def test_large_param_parallel_path_and_clipnorm_thread_independent():
    from fastdense.threads import threads

    rng = np.random.default_rng(4)
    w0 = rng.standard_normal(70_001)  # above the parallel threshold, odd block count
    g = rng.standard_normal(w0.shape)
    results = []
    for n in (1, 2):
        with threads(min(n, __import__("numba").config.NUMBA_NUM_THREADS)):
            w = w0.copy()
            opt = Adam(clipnorm=1.0)
            for _ in range(3):
                opt.update(w, g, 1e-3, 1e-3)
            results.append(w)
    assert np.array_equal(results[0], results[1])
    ref = RefAdam(clipnorm=1.0)
    w_ref = w0.copy()
    for _ in range(3):
        w_ref = ref.step(w_ref, g, 1e-3, 1e-3)
    np.testing.assert_allclose(results[0], w_ref, rtol=1e-10, atol=1e-13)


def test_each_parameter_counts_its_own_steps():
    """Two parameters updated once per step: both see t = step, as Keras' iterations + 1."""
    opt, ref_a, ref_b = Adam(learning_rate=0.1), RefAdam(lr=0.1), RefAdam(lr=0.1)
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal(4), rng.standard_normal(3)
    ra, rb = a.copy(), b.copy()
    for _ in range(4):
        ga, gb = rng.standard_normal(4), rng.standard_normal(3)
        opt.update(a, ga)
        opt.update(b, gb)
        ra, rb = ref_a.step(ra, ga, 0, 0), ref_b.step(rb, gb, 0, 0)
    np.testing.assert_allclose(a, ra, rtol=1e-12)
    np.testing.assert_allclose(b, rb, rtol=1e-12)
    assert opt.iterations == 4
    # A parameter added later starts at t = 1 rather than inheriting the count.
    c = np.ones(2)
    opt.update(c, np.ones(2))
    np.testing.assert_allclose(c, RefAdam(lr=0.1).step(np.ones(2), np.ones(2), 0, 0))


def test_slots_are_keyed_to_the_array_object_and_freed_with_it():
    opt = SGD(learning_rate=0.1, momentum=0.9)
    w = np.zeros(3)
    opt.update(w, np.ones(3))
    opt.update(w, np.ones(3))
    np.testing.assert_allclose(w, -0.1 - 0.19)  # momentum carried over
    other = np.zeros(3)
    opt.update(other, np.ones(3))
    np.testing.assert_allclose(other, -0.1)  # fresh state for a different array
    assert len(opt._slots) == 2
    del other
    gc.collect()
    assert len(opt._slots) == 1  # the freed array's state went with it
    opt.reset()
    assert opt.iterations == 0


def test_is_plain_sgd_and_plain_sgd_rate():
    assert SGD(0.1).is_plain_sgd and plain_sgd_rate(SGD(0.1)) == 0.1
    for opt in (SGD(momentum=0.1), SGD(clipnorm=1.0), SGD(clipvalue=1.0),
                SGD(global_clipnorm=1.0), SGD(weight_decay=0.1), Adam(), AdamW(), RMSprop()):
        assert not opt.is_plain_sgd
        assert plain_sgd_rate(opt) is None

    class Foreign:
        learning_rate = 0.5

    assert plain_sgd_rate(Foreign()) == 0.5
    w = np.ones(3)
    apply_update(Foreign(), w, np.ones(3), 0.0, 0.0)
    np.testing.assert_allclose(w, 0.5)


def test_dense_layer_with_adam_matches_reference():
    """Dense computes batch-summed gradients and hands each parameter to the optimizer."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((8, 4))
    g_out = rng.standard_normal((8, 3))
    layer = Dense(3, dtype=np.float64, seed=0, kernel_regularizer="l2")
    layer.build(4)
    w, b = layer.get_weights()
    opt, ref_w, ref_b = Adam(learning_rate=0.01), RefAdam(lr=0.01), RefAdam(lr=0.01)
    for _ in range(3):
        layer.forward(x)
        layer.backprop(g_out, opt)
        w = ref_w.step(w, x.T @ g_out, 0.0, 0.01)
        b = ref_b.step(b, g_out.sum(0), 0.0, 0.0)
    np.testing.assert_allclose(layer.weight, w, rtol=1e-10)
    np.testing.assert_allclose(layer.bias, b, rtol=1e-10)


def test_get_and_config_round_trip():
    assert isinstance(get("adam"), Adam) and isinstance(get("RMSprop"), RMSprop)
    assert isinstance(get("adamw"), AdamW) and isinstance(get("sgd"), SGD)
    opt = SGD(0.2, momentum=0.5, nesterov=True, clipvalue=1.0)
    assert get(opt) is opt
    again = SGD.from_config(opt.get_config())
    assert again.get_config() == opt.get_config()
    assert "nesterov=True" in repr(opt)


@pytest.mark.parametrize(
    "make, exc, words",
    [
        (lambda: Adam(learning_rate=-1.0), ValueError, "learning_rate"),
        (lambda: Adam(learning_rate="fast"), TypeError, "real number"),
        (lambda: Adam(beta_1=1.0), ValueError, "beta_1"),
        (lambda: SGD(momentum=1.5), ValueError, "momentum"),
        (lambda: SGD(nesterov="yes"), TypeError, "nesterov"),
        (lambda: Adam(clipnorm=1.0, clipvalue=1.0), ValueError, "only one"),
        (lambda: SGD(clipnorm=1.0, global_clipnorm=2.0), ValueError,
         "only one of clipnorm, clipvalue and global_clipnorm.*clipnorm=1.0 and "
         "global_clipnorm=2.0"),
        (lambda: RMSprop(clipvalue=1.0, global_clipnorm=1.0), ValueError, "only one"),
        (lambda: AdamW(clipnorm=1.0, clipvalue=1.0, global_clipnorm=1.0), ValueError,
         "only one"),
        (lambda: Adam(clipnorm=0.0), ValueError, "clipnorm"),
        (lambda: Adam(global_clipnorm=-1.0), ValueError, r"global_clipnorm must be .*\(0"),
        (lambda: SGD(global_clipnorm="1"), TypeError, "global_clipnorm must be a real"),
        (lambda: RMSprop(rho=2.0), ValueError, "rho"),
        (lambda: AdamW(weight_decay=None), ValueError, "weight_decay"),
        (lambda: get("adagrad"), ValueError, "unknown optimizer"),
        (lambda: get(3), TypeError, "optimizer must be"),
    ],
)
def test_bad_arguments(make, exc, words):
    with pytest.raises(exc, match=words):
        make()


def test_bad_update_inputs():
    opt = Adam()
    with pytest.raises(ValueError, match="shape"):
        opt.update(np.zeros(3), np.zeros(4))
    with pytest.raises(TypeError, match="float ndarray"):
        opt.update([1.0, 2.0], np.zeros(2))
    with pytest.raises(ValueError, match="C-contiguous"):
        opt.update(np.zeros((3, 4))[:, ::2], np.zeros((3, 2)))


def test_base_class_is_abstract():
    with pytest.raises(NotImplementedError):
        Optimizer(0.1).update(np.zeros(2), np.zeros(2))


# ------------------------------------------------------------------ one step, many parameters


def _params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(7, 5), (5,), (40000,), (3, 2)]  # one above the parallel threshold
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [rng.standard_normal(s).astype(dtype) for s in shapes]
    return params, grads


MANY_CASES = [
    dict(),
    dict(learning_rate=0.02, beta_1=0.8, beta_2=0.99, epsilon=1e-5),
    dict(amsgrad=True),  # not fused: falls back to update per parameter
    dict(clipnorm=0.5),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kwargs", MANY_CASES, ids=str)
def test_collector_and_update_many_equal_update_per_parameter_bitwise(dtype, kwargs):
    direct, via_many, via_collector = Adam(**kwargs), Adam(**kwargs), Adam(**kwargs)
    p1, grads = _params(dtype)
    p2 = [p.copy() for p in p1]
    p3 = [p.copy() for p in p1]
    collector = StepCollector(via_collector)
    for step in range(4):
        scaled = [g * (step + 1) for g in grads]
        for p, g in zip(p1, scaled, strict=True):
            direct.update(p, g)
        via_many.update_many(p2, scaled)
        before = [p.copy() for p in p3]
        for p, g in zip(p3, scaled, strict=True):
            collector.update(p, g)
        assert all(np.array_equal(a, b) for a, b in zip(before, p3, strict=True))
        collector.flush()
        for a, b, c in zip(p1, p2, p3, strict=True):
            assert np.array_equal(a, b) and np.array_equal(a, c)
    assert direct.iterations == via_many.iterations == via_collector.iterations == 4


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
def test_fused_adam_is_bitwise_the_same_for_any_thread_count():
    results = []
    for n in (1, 2):
        with threads(n):
            params, grads = _params(np.float32, seed=2)  # one parameter takes the prange path
            opt = Adam(0.01)
            collector = StepCollector(opt)
            for _ in range(3):
                for p, g in zip(params, grads, strict=True):
                    collector.update(p, g)
                collector.flush()
            results.append(params)
    for a, b in zip(*results, strict=True):
        assert np.array_equal(a, b)


def test_collector_defers_until_flush_and_follows_changes():
    opt = Adam(0.01)
    ref = Adam(0.01)
    params, grads = _params(np.float32, seed=1)
    mirror = [p.copy() for p in params]
    collector = StepCollector(opt)
    assert learning_rate_of(collector) == 0.01 and plain_sgd_rate(collector) is None

    def step():
        before = [p.copy() for p in params]
        for p, g in zip(params, grads, strict=True):
            apply_update(collector, p, g, 0.0, 0.0)  # as a layer hands it over
        assert all(np.array_equal(a, b) for a, b in zip(before, params, strict=True))
        collector.flush()
        for p, g in zip(mirror, grads, strict=True):
            ref.update(p, g)
        for a, b in zip(params, mirror, strict=True):
            assert np.array_equal(a, b)

    step()
    step()
    opt.learning_rate = ref.learning_rate = 0.003  # a schedule between steps
    step()
    opt.beta_1 = ref.beta_1 = 0.5  # hyper-parameters are read every step
    step()
    opt.reset()
    ref.reset()  # fresh state, step counts from 1 again
    step()
    assert opt.iterations == collector.iterations == 1
    params[0] = params[0].copy()  # a replaced parameter (set_weights) starts fresh state
    mirror[0] = mirror[0].copy()
    step()
    collector.update(params[1], grads[1], 0.0, 0.01)  # a penalty: per-parameter path
    collector.flush()
    ref.update(mirror[1], grads[1], 0.0, 0.01)
    assert np.array_equal(params[1], mirror[1])
    collector.flush()  # nothing recorded: nothing happens
    assert np.array_equal(params[1], mirror[1])


def test_adam_honours_hyper_parameters_changed_after_the_first_step():
    opt = Adam(0.1)
    w = np.zeros(3, dtype=np.float32)
    opt.update(w, np.ones(3, dtype=np.float32))
    opt.beta_1, opt.epsilon = 0.5, 1e-3
    opt.update(w, np.ones(3, dtype=np.float32))
    ref = RefAdam(lr=0.1)
    expected = ref.step(np.zeros(3), np.ones(3), 0, 0)
    ref.beta_1, ref.epsilon = 0.5, 1e-3
    expected = ref.step(expected, np.ones(3), 0, 0)
    np.testing.assert_allclose(w, expected, rtol=1e-6)


def test_update_many_and_collector_reject_bad_input():
    opt = Adam()
    with pytest.raises(ValueError, match="2 params but 1 grads"):
        opt.update_many([np.zeros(2), np.zeros(2)], [np.zeros(2)])
    with pytest.raises(ValueError, match="one factor per param"):
        opt.update_many([np.zeros(2)], [np.zeros(2)], l1s=[0.0, 0.0])
    with pytest.raises(TypeError, match="fastdense optimizer"):
        StepCollector(object())
    collector = StepCollector(opt)
    collector.update(np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match="param's shape"):
        collector.flush()  # validated like update when applied
    bad = Adam()
    bad.learning_rate = -1.0
    with pytest.raises(ValueError, match="finite and >= 0"):
        learning_rate_of(StepCollector(bad))


# ------------------------------------------------------------------ global_clipnorm


def _global_reference(refs, ws, gs, l1s, l2s, clip):
    """One Keras step clipped by the global norm: every gradient, penalty included, is scaled
    by ``clip / max(norm, clip)`` with ``norm`` the L2 norm of all of them together."""
    full = [g + l1 * np.sign(w) + 2.0 * l2 * w
            for w, g, l1, l2 in zip(ws, gs, l1s, l2s, strict=True)]
    norm = math.sqrt(sum(float(np.sum(g * g)) for g in full))
    scale = clip / max(norm, clip)
    return [ref.step(w, g * scale, 0.0, 0.0) for ref, w, g in zip(refs, ws, full, strict=True)
            ], norm


GLOBAL_CASES = [
    ("sgd", lambda **kw: SGD(0.05, **kw), lambda: RefSGD(lr=0.05)),
    ("sgd-momentum", lambda **kw: SGD(0.05, momentum=0.9, **kw),
     lambda: RefSGD(lr=0.05, momentum=0.9)),
    ("sgd-nesterov-wd", lambda **kw: SGD(0.05, momentum=0.5, nesterov=True,
                                         weight_decay=0.1, **kw),
     lambda: RefSGD(lr=0.05, momentum=0.5, nesterov=True, weight_decay=0.1)),
    ("adam", lambda **kw: Adam(0.01, **kw), lambda: RefAdam(lr=0.01)),
    ("adamw-amsgrad", lambda **kw: AdamW(0.01, weight_decay=0.05, amsgrad=True, **kw),
     lambda: RefAdam(lr=0.01, weight_decay=0.05, amsgrad=True)),
    ("rmsprop-centered", lambda **kw: RMSprop(0.01, centered=True, momentum=0.5, **kw),
     lambda: RefRMSprop(lr=0.01, centered=True, momentum=0.5)),
]


@pytest.mark.parametrize("penalized", [False, True], ids=["nopen", "l1l2"])
@pytest.mark.parametrize("via", ["update_many", "collector"])
@pytest.mark.parametrize("case", GLOBAL_CASES, ids=[c[0] for c in GLOBAL_CASES])
def test_global_clipnorm_matches_numpy_over_steps_and_parameters(case, via, penalized):
    _, make, make_ref = case
    clip = 60.0
    opt = make(global_clipnorm=clip)
    params, grads = _params(np.float64, seed=7)  # ~200 of norm, one parameter of 40000
    refs = [make_ref() for _ in params]
    mirror = [p.copy() for p in params]
    # Without penalties plain Adam would take the collector's fused path: it must not.
    l1s, l2s = ([0.0, 0.01, 0.0, 0.02], [0.0, 0.0, 0.03, 0.01]) if penalized else (
        [0.0] * 4, [0.0] * 4)
    collector = StepCollector(opt)
    norms = []
    for factor in (0.5, 1.0, 2.0, 0.1, 1.5):  # clipped, clipped, clipped, not, clipped
        scaled = [g * factor for g in grads]
        if via == "update_many":
            opt.update_many(params, scaled, l1s, l2s)
        elif factor == 2.0:  # a collector's update_many records, as its update does
            collector.update_many(params, scaled, l1s, l2s)
            collector.flush()
        else:
            for p, g, l1, l2 in zip(params, scaled, l1s, l2s, strict=True):
                collector.update(p, g, l1, l2)
            collector.flush()
        mirror, norm = _global_reference(refs, mirror, scaled, l1s, l2s, clip)
        norms.append(norm)
        for a, b in zip(params, mirror, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    assert min(norms) < clip < max(norms)  # both branches of the formula were exercised
    assert opt.iterations == 5


def test_global_clipnorm_differs_from_per_parameter_clipnorm():
    """The norm spans every parameter of the step: not the same as clipnorm on each."""
    params, grads = _params(np.float64, seed=8)
    per_param = [p.copy() for p in params]
    Adam(0.01, global_clipnorm=1.0).update_many(params, grads)
    Adam(0.01, clipnorm=1.0).update_many(per_param, grads)
    assert not np.array_equal(params[0], per_param[0])


def test_lone_update_with_global_clipnorm_clips_that_parameter_alone():
    """A lone update is a step of one parameter: exactly clipnorm on it."""
    rng = np.random.default_rng(9)
    w1 = rng.standard_normal((6, 4))
    w2 = w1.copy()
    glob, per = RMSprop(0.01, global_clipnorm=0.7), RMSprop(0.01, clipnorm=0.7)
    for _ in range(3):
        g = rng.standard_normal(w1.shape)
        glob.update(w1, g, 0.01, 0.02)
        per.update(w2, g, 0.01, 0.02)
    assert np.array_equal(w1, w2)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
def test_global_clipnorm_is_bitwise_the_same_for_any_thread_count():
    shapes = [(70_001,), (300, 50), (50,)]  # several fixed blocks in the large ones
    results = []
    for n in (1, 2):
        with threads(n):
            rng = np.random.default_rng(10)
            params = [np.random.default_rng(11).standard_normal(s) for s in shapes]
            opt = Adam(0.01, global_clipnorm=5.0)
            for _ in range(3):
                grads = [rng.standard_normal(s) for s in shapes]
                opt.update_many(params, grads, [1e-3] * 3, [1e-3] * 3)
            results.append(params)
    for a, b in zip(*results, strict=True):
        assert np.array_equal(a, b)


def test_global_clipnorm_bad_step_changes_nothing():
    opt = SGD(0.1, momentum=0.9, global_clipnorm=1.0)
    params = [np.ones(3), np.ones(2)]
    with pytest.raises(ValueError, match="param's shape"):
        opt.update_many(params, [np.ones(3), np.ones(5)])
    assert all(np.array_equal(p, np.ones_like(p)) for p in params)
    assert opt.iterations == 0 and all(opt.get_slot_state(p) is None for p in params)


@pytest.mark.parametrize("cls", [SGD, Adam, AdamW, RMSprop])
def test_global_clipnorm_config_round_trip(cls):
    from fastdense.optimizers import deserialize, serialize

    opt = cls(0.02, global_clipnorm=0.25)
    config = opt.get_config()
    assert config["global_clipnorm"] == 0.25
    assert "clipnorm" not in config and "clipvalue" not in config
    again = cls.from_config(config)
    assert again.global_clipnorm == 0.25 and again.get_config() == config
    assert deserialize(serialize(opt)).get_config() == config
    assert "global_clipnorm" not in cls(0.02).get_config()  # only when set, as clipnorm


# ------------------------------------------------------------------ slot state


def test_slot_state_round_trip_continues_bitwise():
    rng = np.random.default_rng(12)
    w = rng.standard_normal((5, 3)).astype(np.float32)
    opt = Adam(0.01, amsgrad=True)
    for _ in range(3):
        opt.update(w, rng.standard_normal(w.shape).astype(np.float32))
    step, slots = opt.get_slot_state(w)
    assert step == 3 and set(slots) == set(opt.slot_names) == {"m", "v", "vhat"}
    assert all(a.shape == w.shape and a.dtype == np.float32 for a in slots.values())
    slots["m"][...] = 0.0  # copies: the optimizer's state is untouched
    assert opt.get_slot_state(w)[1]["m"].any()

    w2 = w.copy()
    restored = Adam(0.01, amsgrad=True)
    restored.set_slot_state(w2, *opt.get_slot_state(w))
    assert restored.iterations == 3
    g = rng.standard_normal(w.shape).astype(np.float32)
    opt.update(w, g)
    restored.update(w2, g)
    assert np.array_equal(w, w2)
    assert Adam().get_slot_state(w) is None


@pytest.mark.parametrize(
    "step, arrays, exc, words",
    [
        (-1, {"m": np.zeros(3), "v": np.zeros(3)}, ValueError, "step must be an int"),
        (1.5, {"m": np.zeros(3), "v": np.zeros(3)}, ValueError, "step must be an int"),
        (1, {"m": np.zeros(3)}, ValueError, r"keeps the slots \['m', 'v'\], got \['m'\]"),
        (1, {"m": np.zeros(3), "v": np.zeros(4)}, ValueError, "parameter's shape"),
        (1, {"m": np.zeros(3), "v": np.array(["a"] * 3)}, TypeError, "real array"),
        (1, [np.zeros(3)], ValueError, "got list"),
    ],
)
def test_set_slot_state_rejects_bad_input_and_changes_nothing(step, arrays, exc, words):
    opt = Adam()
    w = np.zeros(3)
    opt.update(w, np.ones(3))
    before = opt.get_slot_state(w)
    with pytest.raises(exc, match=words):
        opt.set_slot_state(w, step, arrays)
    after = opt.get_slot_state(w)
    assert after[0] == before[0] == 1
    assert all(np.array_equal(after[1][k], before[1][k]) for k in before[1])
