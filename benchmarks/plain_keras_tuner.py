"""A plain keras-tuner script, written as a user would: the whole-run benchmark's baseline.

Digits from scikit-learn (the split of ``cnnsearch sweep``'s default: 20% test, 10% of
the rest for validation), the fixed benchmark network (one 3x3 conv of 32 filters, 2x2
max pooling, dense 64; ``benchmarks.variants.FIXED``) with the learning rate drawn
from near-identical values, RandomSearch, then the best model evaluated on test and
saved. It imports nothing of ours, so its start-up is a plain script's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import keras
import keras_tuner as kt
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def build(hp: kt.HyperParameters, rates: list[float]) -> keras.Model:
    inputs = keras.Input(shape=(8, 8, 1))
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.MaxPooling2D(2, padding="same")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))
    model.compile(optimizer=keras.optimizers.Adam(hp.Choice("learning_rate", rates)),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", default="outputs/plain-keras-tuner")
    args = p.parse_args()

    digits = load_digits()
    x, y = (digits.images / 16.0).astype("float32")[..., None], digits.target
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=0.2, random_state=args.seed, stratify=y)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=0.1, random_state=args.seed, stratify=y_rest)
    # keras-tuner never repeats values: near-identical rates keep every trial's work equal
    rates = [float(f"{1e-3 * (1 + i * 5e-6):.10g}") for i in range(4 * args.trials + 4)]

    keras.utils.set_random_seed(args.seed)
    tuner = kt.RandomSearch(lambda hp: build(hp, rates), objective="val_accuracy",
                            max_trials=args.trials, seed=args.seed, directory=args.dir,
                            project_name="search", overwrite=True)
    tuner.search(x_train, y_train, validation_data=(x_val, y_val), epochs=args.epochs,
                 batch_size=32, verbose=0)
    best = tuner.get_best_models(1)[0]
    _, accuracy = best.evaluate(x_test, y_test, verbose=0)
    best.save(Path(args.dir) / "best_model.keras")
    print(f"test accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main()
