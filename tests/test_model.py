"""Sequential: training, History, save/load, zero allocation, determinism, bad inputs."""

from __future__ import annotations

import json
import tracemalloc

import numba
import numpy as np
import pytest

from fastdense.dense import Dense, LayerStateError
from fastdense.losses import (
    CategoricalCrossentropy,
    MeanSquaredError,
    SparseCategoricalCrossentropy,
)
from fastdense.model import History, Sequential, load_model
from fastdense.optimizers import SGD, Adam, RMSprop
from fastdense.threads import threads


def _blobs(n=200, classes=3, features=5, seed=0, spread=0.3):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((classes, features)) * 4
    y = rng.integers(0, classes, n)
    x = centers[y] + spread * rng.standard_normal((n, features))
    return x.astype(np.float32), y


def _mlp(hidden=16, classes=3, out="softmax", dtype=np.float32, seed=0):
    return Sequential([Dense(hidden, "relu", dtype=dtype, seed=seed),
                       Dense(classes, out, dtype=dtype, seed=seed + 1)])


# ------------------------------------------------------------------ training


def test_fit_reaches_near_zero_loss_on_separable_data():
    x, y = _blobs()
    model = _mlp()
    model.compile(Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, batch_size=16, epochs=60, verbose=0, seed=0)
    assert history.history["loss"][-1] < 1e-2
    assert history.history["accuracy"][-1] == 1.0
    loss, acc = model.evaluate(x, y)
    assert loss < 1e-2 and acc == 1.0
    assert np.array_equal(model.predict(x).argmax(1), y)


def test_binary_sigmoid_and_one_hot_categorical():
    x, y = _blobs(classes=2)
    model = _mlp(classes=1, out="sigmoid")
    model.compile("adam", "binary_crossentropy", metrics=["accuracy"])
    model.fit(x, y.astype(np.float32), epochs=40, batch_size=20, verbose=0, seed=1)
    assert model.evaluate(x, y, return_dict=True)["accuracy"] == 1.0
    p = model.predict(x)
    assert p.shape == (len(x), 1) and np.all((p >= 0) & (p <= 1))

    x, y = _blobs(classes=3, seed=3)
    model = _mlp()
    model.compile(SGD(0.1, momentum=0.9), "categorical_crossentropy",
                  metrics=["accuracy", "mse"])
    h = model.fit(x, np.eye(3)[y], epochs=30, verbose=0, seed=1)
    assert h.history["accuracy"][-1] == 1.0 and h.history["mse"][-1] < 0.01


def test_history_contents_and_validation():
    x, y = _blobs(n=103)
    model = _mlp()
    model.compile("rmsprop", "sparse_categorical_crossentropy", metrics=["acc"])
    h = model.fit(x, y, batch_size=10, epochs=3, validation_split=0.2, verbose=0, seed=0)
    assert isinstance(h, History)
    assert list(h.history) == ["loss", "acc", "val_loss", "val_acc"]
    assert all(len(v) == 3 for v in h.history.values()) and h.epoch == [0, 1, 2]
    assert h.params == {"epochs": 3, "steps": 9, "batch_size": 10, "samples": 83,
                        "verbose": 0}
    assert all(0.0 <= a <= 1.0 for a in h.history["val_acc"])
    # val_* equals evaluating the held-out tail (the last 20%, taken before shuffling).
    loss, acc = model.evaluate(x[83:], y[83:], batch_size=10)
    assert h.history["val_loss"][-1] == pytest.approx(loss, rel=1e-12)
    assert h.history["val_acc"][-1] == pytest.approx(acc, rel=1e-12)
    h2 = model.fit(x, y, epochs=1, validation_data=(x[:7], y[:7]), verbose=0)
    assert set(h2.history) == {"loss", "acc", "val_loss", "val_acc"}


