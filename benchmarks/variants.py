"""The compared variants, imported only inside worker processes.

* Ours: a sweep composed and observed exactly as ``cnnsearch sweep`` does it (the Hydra
  config from conf/ with overrides, ``sweep_spec``/``tracking_spec``, the progress
  display and, for ``tracking=local``, the MLflow recorder), with two timing observers
  around the others: one first in line, one last.
* Baselines: plain keras-tuner ``RandomSearch`` and plain Keras, written the way a user
  would without this project, on the same data split (``search.data.datasets``).

The fixed benchmark architecture (overhead, throughput, costs) is one block of one
3x3 convolution with 32 filters, ReLU, 2x2 max pooling ("same" padding), flatten, a
64-unit ReLU dense layer and a softmax: ``FIXED`` in our schema, ``inline_model`` in
plain Keras.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import numpy as np
import psutil
import yaml

from benchmarks.common import REPO
from cnnsearch.search.config import DataConfig
from cnnsearch.search.data.datasets import Dataset, load_dataset
from cnnsearch.search.events import SweepObserver

log = logging.getLogger("benchmarks")

FIXED: dict[str, list] = {
    "num_blocks": [1], "convs_per_block": [1], "filters": [32], "kernel_size": [3],
    "strides": [1], "padding": ["same"], "activation": ["relu"], "batch_norm": [False],
    "pooling": ["max"], "pool_size": [2], "global_pooling": ["flatten"], "dense_units": [64],
    "dropout": [0.0], "optimizer": ["adam"],
}
BASE_LEARNING_RATE = 1e-3


def learning_rates(trials: int) -> list[float]:
    """``4 * trials + 4`` distinct learning rates within 0.2% of 1e-3.

    keras-tuner never runs the same values twice, so a single-valued space stops
    after one trial. Both sides therefore draw the learning rate from this list: the
    compute per trial is the same, and with 4x more values than trials a random draw
    rarely collides (keras-tuner gives up after 20 collisions in a row).
    """
    return [float(f"{BASE_LEARNING_RATE * (1 + i * 5e-6):.10g}") for i in range(4 * trials + 4)]


def fixed_overrides(trials: int) -> list[str]:
    """Hydra overrides that make the search space the fixed architecture."""
    values = {**FIXED, "learning_rate": learning_rates(trials)}
    return ["search_space=small",
            *(f"search_space.{key}={hydra_value(value)}" for key, value in values.items())]


def hydra_value(value: Any) -> str:
    """A Python value as a Hydra override value (lists, booleans, strings, numbers)."""
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def default_space() -> dict:
    """conf/search_space/default.yaml, as the default sweep uses it."""
    return yaml.safe_load((REPO / "conf" / "search_space" / "default.yaml").read_text())


def digits(seed: int) -> Dataset:
    """The digits split of the default config (val 0.1, test 0.2) under ``seed``."""
    return load_dataset(DataConfig("digits"), seed)


# -- ours ------------------------------------------------------------------------------


@dataclass
class Timeline:
    """perf_counter() times of a sweep's events, and each trial's outcome."""

    sweep_started: float = 0.0
    trial_started: dict[str, float] = field(default_factory=dict)
    epoch_ended: dict[str, list[float]] = field(default_factory=dict)
    trials: list[dict] = field(default_factory=list)    # outcome fields + "ended"
    finishing: float = 0.0       # sweep_ended reached the observers (final fit done)
    finished: float = 0.0        # every observer handled sweep_ended (MLflow model logged)

    def first(self) -> SweepObserver:
        """The observer to put before all others: it stamps the starts."""
        return _First(self)

    def last(self) -> SweepObserver:
        """The observer to put after all others: it stamps the ends."""
        return _Last(self)


class _First(SweepObserver):
    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline

    def sweep_started(self, info) -> None:
        self.timeline.sweep_started = time.perf_counter()

    def trial_started(self, trial_id, values, candidate) -> None:
        self.timeline.trial_started[trial_id] = time.perf_counter()

    def sweep_ended(self, result, model) -> None:
        self.timeline.finishing = time.perf_counter()


class _Last(SweepObserver):
    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline

    def epoch_ended(self, trial_id, epoch, logs) -> None:
        self.timeline.epoch_ended.setdefault(trial_id, []).append(time.perf_counter())

    def trial_ended(self, outcome) -> None:
        self.timeline.trials.append({**asdict(outcome), "ended": time.perf_counter()})

    def sweep_ended(self, result, model) -> None:
        self.timeline.finished = time.perf_counter()


def compose(overrides: list[str]):
    """The config ``cnnsearch sweep <overrides>`` would run with."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from cnnsearch.search.app.cli import CONF_DIR
    from cnnsearch.search.app.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def run_ours(overrides: list[str], root: str) -> dict:
    """One sweep as ``cnnsearch sweep <overrides>`` runs it, under ``root``, timed.

    Returns:
        ``sweep`` (the result summary), ``trials`` (each outcome, ``ended`` in seconds
        since the search started), ``epochs`` (trial id -> epoch end times, seconds
        since the trial started), ``search_seconds`` (first event of sweep_started to
        the last observer of the last trial_ended), ``finish_seconds`` (final fit,
        test evaluation, saving), ``observers_end_seconds`` (observers' sweep_ended:
        the MLflow model logging), ``setup_seconds`` (creating the MLflow recorder),
        ``total_seconds`` (run_sweep, end to end), ``train_images``.
    """
    from rich.console import Console

    from cnnsearch.search.app.commands import sweep_spec, tracking_spec
    from cnnsearch.search.progress import ProgressDisplay
    from cnnsearch.search.sweep import run_sweep

    cfg = compose([*overrides, f"paths.root={root}", "sweep.resume=false"])
    spec, tracking = sweep_spec(cfg), tracking_spec(cfg)
    timeline = Timeline()
    observers: list = [timeline.first(), ProgressDisplay(Console(stderr=True))]
    started = time.perf_counter()
    if tracking.enabled:   # MLflow imported only then: a machine may lack it
        from cnnsearch.tracking.runs import MlflowRecorder

        observers.append(MlflowRecorder(tracking))
    setup = time.perf_counter() - started
    observers.append(timeline.last())
    started = time.perf_counter()
    result, _ = run_sweep(spec, observers)
    total = time.perf_counter() - started
    zero = timeline.sweep_started
    last = timeline.trials[-1]["ended"] if timeline.trials else zero
    return {
        "sweep": asdict(result),
        "trials": [{**t, "ended": t["ended"] - zero} for t in timeline.trials],
        "epochs": {trial: [t - timeline.trial_started[trial] for t in times]
                   for trial, times in timeline.epoch_ended.items()},
        "search_seconds": last - zero,
        "finish_seconds": timeline.finishing - last,
        "observers_end_seconds": timeline.finished - timeline.finishing,
        "setup_seconds": setup,
        "total_seconds": total,
        "train_images": int(len(load_dataset(spec.data, spec.seed).x_train)),
    }


