"""What to try: keras-tuner's oracles, drawing only feasible candidates.

An infeasible or over-budget candidate is counted and replaced by another draw: it
never becomes a trial, so it neither uses up ``max_trials`` nor counts as a failure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

import keras_tuner as kt

from cnnsearch.search.config import DefaultsFirst, TunerConfig, TunerName
from cnnsearch.search.kt.internals import NO_FAILURE_LIMIT, FilteredDraws

TrialStatus = kt.engine.trial.TrialStatus


class _FeasibleDraws(FilteredDraws):
    """Oracle mixin: infeasible draws are counted, remembered and drawn again; a fresh
    search may start from the space's default candidate instead of a random one."""

    skip_check: Callable[[dict], str | None]
    on_skip: Callable[[str, dict], None]
    start_from_defaults = False

    def init_skips(self, skip_check, on_skip) -> None:
        self.skip_check, self.on_skip = skip_check, on_skip
        self.skipped: Counter[str] = Counter()

    def preferred_values(self) -> dict | None:
        return default_values(self.get_space()) if self.start_from_defaults and not self.trials \
            else None

    def accept(self, values: dict) -> bool:
        reason = self.skip_check(values)
        if reason is None:
            return True
        self.skipped[reason] += 1
        self.mark_tried(values)
        self.on_skip(reason, values)
        return False

    def get_state(self):
        return {**super().get_state(), "skipped": dict(self.skipped)}

    def set_state(self, state):
        super().set_state(state)
        self.skipped = Counter(state.get("skipped", {}))


class RandomOracle(_FeasibleDraws, kt.oracles.RandomSearchOracle):
    """Random search over feasible candidates."""


class HyperbandOracle(_FeasibleDraws, kt.oracles.HyperbandOracle):
    """Hyperband; new brackets start from feasible random candidates."""


class BayesianOracle(_FeasibleDraws, kt.oracles.BayesianOptimizationOracle):
    """Gaussian-process search; an infeasible proposal is replaced by a feasible random one."""

    def populate_space(self, trial_id):
        response = super().populate_space(trial_id)
        if response["status"] != TrialStatus.RUNNING or self.accept(response["values"]):
            return response
        values = self.random_values()
        if values is None:
            return {"status": TrialStatus.STOPPED, "values": None}
        return {"status": TrialStatus.RUNNING, "values": values}


class GridOracle(_FeasibleDraws, kt.Oracle):
    """Every combination of the space in a fixed order, infeasible ones skipped."""

    def populate_space(self, trial_id):
        for values in _grid(self.get_space()):
            if not self.was_tried(values) and self.accept(values):
                return {"status": TrialStatus.RUNNING, "values": values}
        return {"status": TrialStatus.STOPPED, "values": None}


def default_values(space: kt.HyperParameters) -> dict:
    """Every active hyperparameter at its default (a list's first value, a range's low end)."""
    hps = kt.HyperParameters()
    hps.merge(space)
    return dict(hps.values)


def _grid(space: kt.HyperParameters) -> Iterator[dict]:
    """All distinct active-value combinations, conditions respected (depth first)."""

    def walk(index: int, hps: kt.HyperParameters) -> Iterator[dict]:
        if index == len(space.space):
            yield dict(hps.values)
            return
        hp = space.space[index]
        hps.merge([hp])
        if not hps.is_active(hp):
            yield from walk(index + 1, hps)
            return
        for value in hp.values:
            hps.values[hp.name] = value
            yield from walk(index + 1, hps)
        del hps.values[hp.name]

    seen = set()
    for values in walk(0, kt.HyperParameters()):
        key = tuple(sorted(values.items()))
        if key not in seen:
            seen.add(key)
            yield values


ORACLES: dict[TunerName, type[kt.Oracle]] = {
    TunerName.random: RandomOracle, TunerName.bayesian: BayesianOracle,
    TunerName.grid: GridOracle, TunerName.hyperband: HyperbandOracle}


def make_oracle(config: TunerConfig, seed: int, skip_check: Callable[[dict], str | None],
                on_skip: Callable[[str, dict], None]) -> kt.Oracle:
    """The configured oracle.

    Args:
        config: the tuner's schema (its knobs are its oracle's options).
        seed: random seed of the oracle.
        skip_check: why a candidate (its hyperparameter values) must not be trained, or None.
        on_skip: told of each skipped candidate (reason, values).
    """
    # No failure limit here: the sweep's stop policy counts failed trials
    # (search/kt/stopping.py), for a local search and a chief alike.
    oracle = ORACLES[config.name](
        **config.oracle_options(),
        objective=kt.Objective(config.objective, config.objective_direction), seed=seed,
        max_retries_per_trial=config.max_retries_per_trial,
        max_consecutive_failed_trials=NO_FAILURE_LIMIT)
    oracle.init_skips(skip_check, on_skip)
    oracle.start_from_defaults = isinstance(config, DefaultsFirst) and config.start_from_defaults
    return oracle
