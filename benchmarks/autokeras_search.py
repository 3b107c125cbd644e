"""AutoKeras' ImageClassifier under the benchmarks' budget rule.

Runs in AutoKeras' own virtualenv (it needs another Keras than ours, see
benchmarks/README.md), so it imports neither ``cnnsearch`` nor our Keras settings: the
split comes from an ``.npz`` file a worker of the project's virtualenv wrote.
"""

from __future__ import annotations

import time
from pathlib import Path


def unavailable(python: str | None) -> str | None:
    """Why AutoKeras cannot run with the interpreter ``python`` (None: it can)."""
    if not python:
        return ("not run: no --autokeras-python (AutoKeras needs its own virtualenv; "
                "see benchmarks/README.md)")
    if not Path(python).exists():
        return f"not run: {python} does not exist"
    return None


def search(params: dict) -> dict:
    """Search with ``ImageClassifier(objective="val_accuracy")``; no trial starts after
    ``params['budget']`` seconds; then AutoKeras' own final fit on train + validation and
    one evaluation on test.

    The running trial also stops at the budget (after the current batch; Keras still
    validates the partial epoch), as ours does: AutoKeras' second candidate is a ResNet50
    on the images resized to 224x224, which on a CPU would train for hours.

    Returns:
        ``test_accuracy``, ``records`` (per trial: ``ended`` seconds since the search
        started, ``epochs_run``, ``best_val_accuracy``), ``total_seconds`` and AutoKeras'
        ``version``.
    """
    import autokeras as ak
    import keras
    import numpy as np

    split = np.load(params["split_file"])
    keras.utils.set_random_seed(params["seed"])
    x = np.concatenate([split["x_train"], split["x_val"]])   # validation last: AutoKeras
    y = np.concatenate([split["y_train"], split["y_val"]])   # splits off the last fraction
    fraction = (len(split["x_val"]) + 0.5) / len(x)
    classifier = ak.ImageClassifier(max_trials=100000, objective="val_accuracy",
                                    directory=str(Path(params["workdir"]) / "ak"),
                                    seed=params["seed"], overwrite=True)
    tuner, records, started = classifier.tuner, [], time.perf_counter()
    on_trial_end = tuner.on_trial_end
    epochs: dict[str, int] = {}   # trial id -> epochs run (the oracle keeps the best only)

    def record(trial) -> None:
        on_trial_end(trial)
        elapsed = time.perf_counter() - started
        metrics = trial.metrics
        records.append({"ended": elapsed, "epochs_run": epochs.get(trial.trial_id, 0),
                        "best_val_accuracy": float(metrics.get_best_value("val_accuracy"))
                        if metrics.exists("val_accuracy") else None})
        if elapsed >= params["budget"]:
            tuner.oracle.max_trials = len(tuner.oracle.trials)

    def stop_at_budget(trial, model, batch, logs=None) -> None:
        if time.perf_counter() - started >= params["budget"]:
            model.stop_training = True

    def count_epoch(trial, model, epoch, logs=None) -> None:   # keras-tuner's is a no-op
        epochs[trial.trial_id] = epoch + 1

    tuner.on_trial_end = record
    tuner.on_batch_end = stop_at_budget
    tuner.on_epoch_end = count_epoch
    stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max",
                                         patience=params["patience"])
    classifier.fit(x, y, validation_split=fraction, epochs=params["epochs"], callbacks=[stop],
                   batch_size=params["batch_size"], verbose=0)
    accuracy = float(classifier.evaluate(split["x_test"], split["y_test"], verbose=0)[1])
    return {"test_accuracy": accuracy, "records": records,
            "total_seconds": time.perf_counter() - started, "version": ak.__version__}