def test_one_epoch_matches_numpy_reference_with_short_last_batch():
    """SGD + MSE, no shuffling, 10 samples in batches of 4 (4, 4, 2: a padded last batch)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 3))
    y = rng.standard_normal((10, 2))
    model = Sequential([Dense(4, "tanh", dtype=np.float64, seed=0),
                        Dense(2, dtype=np.float64, seed=1)])
    model.build(3)
    w1, b1, w2, b2 = model.get_weights()
    model.compile(SGD(0.1), "mse")
    h = model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    losses = []
    for s in range(0, 10, 4):
        xb, yb = x[s:s + 4], y[s:s + 4]
        a = np.tanh(xb @ w1 + b1)
        out = a @ w2 + b2
        losses.append(np.mean((out - yb) ** 2) * len(xb))
        d_out = 2 * (out - yb) / out.size
        d_a = d_out @ w2.T * (1 - a**2)
        w2, b2 = w2 - 0.1 * a.T @ d_out, b2 - 0.1 * d_out.sum(0)
        w1, b1 = w1 - 0.1 * xb.T @ d_a, b1 - 0.1 * d_a.sum(0)
    for got, want in zip(model.get_weights(), [w1, b1, w2, b2], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    assert h.history["loss"][0] == pytest.approx(sum(losses) / 10, rel=1e-12)


def test_fused_softmax_equals_linear_layer_with_logits_loss():
    """The fused path computes exactly what a linear output + from_logits loss computes."""
    x, y = _blobs(n=50)
    fused = _mlp(out="softmax")
    logits = _mlp(out=None)
    fused.compile(Adam(0.01), "sparse_categorical_crossentropy")
    logits.compile(Adam(0.01), SparseCategoricalCrossentropy(from_logits=True))
    h1 = fused.fit(x, y, batch_size=8, epochs=3, verbose=0, seed=4)
    h2 = logits.fit(x, y, batch_size=8, epochs=3, verbose=0, seed=4)
    for a, b in zip(fused.get_weights(), logits.get_weights(), strict=True):
        assert np.array_equal(a, b)
    assert h1.history == h2.history
    # The layer is left as configured and the reuse flag restored.
    assert fused.layers[-1].activation.name == "softmax"
    assert not any(layer._reuse_outputs for layer in fused.layers)
    p = fused.predict(x)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("make_opt", [
    lambda: Adam(0.01),
    lambda: Adam(0.01, amsgrad=True),
    lambda: RMSprop(momentum=0.5),
    lambda: SGD(0.05, momentum=0.9),
], ids=["adam", "adam-amsgrad", "rmsprop", "sgd-momentum"])
@pytest.mark.parametrize("regularized", [False, True])
def test_fit_equals_layer_by_layer_updates_bitwise(make_opt, regularized):
    """fit applies a step's updates together at its end (one fused Adam call): bitwise the
    same as each layer updating its weights inside its own backprop."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((48, 6)).astype(np.float32)
    y = rng.standard_normal((48, 3)).astype(np.float32)
    reg = "l2" if regularized else None

    def build():
        return [Dense(8, "tanh", seed=0, kernel_regularizer=reg), Dense(3, seed=1)]

    model = Sequential(build())
    model.compile(make_opt(), "mse")
    model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)

    layers, opt = build(), make_opt()
    loss = MeanSquaredError()
    grad, rows = np.empty((16, 3), np.float32), np.empty(16)
    for _ in range(3):
        for s in range(0, 48, 16):
            out = layers[1].forward(layers[0].forward(x[s:s + 16]))
            loss.compute(y[s:s + 16], out, grad, rows, 16)
            layers[0].backprop(layers[1].backprop(grad, opt), opt, compute_input_grad=False)
    for a, b in zip(model.get_weights(), [w for la in layers for w in la.get_weights()],
                    strict=True):
        assert np.array_equal(a, b)


def test_a_failing_backprop_still_applies_the_updates_before_it():
    """As without the step collector: layers backpropagated before the failure are updated."""
    def bad_grad(z, y):
        raise RuntimeError("boom")

    model = Sequential([Dense(4, (np.tanh, bad_grad), seed=0), Dense(2, seed=1)])
    model.compile(Adam(0.1), "mse")
    model.build(3)
    before = model.get_weights()
    x = np.ones((8, 3), np.float32)
    with pytest.raises(RuntimeError, match="boom"):
        model.fit(x, np.zeros((8, 2), np.float32), batch_size=8, verbose=0)
    after = model.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before[:2], after[:2], strict=True))
    assert not np.array_equal(before[2], after[2])  # the last layer took its step


# ------------------------------------------------------------------ allocation, determinism


