"""Train a small classifier on scikit-learn's handwritten digits with fastdense.

Run it with ``python examples/train_digits.py``.  It needs scikit-learn only for the data (the
digits ship with it, so nothing is downloaded).  Steps: load the data, build a model, compile,
fit, evaluate, save, load back, predict.
"""

import tempfile
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from fastdense.dense import Dense
from fastdense.model import Sequential, load_model
from fastdense.optimizers import Adam

# 1. Data: 1797 images of 8x8 pixels, labels 0-9.  Standardize with the training statistics
#    (StandardScaler leaves constant pixels alone instead of dividing by a zero spread) and
#    use float32, the layers' default dtype.
x, y = load_digits(return_X_y=True)
x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0,
                                                    stratify=y)
scaler = StandardScaler().fit(x_train)
x_train = scaler.transform(x_train).astype(np.float32)
x_test = scaler.transform(x_test).astype(np.float32)

# 2. Model: 64 inputs -> 100 ReLU units -> 10 softmax outputs (one probability per digit).
model = Sequential([
    Dense(100, activation="relu"),
    Dense(10, activation="softmax"),
])

# 3. Compile: Adam with Keras' defaults, and a loss for integer labels.  (During training the
#    softmax is fused into this loss, which gives an exact, stable gradient.)
model.compile(optimizer=Adam(learning_rate=1e-3), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])

# 4. Fit: 20 passes over the data in batches of 32, holding out 10% to watch for
#    over-fitting.  ``seed`` makes the run reproducible, bit for bit.
history = model.fit(x_train, y_train, batch_size=32, epochs=20, validation_split=0.1,
                    seed=0, verbose=1)
model.summary()
print(f"last epoch: loss {history.history['loss'][-1]:.4f}, "
      f"val_accuracy {history.history['val_accuracy'][-1]:.4f}")

# 5. Evaluate on data the model has never seen.
test_loss, test_accuracy = model.evaluate(x_test, y_test)
print(f"test loss {test_loss:.4f}, test accuracy {test_accuracy:.4f}")

# 6. Save to a single .npz file (architecture as JSON + weights, no pickle) and load it back.
with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "digits_model.npz"
    model.save(path)
    restored = load_model(path)

# 7. Predict: probabilities per class; the restored model gives exactly the same numbers.
probabilities = restored.predict(x_test[:5])
assert np.array_equal(probabilities, model.predict(x_test[:5]))
print("predicted digits:", probabilities.argmax(axis=1), "true digits:", y_test[:5])
