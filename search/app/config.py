"""The whole config tree's schema: the sweep's groups (:mod:`cnnsearch.search.config`),
tracking's (:mod:`cnnsearch.tracking.config`) and the other commands' (results, ui,
export, server), registered with Hydra so that every composed config is checked
against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from cnnsearch.search.config import (
    TUNER_CONFIGS,
    BudgetConfig,
    DataConfig,
    DistributedConfig,
    FinalFitConfig,
    ReevaluateConfig,
    TrainingConfig,
    TunerConfig,
)
from cnnsearch.search.errors import UserError
from cnnsearch.tracking.config import TrackingConfig


@dataclass
class PathsConfig:
    root: str = "outputs"


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
class ResultsConfig:
    sweep: str = "latest"
    experiment: str | None = None
    top: int = 20
    csv: str | None = None

    def validate(self) -> None:
        if self.top < 1:
            raise UserError(f"results.top must be >= 1, got {self.top}")


@dataclass
class UiConfig:
    host: str = "127.0.0.1"
    port: int = 5000

    def validate(self) -> None:
        if not 1 <= self.port <= 65535:
            raise UserError(f"ui.port must be between 1 and 65535, got {self.port}")


@dataclass
class ServerConfig:
    """``cnnsearch server``: MLflow over PostgreSQL on this host's loopback interface."""

    port: int = 5001
    postgres_port: int | None = None   # null: any free port
    postgres_bin: str | None = None    # folder of initdb and pg_ctl (null: find them)

    def validate(self) -> None:
        for key in ("port", "postgres_port"):
            port = getattr(self, key)
            if port is not None and not 1 <= port <= 65535:
                raise UserError(f"server.{key} must be between 1 and 65535, got {port}")


@dataclass
class Config:
    seed: int = 0
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    search_space: dict[str, Any] = field(default_factory=dict)
    tuner: TunerConfig = MISSING   # one of TUNER_CONFIGS, picked by conf/tuner/<name>.yaml
    training: TrainingConfig = field(default_factory=TrainingConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    final_fit: FinalFitConfig = field(default_factory=FinalFitConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    reevaluate: ReevaluateConfig = field(default_factory=ReevaluateConfig)
    results: ResultsConfig = field(default_factory=ResultsConfig)
    ui: UiConfig = field(default_factory=UiConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    server: ServerConfig = field(default_factory=ServerConfig)


def register_configs() -> None:
    """Make the schema available to the ``cnnsearch_schema`` entry of config.yaml, and
    each tuner's to its conf/tuner/<name>.yaml (as ``tuner_<name>_schema``; outside any
    group, so not an option of its own)."""
    store = ConfigStore.instance()
    store.store(name="cnnsearch_schema", node=Config)
    for name, schema in TUNER_CONFIGS.items():
        store.store(name=f"tuner_{name}_schema", node=schema)