class _AllocationProbe:
    """Measures tracemalloc's net and peak growth within each epoch."""

    def __init__(self):
        self.net, self.peak = [], []

    def on_epoch_begin(self, epoch, logs):
        tracemalloc.reset_peak()
        self.start = tracemalloc.get_traced_memory()[0]

    def on_epoch_end(self, epoch, logs):
        current, peak = tracemalloc.get_traced_memory()
        self.net.append(current - self.start)
        self.peak.append(peak - self.start)


_ALLOC_THRESHOLD = 8 * 1024


def _allocation_setup():
    x, y = _blobs(n=1000, classes=10, features=128)
    model = Sequential([Dense(256, "relu", seed=0), Dense(10, "softmax", seed=1)])
    model.compile(Adam(), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[:200], y[:200], batch_size=64, epochs=1, verbose=0)  # compile kernels
    return model, x, y


def _epoch_allocations(model, x, y):
    probe = _AllocationProbe()
    tracemalloc.start()
    try:
        # 1000 = 15 * 64 + 40: the padded last batch is exercised too, and validation.
        model.fit(x, y, batch_size=64, epochs=4, verbose=0, seed=0,
                  validation_data=(x[:100], y[:100]), callbacks=[probe])
    finally:
        tracemalloc.stop()
    return probe


def _dense_step_peak(model, x):
    """Peak allocation of the layers' own forward + backprop calls in steady state."""
    layers = model.layers
    for layer in layers:
        layer._reuse_outputs = True
    xb = np.ascontiguousarray(x[:64])
    g = np.zeros((64, 10), dtype=np.float32)
    try:
        for _ in range(2):
            h = layers[1].forward(layers[0].forward(xb))
            layers[0].backprop(layers[1].backprop(g, model.optimizer), model.optimizer)
        tracemalloc.start()
        start = tracemalloc.get_traced_memory()[0]
        h = layers[1].forward(layers[0].forward(xb))
        layers[0].backprop(layers[1].backprop(g, model.optimizer), model.optimizer)
        peak = tracemalloc.get_traced_memory()[1] - start
        tracemalloc.stop()
    finally:
        for layer in layers:
            layer._reuse_outputs = False
    del h
    return peak


def test_training_loop_adds_no_allocation():
    """The model's own per-step work (batch gathering, loss, metrics, optimizer updates,
    validation) allocates nothing: an epoch's peak exceeds that of the bare layer calls by
    less than the threshold.

    The smallest array a step could allocate here is a batch of hidden activations,
    64 x 256 float32 = 64 KiB, or an input batch, 32 KiB; any per-step array would show in the
    peak.  What remains is small Python objects (array views, tuples, floats, the history
    lists): 8 KiB is far above those and far below any array.  numpy reports its data
    allocations to tracemalloc, and so does Numba's runtime for arrays made inside kernels.
    """
    model, x, y = _allocation_setup()
    probe = _epoch_allocations(model, x, y)
    layer_peak = _dense_step_peak(model, x)
    # Epoch 0 of this fit creates the workspaces; from epoch 1 on nothing new is kept.
    assert max(probe.peak[1:]) < layer_peak + _ALLOC_THRESHOLD, (probe.peak, layer_peak)
    assert max(abs(n) for n in probe.net[1:]) < _ALLOC_THRESHOLD, probe.net


