"""The search space: validate its config, declare it to keras-tuner, read candidates back.

Each key is a list (a choice; one element fixes the value) or a range
``{min, max, step}`` / ``{min, max, sampling: log}``. Per-block keys are declared
once per possible block inside keras-tuner conditional scopes, so a 1-block
candidate neither samples nor logs values for blocks 2 and 3.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cnnsearch.models.architecture import (
    ACTIVATIONS,
    AMOUNTS,
    FLIPS,
    GLOBAL_POOLINGS,
    OPTIMIZERS,
    PADDINGS,
    POOLINGS,
    Architecture,
    Augmentation,
    Block,
    Head,
)
from cnnsearch.search.config import (
    AUGMENTATION_KEYS,
    BLOCK_KEYS,
    SPACE_KEYS,
    AugmentationDefaults,
)
from cnnsearch.search.errors import UserError

if TYPE_CHECKING:   # validating a space needs no keras-tuner (nor Keras)
    import keras_tuner as kt

_ALLOWED = {
    "padding": PADDINGS, "pooling": POOLINGS, "activation": ACTIVATIONS,
    "global_pooling": GLOBAL_POOLINGS, "optimizer": OPTIMIZERS, "batch_norm": (False, True),
    "augmentation.flip": FLIPS,
}
_FRACTIONS = ("augmentation.translate", "augmentation.zoom", "augmentation.contrast")
_POSITIVE_INTS = ("num_blocks", "convs_per_block", "filters", "kernel_size", "strides",
                  "pool_size")


@dataclass(frozen=True)
class Dimension:
    """One key of the space: a choice (``values``) or a numeric range."""

    name: str
    values: tuple | None = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    sampling: str = "linear"

    @property
    def is_range(self) -> bool:
        return self.values is None

    def candidates(self) -> list:
        """Every value this dimension can take (ranges need integers or a step)."""
        if not self.is_range:
            return list(self.values)
        step = self.step or 1
        count = int(round((self.max - self.min) / step)) + 1
        return [self.min + i * step for i in range(count)]

    def declare(self, hp: kt.HyperParameters, name: str) -> Any:
        """Declare this dimension on ``hp`` under ``name`` and return its current value."""
        if not self.is_range:
            if len(self.values) == 1:
                return hp.Fixed(name, self.values[0])
            if all(isinstance(v, bool) for v in self.values):
                return hp.Boolean(name, default=self.values[0])
            return hp.Choice(name, list(self.values), ordered=False)
        if all(isinstance(v, int) for v in (self.min, self.max, self.step or 1)):
            return hp.Int(name, int(self.min), int(self.max), step=self.step,
                          sampling=self.sampling)
        return hp.Float(name, float(self.min), float(self.max), step=self.step,
                        sampling=self.sampling)


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space plus the optional parameter budget.

    ``dims`` holds every key of ``SPACE_KEYS`` and ``augmentation.<key>`` for each of
    ``AUGMENTATION_KEYS`` (absent from the config: that augmentation off).
    """

    dims: Mapping[str, Dimension]
    max_params: int | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SearchSpace:
        """Validate a ``search_space`` mapping.

        Raises:
            UserError: on an unknown or missing key, an empty list, ``min > max``,
                a value outside the allowed set, or a non-positive size.
        """
        config = dict(config)
        max_params = config.pop("max_params", None)
        augmentation = _augmentation_dims(config.pop("augmentation", None) or {})
        if max_params is not None and (not isinstance(max_params, int) or max_params < 1):
            raise UserError(f"search_space.max_params must be a positive integer or null, "
                            f"got {max_params!r}")
        unknown = sorted(set(config) - set(SPACE_KEYS))
        if unknown:
            raise UserError(f"unknown search_space key {unknown[0]!r}; allowed: "
                            f"{', '.join(SPACE_KEYS)}, augmentation, max_params")
        missing = [key for key in SPACE_KEYS if key not in config]
        if missing:
            raise UserError(f"search_space.{missing[0]} is missing; every key of "
                            f"{', '.join(SPACE_KEYS)} needs a list or a range")
        dims = {key: _parse(key, config[key]) for key in SPACE_KEYS}
        return cls(dims | augmentation, max_params)

    @property
    def max_blocks(self) -> int:
        return max(self.dims["num_blocks"].candidates())

    def declare(self, hp: kt.HyperParameters) -> dict[str, Any]:
        """Declare every hyperparameter on ``hp`` and return the active values.

        All blocks up to the largest ``num_blocks`` are declared, each inside a
        conditional scope, so keras-tuner knows the whole space after one call.
        """
        dims = self.dims
        values: dict[str, Any] = {"num_blocks": dims["num_blocks"].declare(hp, "num_blocks")}
        block_counts = dims["num_blocks"].candidates()
        for b in range(1, self.max_blocks + 1):
            with hp.conditional_scope("num_blocks", [n for n in block_counts if n >= b]):
                for key in BLOCK_KEYS:
                    if key == "pool_size":
                        continue
                    values[f"block{b}_{key}"] = dims[key].declare(hp, f"block{b}_{key}")
                pooled = [p for p in dims["pooling"].candidates() if p != "none"]
                if pooled:
                    with hp.conditional_scope(f"block{b}_pooling", pooled):
                        values[f"block{b}_pool_size"] = dims["pool_size"].declare(
                            hp, f"block{b}_pool_size")
        for key in ("global_pooling", "dense_units"):
            values[key] = dims[key].declare(hp, key)
        units = [u for u in dims["dense_units"].candidates() if u > 0]
        if units:
            with hp.conditional_scope("dense_units", units):
                values["dropout"] = dims["dropout"].declare(hp, "dropout")
        for key in ("learning_rate", "optimizer"):
            values[key] = dims[key].declare(hp, key)
        for key in AUGMENTATION_KEYS:
            values[f"augment_{key}"] = dims[f"augmentation.{key}"].declare(hp, f"augment_{key}")
        return {k: v for k, v in values.items() if v is not None}

    def grid_size(self) -> int:
        """Upper bound of the number of grid points (every key's values multiplied)."""
        size = 1
        for dim in self.dims.values():
            size *= len(dim.candidates())
        return size


