"""A sweep's spec (every value it needs) and its validation, before anything starts.

No Keras here, so a bad value is reported at once (the CLI checks it before it starts
the recorder, workers or Keras).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cnnsearch.search.config import (
    BudgetConfig,
    DataConfig,
    DistributedConfig,
    FinalFitConfig,
    RandomTunerConfig,
    ReevaluateConfig,
    TrainingConfig,
    TunerConfig,
)
from cnnsearch.search.errors import UserError
from cnnsearch.search.folder import check_sweep_name
from cnnsearch.search.kt.space import SearchSpace


@dataclass(frozen=True)
class SweepSpec:
    """Everything a sweep needs, as plain values (built by the CLI from the config)."""

    data: DataConfig
    search_space: dict
    tuner: TunerConfig = field(default_factory=RandomTunerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    root: str = "outputs"
    name: str | None = None
    resume: bool = True
    seed: int = 0
    final_fit: FinalFitConfig = field(default_factory=FinalFitConfig)
    config: dict = field(default_factory=dict)   # the composed config, for the records
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    reevaluate: ReevaluateConfig = field(default_factory=ReevaluateConfig)

    @property
    def space_hash(self) -> str:
        """Hash of the search space and the data config: what a resume must not change."""
        blob = json.dumps({"space": self.search_space, "data": asdict(self.data)},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def sweep_name(self) -> str:
        return self.name or (f"{self.data.name}-{self.tuner.name}-seed{self.seed}-"
                             f"{self.space_hash[:8]}")

    @property
    def recorded_config(self) -> dict:
        """The config keys this sweep uses: no other command's keys, no distributed keys
        for a one-process sweep (the tuner's schema holds only its own knobs)."""
        unused = {"export", "results", "ui", "server"} | (set() if self.distributed.enabled
                                                else {"distributed"})
        return {k: v for k, v in self.config.items() if k not in unused}

    @property
    def directory(self) -> Path:
        return Path(self.root).resolve() / "sweeps" / self.sweep_name


def validate(spec: SweepSpec) -> SearchSpace:
    """Check every user-given value before any data is loaded or model trained.

    Returns:
        The validated search space.

    Raises:
        UserError: naming the first bad key.

    Needs no Keras: the CLI checks a config before it starts anything.
    """
    space = SearchSpace.from_config(spec.search_space)
    check_sweep_name(spec.name)
    for group in (spec.data, spec.tuner, spec.training, spec.final_fit, spec.distributed,
                  spec.budget, spec.reevaluate):
        group.validate()
    if spec.tuner.name == "grid":
        for dim in space.dims.values():
            if dim.is_range and dim.step is None and not isinstance(dim.min, int):
                raise UserError(f"tuner=grid needs a finite space: give search_space."
                                f"{dim.name} a step or a list")
    return space