def test_steady_state_epochs_allocate_nothing():
    """The whole steady-state epoch, Dense's kernels included, allocates ~nothing."""
    model, x, y = _allocation_setup()
    layer_peak = _dense_step_peak(model, x)
    assert layer_peak < _ALLOC_THRESHOLD, layer_peak
    probe = _epoch_allocations(model, x, y)
    assert max(probe.peak[1:]) < _ALLOC_THRESHOLD, probe.peak
    assert max(abs(n) for n in probe.net[1:]) < _ALLOC_THRESHOLD, probe.net


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
def test_same_seed_same_weights_for_any_thread_count():
    x, y = _blobs(n=300, classes=4, features=40)
    results = []
    for n in (1, 2):
        with threads(n):
            model = Sequential([Dense(64, "relu"), Dense(4, "softmax")])
            model.compile(Adam(clipnorm=1.0), "sparse_categorical_crossentropy")
            h = model.fit(x, y, batch_size=32, epochs=3, verbose=0, seed=123)
            results.append((model.get_weights(), h.history["loss"]))
    for a, b in zip(results[0][0], results[1][0], strict=True):
        assert np.array_equal(a, b)
    assert results[0][1] == results[1][1]
    # And a different seed gives different weights (layers were unseeded: fit seeds them).
    model = Sequential([Dense(64, "relu"), Dense(4, "softmax")])
    model.compile(Adam(), "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, seed=7)
    assert not np.array_equal(model.get_weights()[0], results[0][0][0])
    assert model.layers[0].seed is None  # the layer's own config is untouched


# ------------------------------------------------------------------ save / load


def test_save_load_round_trip_is_bitwise(tmp_path):
    x, y = _blobs()
    model = _mlp()
    model.compile(Adam(0.003, amsgrad=True), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, epochs=2, verbose=0, seed=0)
    path = tmp_path / "model.npz"
    model.save(path)
    assert path.exists() and list(tmp_path.iterdir()) == [path]  # one file, no suffix added
    with np.load(path, allow_pickle=False) as data:
        assert "__config__" in data.files and "layers/0/kernel" in data.files
    loaded = load_model(path)
    assert np.array_equal(loaded.predict(x), model.predict(x))
    assert loaded.get_config() == model.get_config()
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert loaded.evaluate(x, y) == model.evaluate(x, y)
    loaded.fit(x, y, epochs=1, verbose=0)  # compiled and trainable


def test_load_rejects_foreign_or_damaged_files(tmp_path):
    np.savez(tmp_path / "w.npz", kernel=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="not a fastdense model"):
        load_model(tmp_path / "w.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable"):
        load_model(tmp_path / "junk.npz")
    model = _mlp()
    model.build(5)
    model.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as data:
        arrays = dict(data)
    del arrays["layers/1/bias"]
    np.savez(tmp_path / "broken.npz", **arrays)
    with pytest.raises(ValueError, match="expected"):
        load_model(tmp_path / "broken.npz")


def test_save_rejects_custom_activation(tmp_path):
    model = Sequential([Dense(2, activation=(np.tanh, lambda z, y: 1 - y * y))])
    model.build(3)
    with pytest.raises(TypeError, match="cannot be saved as JSON"):
        model.save(tmp_path / "m.npz")


# ------------------------------------------------------------------ API surface


def test_summary_add_and_predict_batches(capsys):
    model = Sequential()
    model.add(Dense(8, "relu", seed=0))
    model.add(Dense(2, seed=1))
    text = model.summary()
    assert "unbuilt" in text
    model.build(4)
    text = model.summary()
    assert "Total params: 58" in text and "(None, 8)" in text
    assert model.count_params() == 58
    x = np.random.default_rng(0).standard_normal((37, 4)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(x, batch_size=5), model.predict(x))
    assert "Total params" in capsys.readouterr().out


def test_progress_output(capsys):
    x, y = _blobs(n=40)
    model = _mlp()
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=2, verbose=1, seed=0)
    err = capsys.readouterr().err
    assert "Epoch 2/2" in err and "sample/s" in err and "loss:" in err and "accuracy:" in err
    model.fit(x, y, epochs=1, verbose=2, seed=0)
    out = capsys.readouterr().out
    assert "Epoch 1/1" in out and "samples/s" in out and "loss:" in out


def test_evaluate_return_forms():
    x, y = _blobs(n=30)
    model = _mlp()
    model.compile("adam", CategoricalCrossentropy())
    model.fit(x, np.eye(3)[y], epochs=1, verbose=0)
    assert isinstance(model.evaluate(x, np.eye(3)[y]), float)
    model.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
    result = model.evaluate(x, np.eye(3)[y])
    assert isinstance(result, list) and len(result) == 2