# -- plain Keras and keras-tuner -------------------------------------------------------


def inline_model(input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """The fixed benchmark architecture in plain Keras, layer for layer as ``FIXED``."""
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Conv2D(32, 3, padding="same")(inputs)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.MaxPooling2D(2, padding="same")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def compile_plain(model: keras.Model, optimizer: str = "adam",
                  learning_rate: float = BASE_LEARNING_RATE,
                  jit_compile: bool = False) -> keras.Model:
    """Compile as any Keras user would (metrics by keyword; XLA off like our default)."""
    model.compile(optimizer=keras.optimizers.get({"class_name": optimizer,
                                                  "config": {"learning_rate": learning_rate}}),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  jit_compile=jit_compile)
    return model


class InlineHyperModel(kt.HyperModel):
    """The fixed architecture; only the (near-identical) learning rate varies."""

    def __init__(self, rates: list[float], input_shape: tuple[int, ...],
                 num_classes: int) -> None:
        super().__init__()
        self.rates, self.input_shape, self.num_classes = rates, input_shape, num_classes

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        rate = hp.Choice("learning_rate", self.rates)
        return compile_plain(inline_model(self.input_shape, self.num_classes),
                             learning_rate=rate)


_POOLS = {"max": keras.layers.MaxPooling2D, "avg": keras.layers.AveragePooling2D}
_HEADS = {"flatten": keras.layers.Flatten, "avg": keras.layers.GlobalAveragePooling2D,
          "max": keras.layers.GlobalMaxPooling2D}


# The search space and training of the plain keras-tuner and Optuna scripts in the
# Fashion-MNIST benchmark: what a user writes without this project (cnnsearch's default
# space and training before its Fashion-MNIST tuning), frozen here so that changing our
# defaults never changes the baselines.
USER_SPACE: dict[str, Any] = {
    "num_blocks": [1, 2], "convs_per_block": [1, 2], "filters": [32, 64], "kernel_size": [3],
    "strides": [1], "padding": ["same"], "activation": ["relu"], "batch_norm": [False, True],
    "pooling": ["max", "avg", "sum"], "pool_size": [2], "global_pooling": ["flatten"],
    "dense_units": [64, 128], "dropout": {"min": 0.0, "max": 0.5, "step": 0.25},
    "learning_rate": {"min": 0.001, "max": 0.005, "sampling": "log"}, "optimizer": ["adam"],
}
USER_TRAINING = {"epochs": 30, "patience": 5, "batch_size": 32}


def build_plain_model(choose, input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """A CNN of the search_space schema in plain Keras; ``choose(key, name)`` gives values.

    Blocks are a plain ``for`` loop (no conditional scopes). Sum pooling has no Keras
    layer: it uses ours (built-in layers only).
    """
    from cnnsearch.models.layers import sum_pooling_2d

    inputs = x = keras.Input(shape=input_shape)
    for b in range(choose("num_blocks", "num_blocks")):
        value = {key: choose(key, f"{key}_{b}") for key in (
            "convs_per_block", "filters", "kernel_size", "strides", "padding",
            "activation", "batch_norm", "pooling")}
        for c in range(value["convs_per_block"]):
            x = keras.layers.Conv2D(value["filters"], value["kernel_size"],
                                    strides=value["strides"] if c == 0 else 1,
                                    padding=value["padding"],
                                    use_bias=not value["batch_norm"])(x)
            if value["batch_norm"]:
                x = keras.layers.BatchNormalization()(x)
            x = keras.layers.Activation(value["activation"])(x)
        if value["pooling"] != "none":
            size = choose("pool_size", f"pool_size_{b}")
            x = (sum_pooling_2d(x.shape[1:], size, padding=value["padding"],
                                name=f"sum_pool_{b}")(x)
                 if value["pooling"] == "sum"
                 else _POOLS[value["pooling"]](size, padding=value["padding"])(x))
    x = _HEADS[choose("global_pooling", "global_pooling")]()(x)
    units = choose("dense_units", "dense_units")
    if units:
        x = keras.layers.Dense(units, activation="relu")(x)
        rate = choose("dropout", "dropout")
        if rate:
            x = keras.layers.Dropout(rate)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return compile_plain(keras.Model(inputs, outputs), choose("optimizer", "optimizer"),
                         choose("learning_rate", "learning_rate"))


class PlainHyperModel(kt.HyperModel):
    """A search space written with plain keras-tuner calls, no conditional scopes.

    It takes its values from a ``search_space`` mapping (lists -> ``hp.Choice``,
    ranges -> ``hp.Int``/``hp.Float``).
    """

    def __init__(self, space: dict, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.space = {k: v for k, v in space.items() if k != "max_params"}
        self.input_shape, self.num_classes = input_shape, num_classes

    def _hp(self, hp: kt.HyperParameters, key: str, name: str) -> Any:
        spec = self.space[key]
        if isinstance(spec, list):
            return hp.Choice(name, spec)
        if all(isinstance(spec.get(k, 1), int) for k in ("min", "max", "step")):
            return hp.Int(name, spec["min"], spec["max"], step=spec.get("step"),
                          sampling=spec.get("sampling", "linear"))
        return hp.Float(name, spec["min"], spec["max"], step=spec.get("step"),
                        sampling=spec.get("sampling", "linear"))

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        return build_plain_model(lambda key, name: self._hp(hp, key, name),
                                 self.input_shape, self.num_classes)


class _Records:
    """A plain keras-tuner tuner, plus a record per trial and an optional time budget.

    Each record has ``ended`` (seconds since ``search`` started), ``best_val_accuracy``,
    ``epochs_run``, ``status`` and ``rss_mb`` (after the trial). With ``max_seconds``,
    no trial starts once the budget is spent (the rule of our ``tuner.max_seconds``).
    """

    def __init__(self, *args, max_seconds: float | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.max_seconds = max_seconds
        self.started = 0.0
        self.records: list[dict] = []
        self._epochs: dict[str, int] = {}

    def search(self, *args, **kwargs):
        self.started = time.perf_counter()
        return super().search(*args, **kwargs)

    def run_trial(self, trial, *args, **kwargs):
        # keras-tuner keeps one observation per metric (the best epoch's), not one per epoch
        histories = super().run_trial(trial, *args, **kwargs)
        self._epochs[trial.trial_id] = max(len(h.history.get("loss", [])) for h in histories)
        return histories

    def on_trial_end(self, trial) -> None:
        super().on_trial_end(trial)
        elapsed = time.perf_counter() - self.started
        metrics = trial.metrics
        self.records.append({
            "trial_id": trial.trial_id, "status": str(trial.status).lower(), "ended": elapsed,
            "best_val_accuracy": (float(metrics.get_best_value("val_accuracy"))
                                  if metrics.exists("val_accuracy") else None),
            "epochs_run": self._epochs.pop(trial.trial_id, 0),
            "rss_mb": psutil.Process().memory_info().rss / 2**20,
        })
        if self.max_seconds is not None and elapsed >= self.max_seconds:
            self.oracle.max_trials = len(self.oracle.trials)


class PlainRandomSearch(_Records, kt.RandomSearch):
    """keras-tuner's RandomSearch with per-trial records and a time budget."""


class PlainHyperband(_Records, kt.Hyperband):
    """keras-tuner's Hyperband with per-trial records and a time budget."""


def final_fit_and_test(tuner: kt.Tuner, data: Dataset, batch_size: int) -> float:
    """Like our sweep: re-train the best trial on train + validation for its best epoch
    count, then evaluate once on test; returns the test accuracy."""
    best = tuner.oracle.get_best_trials(1)[0]
    model = tuner.hypermodel.build(best.hyperparameters)
    model.fit(np.concatenate([data.x_train, data.x_val]),
              np.concatenate([data.y_train, data.y_val]),
              epochs=int(best.best_step) + 1, batch_size=batch_size, verbose=0)
    return float(model.evaluate(data.x_test, data.y_test, batch_size=batch_size, verbose=0)[1])


def workdir(params: dict, name: str) -> str:
    """A fresh folder under the worker's temporary ``workdir``."""
    path = Path(params["workdir"]) / name
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def run_plain_search(params: dict, max_trials: int, max_seconds: float | None = None,
                     data: Dataset | None = None, space: dict | None = None,
                     hyperband: bool = False):
    """Plain keras-tuner RandomSearch (or Hyperband) with early stopping on.

    Defaults: our default space on digits.

    Returns:
        The data set and the finished tuner (its ``records`` hold one row per trial).
    """
    data = data or digits(params["seed"])
    keras.utils.set_random_seed(params["seed"])
    hypermodel = PlainHyperModel(space or default_space(), data.input_shape, data.num_classes)
    common = dict(objective="val_accuracy", seed=params["seed"], max_seconds=max_seconds,
                  directory=workdir(params, "tuner"), project_name="baseline", overwrite=True)
    if hyperband:   # the clock is the limit, not the number of brackets
        tuner = PlainHyperband(hypermodel, max_epochs=params["epochs"],
                               hyperband_iterations=1000, **common)
    else:
        tuner = PlainRandomSearch(hypermodel, max_trials=max_trials, **common)
    stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max",
                                         patience=params["patience"])
    tuner.search(data.x_train, data.y_train, validation_data=(data.x_val, data.y_val),
                 epochs=params["epochs"], batch_size=params["batch_size"], callbacks=[stop],
                 verbose=0)
    return data, tuner