@dataclass(frozen=True)
class Candidate:
    """One point of the space: the network and how to train it."""

    architecture: Architecture
    optimizer: str
    learning_rate: float


def candidate_from_values(
    values: Mapping[str, Any], input_shape: tuple[int, int, int], num_classes: int
) -> Candidate:
    """Turn active hyperparameter values (as returned by :meth:`SearchSpace.declare`)
    into a candidate."""
    blocks = []
    for b in range(1, int(values["num_blocks"]) + 1):
        pooling = values[f"block{b}_pooling"]
        blocks.append(Block(
            filters=int(values[f"block{b}_filters"]),
            kernel_size=int(values[f"block{b}_kernel_size"]),
            strides=int(values[f"block{b}_strides"]),
            padding=values[f"block{b}_padding"],
            activation=values[f"block{b}_activation"],
            batch_norm=bool(values[f"block{b}_batch_norm"]),
            convs=int(values[f"block{b}_convs_per_block"]),
            pooling=pooling,
            pool_size=int(values.get(f"block{b}_pool_size", 2)),
        ))
    units = int(values["dense_units"])
    dropout = float(values.get("dropout", 0.0)) if units else 0.0
    head = Head(values["global_pooling"], units, dropout)
    augmentation = Augmentation(values.get("augment_flip", "none"), *(
        float(values.get(f"augment_{key}", 0.0)) for key in AMOUNTS))
    arch = Architecture(tuple(input_shape), num_classes, tuple(blocks), head, augmentation)
    return Candidate(arch, values["optimizer"], float(values["learning_rate"]))


def skip_reason(candidate: Candidate, max_params: int | None) -> str | None:
    """Why a candidate must not be trained (infeasible geometry, over budget), or None."""
    reason = candidate.architecture.infeasibility()
    if reason is None and max_params is not None:
        params = candidate.architecture.params
        if params > max_params:
            reason = f"{params:,} parameters > search_space.max_params={max_params:,}"
    return reason