@pytest.mark.parametrize(
    "call, exc, words",
    [
        (lambda m, x, y: m.fit(x, y[:-1], verbose=0), ValueError, "same number of samples"),
        (lambda m, x, y: m.fit(x[:, :3], y, verbose=0), ValueError, "5 features"),
        (lambda m, x, y: m.fit(x[0], y, verbose=0), ValueError, "2-D"),
        (lambda m, x, y: m.fit(x, y + 5, verbose=0), ValueError, r"labels must be in \[0, 3\)"),
        (lambda m, x, y: m.fit(x, y, batch_size=0, verbose=0), ValueError, "batch_size"),
        (lambda m, x, y: m.fit(x, y, batch_size=2.5, verbose=0), TypeError, "batch_size"),
        (lambda m, x, y: m.fit(x, y, validation_split=1.0, verbose=0), ValueError,
         "validation_split"),
        (lambda m, x, y: m.fit(x, y, verbose=3), ValueError, "verbose"),
        (lambda m, x, y: m.fit(x, y, validation_data=x, verbose=0), ValueError, "pair"),
        (lambda m, x, y: m.fit(x.astype(str), y, verbose=0), TypeError, "real array"),
        (lambda m, x, y: m.compile("adagrad", "mse"), ValueError, "unknown optimizer"),
        (lambda m, x, y: m.compile("adam", "hinge"), ValueError, "unknown loss"),
        (lambda m, x, y: m.compile("adam", "mse", metrics=["auc"]), ValueError,
         "unknown metric 'auc'; expected one of accuracy, .*binary_accuracy, .*"
         "sparse_top_k_categorical_accuracy, .*mean_absolute_error, mae"),
        (lambda m, x, y: m.compile("adam", "mse", metrics="accuracy"), TypeError, "list"),
        (lambda m, x, y: m.compile("adam"), ValueError, "needs a loss"),
        (lambda m, x, y: m.add("dense"), TypeError, "Dense"),
        (lambda m, x, y: m.predict(x, batch_size=-1), ValueError, "batch_size"),
    ],
)
def test_bad_inputs(call, exc, words):
    x, y = _blobs(n=20)
    model = _mlp()
    model.build(5)
    model.compile("adam", "sparse_categorical_crossentropy")
    with pytest.raises(exc, match=words):
        call(model, x, y)


def test_state_errors():
    model = _mlp()
    x, y = _blobs(n=10)
    with pytest.raises(LayerStateError, match="compiled"):
        model.fit(x, y)
    with pytest.raises(ValueError, match="no layers"):
        Sequential().predict(x)
    with pytest.raises(LayerStateError, match="not built"):
        model.save("never.npz")
    with pytest.raises(TypeError, match="list of Dense"):
        Sequential(Dense(3))


# ------------------------------------------------------------------ global_clipnorm


@pytest.mark.parametrize("mom", [0.0, 0.9])  # 0.0: plain SGD must leave the fused path
def test_fit_global_clipnorm_takes_the_norm_over_all_layers(mom):
    """SGD and global_clipnorm against NumPy: each step's gradients of every layer (L2
    penalty included) are scaled by clip / max(norm of all of them, clip)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 3))
    y = 3 * rng.standard_normal((10, 2))
    model = Sequential([Dense(4, "tanh", dtype=np.float64, seed=0, kernel_regularizer="l2"),
                        Dense(2, dtype=np.float64, seed=1)])
    model.build(3)
    weights = model.get_weights()
    clip, lr = 5.0, 0.1
    model.compile(SGD(lr, momentum=mom, global_clipnorm=clip), "mse")
    model.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0)

    velocity = [np.zeros_like(w) for w in weights]
    norms = []
    for _ in range(3):
        for s in range(0, 10, 4):
            w1, b1, w2, b2 = weights
            xb, yb = x[s:s + 4], y[s:s + 4]
            a = np.tanh(xb @ w1 + b1)
            out = a @ w2 + b2
            d_out = 2 * (out - yb) / out.size
            d_a = d_out @ w2.T * (1 - a**2)
            grads = [xb.T @ d_a + 2 * 0.01 * w1, d_a.sum(0), a.T @ d_out, d_out.sum(0)]
            norm = np.sqrt(sum(np.sum(g * g) for g in grads))  # of every layer at once
            norms.append(norm)
            scale = clip / max(norm, clip)
            velocity = [mom * v - lr * g * scale for v, g in zip(velocity, grads, strict=True)]
            weights = [w + v for w, v in zip(weights, velocity, strict=True)]
    assert min(norms) < clip < max(norms)  # clipped steps and unclipped ones
    for got, want in zip(model.get_weights(), weights, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------ metrics


def _identity_model(d, activation):
    """One float64 layer whose output is ``activation(x)``: metrics on known predictions."""
    model = Sequential([Dense(d, activation, dtype=np.float64)])
    model.build(d)
    model.set_weights([np.eye(d), np.zeros(d)])
    return model


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _top5(p, labels):
    """Independent of the kernel's counting rule (no ties in these data): a sort."""
    top = np.argsort(-p, axis=1)[:, :5]
    return np.array([labels[i] in top[i] for i in range(len(p))])


