"""Typed schema of the Hydra config tree (conf/), registered in Hydra's ConfigStore.

The YAML files in conf/ hold the values; these dataclasses hold the shape, so a
misspelled key or a wrong type fails when Hydra composes the config. The search
space is a free mapping here (a key may be a list or a range) and is checked by
:mod:`search.space`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class PathsConfig:
    root: str = "outputs"


@dataclass
class DataConfig:
    name: str = MISSING
    path: str | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    image_size: list[int] | None = None
    color_mode: str = "grayscale"
    limit: int | None = None


@dataclass
class TunerConfig:
    name: str = MISSING
    objective: str = "val_accuracy"
    direction: str | None = None   # null: max for accuracy, min for loss
    max_trials: int = 10
    max_seconds: float | None = None   # time budget: no new trial starts after it
    executions_per_trial: int = 1
    max_retries_per_trial: int = 0
    max_consecutive_failed_trials: int = 3
    # hyperband
    max_epochs: int = 10
    factor: int = 3
    hyperband_iterations: int = 1
    # bayesian
    num_initial_points: int | None = None
    alpha: float = 1e-4
    beta: float = 2.6


@dataclass
class TrainingConfig:
    epochs: int = 30
    batch_size: int = 32
    early_stopping_patience: int | None = 5
    mixed_precision: bool = False
    jit_compile: Any = "auto"


@dataclass
class TrackingConfig:
    mode: str = "local"
    uri: str | None = None
    experiment: str = "${data.name}"
    registered_model: str = "cnnsearch-${data.name}"


@dataclass
class ExportConfig:
    format: str = "keras"
    dir: str | None = None
    run: str = "latest"
    model: str | None = None
    quantize: str = "none"
    opset: int = 17
    overwrite: bool = False


@dataclass
class SweepConfig:
    name: str | None = None
    resume: bool = True


@dataclass
class FinalFitConfig:
    enabled: bool = True
    epochs: int | None = None


@dataclass
class ResultsConfig:
    sweep: str = "latest"
    experiment: str | None = None
    top: int = 20
    csv: str | None = None


@dataclass
class UiConfig:
    host: str = "127.0.0.1"
    port: int = 5000


@dataclass
class Config:
    seed: int = 0
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    search_space: dict[str, Any] = field(default_factory=dict)
    tuner: TunerConfig = field(default_factory=TunerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    final_fit: FinalFitConfig = field(default_factory=FinalFitConfig)
    results: ResultsConfig = field(default_factory=ResultsConfig)
    ui: UiConfig = field(default_factory=UiConfig)


def register_configs() -> None:
    """Make the schema available to the ``cnnsearch_schema`` entry of config.yaml."""
    ConfigStore.instance().store(name="cnnsearch_schema", node=Config)