def _augmentation_dims(config: Any) -> dict[str, Dimension]:
    """``augmentation.<key>`` dimensions; a key left out is that augmentation off."""
    if not isinstance(config, Mapping):
        raise UserError(f"search_space.augmentation must be a mapping of "
                        f"{', '.join(AUGMENTATION_KEYS)}, got {config!r}")
    unknown = sorted(set(config) - set(AUGMENTATION_KEYS))
    if unknown:
        raise UserError(f"unknown search_space.augmentation key {unknown[0]!r}; allowed: "
                        f"{', '.join(AUGMENTATION_KEYS)}")
    off = AugmentationDefaults()
    return {f"augmentation.{key}": _parse(f"augmentation.{key}", config.get(key, getattr(off, key)))
            for key in AUGMENTATION_KEYS}


def _parse(key: str, spec: Any) -> Dimension:
    """Validate one key's list or range."""
    if isinstance(spec, Mapping):
        return _parse_range(key, dict(spec))
    if not isinstance(spec, list | tuple):
        raise UserError(f"search_space.{key} must be a list of values or a range "
                        f"{{min, max[, step | sampling: log]}}, got {spec!r}")
    if not spec:
        raise UserError(f"search_space.{key} is an empty list; give at least one value")
    for value in spec:
        _check_value(key, value)
    if len({type(v) for v in spec}) > 1:
        if not all(isinstance(v, int | float) for v in spec):
            raise UserError(f"search_space.{key} mixes value types: {list(spec)}")
        # keras-tuner's Choice takes one value type only: [0, 0.5] -> [0.0, 0.5].
        spec = [bool(v) for v in spec] if key == "batch_norm" else [float(v) for v in spec]
    return Dimension(key, values=tuple(spec))


def _parse_range(key: str, spec: dict) -> Dimension:
    if key in _ALLOWED:
        raise UserError(f"search_space.{key} takes a list of values from "
                        f"{', '.join(map(str, _ALLOWED[key]))}, not a range")
    extra = set(spec) - {"min", "max", "step", "sampling"}
    if extra or "min" not in spec or "max" not in spec:
        raise UserError(f"search_space.{key} range needs keys min and max (optional step, "
                        f"sampling), got {sorted(spec)}")
    low, high, step = spec["min"], spec["max"], spec.get("step")
    sampling = spec.get("sampling", "linear")
    if low > high:
        raise UserError(f"search_space.{key}: min ({low}) > max ({high})")
    if sampling not in ("linear", "log", "reverse_log"):
        raise UserError(f"search_space.{key}.sampling must be linear, log or reverse_log, "
                        f"got {sampling!r}")
    if sampling != "linear" and low <= 0:
        raise UserError(f"search_space.{key}: log sampling needs min > 0, got {low}")
    if step is not None and step <= 0:
        raise UserError(f"search_space.{key}.step must be > 0, got {step}")
    for value in (low, high):
        _check_value(key, value)
    if key in _POSITIVE_INTS or key == "dense_units":
        if not all(isinstance(v, int) for v in (low, high, step or 1)):
            raise UserError(f"search_space.{key} range needs integer min, max and step")
    return Dimension(key, min=low, max=high, step=step, sampling=sampling)


def _check_value(key: str, value: Any) -> None:
    if key in _ALLOWED:
        if value not in _ALLOWED[key] or (key != "batch_norm" and isinstance(value, bool)):
            allowed = ", ".join(map(str, _ALLOWED[key]))
            raise UserError(f"search_space.{key}: {value!r} is not allowed; choose from {allowed}")
    elif key in _POSITIVE_INTS:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"search_space.{key}: {value!r} is not allowed; "
                            "use positive integers")
    elif key == "dense_units":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UserError(f"search_space.dense_units: {value!r} is not allowed; "
                            "use integers >= 0 (0 = no dense layer)")
    elif key == "dropout":
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
            raise UserError(f"search_space.dropout: {value!r} is not allowed; use [0, 1)")
    elif key in _FRACTIONS:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
            raise UserError(f"search_space.{key}: {value!r} is not allowed; use a fraction "
                            "in [0, 1) (0: off)")
    elif key == "learning_rate":
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise UserError(f"search_space.learning_rate: {value!r} is not allowed; use > 0")