def _expected(name, p, y, labels):
    eps = 1e-7
    return {
        "categorical_accuracy": np.mean(p.argmax(1) == y.argmax(1)) if y.ndim == 2 else None,
        "sparse_categorical_accuracy": np.mean(p.argmax(1) == labels),
        "top_k_categorical_accuracy": np.mean(_top5(p, labels)),
        "sparse_top_k_categorical_accuracy": np.mean(_top5(p, labels)),
        "binary_accuracy": np.mean((p > 0.5) == (y > 0.5)),
        "mse": np.mean((p - y) ** 2),
        "mean_squared_error": np.mean((p - y) ** 2),
        "mae": np.mean(np.abs(p - y)),
        "mean_absolute_error": np.mean(np.abs(p - y)),
        "categorical_crossentropy": np.mean(-np.sum(y * np.log(np.clip(p, eps, 1 - eps)), 1)),
    }[name]


METRIC_CASES = [
    # loss, output activation, classes, metrics
    ("categorical_crossentropy", "softmax", 8,
     ["categorical_accuracy", "top_k_categorical_accuracy", "binary_accuracy", "mse", "mae",
      "mean_absolute_error", "categorical_crossentropy"]),
    ("sparse_categorical_crossentropy", "softmax", 8,
     ["sparse_categorical_accuracy", "sparse_top_k_categorical_accuracy"]),
    ("mse", None, 8, ["binary_accuracy", "mean_squared_error", "top_k_categorical_accuracy",
                      "categorical_accuracy"]),
    ("binary_crossentropy", "sigmoid", 3, ["binary_accuracy", "mae"]),
]


def _metric_data(loss, activation, d, n, seed):
    rng = np.random.default_rng(seed)
    x = 2.0 * rng.standard_normal((n, d))
    labels = rng.integers(0, d, n)
    if loss == "binary_crossentropy":
        y = (rng.random((n, d)) < 0.5).astype(np.float64)
    else:
        y = np.eye(d)[labels]
    p = {"softmax": _softmax, "sigmoid": lambda z: 1 / (1 + np.exp(-z)), None: lambda z: z}[
        activation](x)
    return x, (labels if loss.startswith("sparse") else y), p, y, labels


@pytest.mark.parametrize("case", METRIC_CASES, ids=[c[0] for c in METRIC_CASES])
def test_metrics_match_numpy(case):
    loss, activation, d, metrics = case
    x, target, p, y, labels = _metric_data(loss, activation, d, 37, seed=1)
    model = _identity_model(d, activation)
    model.compile("sgd", loss, metrics=metrics)
    # 37 = 3 x 10 + 7: the batch-weighted mean over a short last batch is the plain mean.
    logs = model.evaluate(x, target, batch_size=10, return_dict=True)
    assert list(logs) == ["loss", *metrics]
    for name in metrics:
        assert logs[name] == pytest.approx(_expected(name, p, y, labels), rel=1e-12), name


@pytest.mark.parametrize("case", METRIC_CASES, ids=[c[0] for c in METRIC_CASES])
def test_metric_names_and_epoch_means_in_history(case):
    """Names as given (Keras 3) with val_ twins; each value is the epoch's sample mean."""
    loss, activation, d, metrics = case
    x, target, p, y, labels = _metric_data(loss, activation, d, 53, seed=2)
    xv, target_v, pv, yv, labels_v = _metric_data(loss, activation, d, 11, seed=3)
    model = _identity_model(d, activation)
    model.compile(SGD(0.0), loss, metrics=metrics)  # no update: the predictions stay known
    h = model.fit(x, target, batch_size=8, epochs=2, validation_data=(xv, target_v),
                  verbose=0, seed=0)
    assert list(h.history) == ["loss", *metrics, "val_loss", *(f"val_{m}" for m in metrics)]
    for name in metrics:
        for epoch in range(2):
            assert h.history[name][epoch] == pytest.approx(
                _expected(name, p, y, labels), rel=1e-12), name
            assert h.history[f"val_{name}"][epoch] == pytest.approx(
                _expected(name, pv, yv, labels_v), rel=1e-12), name


def test_top_k_counts_ties_in_favour_and_nan_as_minus_inf():
    """Keras' in_top_k: a hit when fewer than k scores are strictly greater."""
    from fastdense.kernels.metrics import count_top_k_categorical, count_top_k_sparse

    nan = np.nan
    scores = np.array([
        [1, 1, 1, 1, 1, 1, 1],      # label 6 tied with all: 0 greater -> hit
        [6, 5, 4, 3, 2, 1, 1],      # label 6 (1): 5 greater -> miss
        [6, 5, 4, 3, 1, 1, 0],      # label 5 (1), tied at ranks 5-6: 4 greater -> hit
        [0, 0, 0, 0, 0, 0, 0],      # label 0: hit
        [nan, 0, 0, 0, 0, 0, 0],    # label 0 is NaN, as -inf: 6 greater -> miss
        [nan, 1, 2, 3, 4, 5, 6],    # label 2 (2): 4 greater, NaN is not -> hit
        [9, 9, 9, 9, 9, 9, 9],      # padding row (n = 6): not counted
    ])
    labels = np.array([6, 6, 5, 0, 0, 2, 0])
    hits = [1, 0, 1, 1, 0, 1]
    assert count_top_k_sparse(labels, scores, 6, 5) == sum(hits)
    assert count_top_k_categorical(np.eye(7)[labels], scores, 6, 5) == sum(hits)
    assert count_top_k_sparse(labels, scores, 6, 7) == 6  # k >= classes: every row
    # Through a model (no NaN: it would spread over the row in the matmul).
    model = _identity_model(7, None)
    model.compile("sgd", "mse", metrics=["top_k_categorical_accuracy"])
    logs = model.evaluate(scores[:4], np.eye(7)[labels[:4]], batch_size=3, return_dict=True)
    assert logs["top_k_categorical_accuracy"] == sum(hits[:4]) / 4


def test_top_k_ranks_the_probabilities_not_the_fused_logits():
    """Keras ranks the softmax outputs: probabilities that underflow to 0 tie, although their
    logits differ (the fused path must apply the softmax before ranking)."""
    logits = np.array([[0.0, -800, -801, -802, -803, -804, -805, -806]])
    assert np.count_nonzero(_softmax(logits)) == 1
    model = _identity_model(8, "softmax")
    for loss, metric, target in [
        ("categorical_crossentropy", "top_k_categorical_accuracy", np.eye(8)[[7]]),
        ("sparse_categorical_crossentropy", "sparse_top_k_categorical_accuracy", [7]),
    ]:
        model.compile("sgd", loss, metrics=[metric])
        # label 7: one probability greater, six tied at 0 -> in the top 5 (logits: 7 greater)
        assert model.evaluate(logits, target, return_dict=True)[metric] == 1.0


def test_metric_of_the_wrong_target_format_is_rejected_at_compile():
    model = _mlp()
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    before = (model.optimizer, model.loss, model._metric_names)
    for loss, metric, words in [
        ("categorical_crossentropy", "sparse_top_k_categorical_accuracy", "integer labels"),
        ("sparse_categorical_crossentropy", "top_k_categorical_accuracy", "output's shape"),
        ("sparse_categorical_crossentropy", "mae", "different target formats"),
    ]:
        with pytest.raises(ValueError, match=words):
            model.compile("rmsprop", loss, metrics=["accuracy", metric])
        assert (model.optimizer, model.loss, model._metric_names) == before


# ------------------------------------------------------------------ optimizer state in files


OPTIMIZERS = {
    "adam": lambda: Adam(0.01),
    "sgd-momentum": lambda: SGD(0.05, momentum=0.9),
    "sgd-nesterov-global": lambda: SGD(0.05, momentum=0.9, nesterov=True, global_clipnorm=1.0),
    "adam-amsgrad-clipnorm": lambda: Adam(0.01, amsgrad=True, clipnorm=1.0),
    "rmsprop-centered": lambda: RMSprop(0.005, momentum=0.5, centered=True),
}


@pytest.mark.parametrize("make_opt", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_save_load_then_fit_continues_bitwise(tmp_path, make_opt):
    x, y = _blobs(n=90)
    model = _mlp()
    metrics = ["accuracy", "sparse_top_k_categorical_accuracy"]
    model.compile(make_opt(), "sparse_categorical_crossentropy", metrics=metrics)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, seed=0)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = load_model(path)
    assert loaded.optimizer.iterations == model.optimizer.iterations == 12  # 2 x 6 steps
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert loaded.loss == model.loss and loaded._metric_names == metrics
    without_state = load_model(path)
    without_state.optimizer.reset()  # what loading without the optimizer's state would give

    h1 = model.fit(x, y, batch_size=16, epochs=2, verbose=0, seed=1)
    h2 = loaded.fit(x, y, batch_size=16, epochs=2, verbose=0, seed=1)
    without_state.fit(x, y, batch_size=16, epochs=2, verbose=0, seed=1)
    for a, b in zip(model.get_weights(), loaded.get_weights(), strict=True):
        assert np.array_equal(a, b)
    assert h1.history == h2.history
    assert not all(np.array_equal(a, b) for a, b in
                   zip(model.get_weights(), without_state.get_weights(), strict=True))


def test_load_files_without_optimizer_state(tmp_path):
    x, y = _blobs(n=40)
    # A model that was never compiled.
    model = _mlp()
    model.build(5)
    model.save(tmp_path / "plain.npz")
    loaded = load_model(tmp_path / "plain.npz")
    assert loaded.loss is None and loaded.optimizer is None
    assert np.array_equal(loaded.predict(x), model.predict(x))
    # Compiled, never trained: an optimizer without state.
    model.compile(Adam(0.01), "sparse_categorical_crossentropy", metrics=["acc"])
    model.save(tmp_path / "compiled.npz")
    assert load_model(tmp_path / "compiled.npz").optimizer.iterations == 0
    # A file of format version 1, written before optimizer state was saved.
    model.fit(x, y, epochs=1, verbose=0, seed=0)
    model.save(tmp_path / "new.npz")
    with np.load(tmp_path / "new.npz") as data:
        arrays = {k: data[k] for k in data.files if not k.startswith("optimizer/")}
    config = json.loads(str(arrays["__config__"]))
    assert config["format_version"] == 2 and config["optimizer_state"]["steps"]
    del config["optimizer_state"]
    config["format_version"] = 1
    arrays["__config__"] = np.array(json.dumps(config))
    np.savez(tmp_path / "old.npz", **arrays)
    old = load_model(tmp_path / "old.npz")
    assert old.optimizer.iterations == 0 and old._metric_names == ["acc"]
    assert np.array_equal(old.predict(x), model.predict(x))
    old.fit(x, y, epochs=1, verbose=0)


def _rewrite(src, dst, edit):
    with np.load(src) as data:
        arrays = {k: data[k] for k in data.files}
    config = json.loads(str(arrays["__config__"]))
    edit(arrays, config)
    arrays["__config__"] = np.array(json.dumps(config))
    np.savez(dst, **arrays)


@pytest.mark.parametrize("edit, words", [
    (lambda a, c: a.pop("optimizer/layers/1/bias/v"), "optimizer arrays"),
    (lambda a, c: a.update({"optimizer/layers/0/kernel/m": np.zeros(3, np.float32)}),
     "optimizer state of layers/0/kernel: slot 'm' must have the parameter's shape"),
    (lambda a, c: c["optimizer_state"]["steps"].update({"layers/7/kernel": 1}),
     "unknown weights"),
    (lambda a, c: c["optimizer_state"]["steps"].update({"layers/0/bias": -2}),
     "step must be an int >= 0"),
    (lambda a, c: c.update(compile=None), "without a compiled optimizer"),
])
def test_load_rejects_damaged_optimizer_state(tmp_path, edit, words):
    x, y = _blobs(n=40)
    model = _mlp()
    model.compile(Adam(0.01), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, verbose=0, seed=0)
    model.save(tmp_path / "m.npz")
    _rewrite(tmp_path / "m.npz", tmp_path / "bad.npz", edit)
    with pytest.raises(ValueError, match=words):
        load_model(tmp_path / "bad.npz")
