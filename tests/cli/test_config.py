"""The real Hydra config tree (conf/) composed with initialize_config_dir + compose."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cnnsearch.search.app.cli import whole_space_values
from cnnsearch.search.app.commands import sweep_spec, tracking_spec
from cnnsearch.search.app.config import register_configs
from cnnsearch.search.config import (
    AUGMENTATION_KEYS,
    SPACE_KEYS,
    DataConfig,
    FinalFitConfig,
    TrainingConfig,
    TunerConfig,
    TunerName,
)
from cnnsearch.search.data.datasets import load_dataset
from cnnsearch.search.errors import UserError
from cnnsearch.search.kt.space import SearchSpace
from cnnsearch.search.spec import SweepSpec, validate
from cnnsearch.tracking.store import TrackingError, open_store
from tests.conftest import CONF_DIR, load_space

GROUPS = ("data", "search_space", "tuner", "training", "tracking", "export", "experiment")


def _options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


def _yaml(group: str, option: str) -> dict:
    """An option's values (without its Hydra defaults list, which names its schema)."""
    values = OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{option}.yaml"))
    values.pop("defaults", None)
    return values


@pytest.fixture(scope="module")
def compose_config():
    """compose(overrides) over the real conf/ with the typed schema registered."""
    register_configs()

    def run(*overrides: str):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("config", overrides=list(overrides))

    return run


def test_every_group_has_options():
    for group in GROUPS:
        assert _options(group), f"conf/{group} has no option"
    assert "quick" in _options("experiment")
    assert "digits" in _options("data")


def test_default_config_composes_to_a_digits_random_sweep(compose_config):
    cfg = compose_config()
    assert cfg.data.name == "digits"
    assert cfg.tuner.name == "random"
    assert cfg.tracking.mode == "local"
    assert OmegaConf.to_container(cfg.search_space, resolve=True) == load_space("default")
    assert cfg.seed == 0
    assert OmegaConf.missing_keys(cfg) == set()


@pytest.mark.parametrize(("group", "option"),
                         [(g, o) for g in GROUPS if g != "experiment" for o in _options(g)])
def test_every_option_of_every_group_composes(compose_config, group, option):
    cfg = compose_config(f"{group}={option}")
    node = OmegaConf.to_container(cfg[group])
    for key, value in _yaml(group, option).items():
        if isinstance(value, dict):   # a nested group (data.augmentation): the keys it sets
            assert node[key] | value == node[key], f"{group}={option}: {key}"
        elif value != "???":   # a mandatory marker: checked where the value is used (below)
            assert node[key] == value, f"{group}={option}: {key}"
    if group == "search_space":
        assert OmegaConf.to_container(cfg.search_space) == _yaml(group, option)
    if group in ("data", "tuner"):
        assert cfg[group].name == option
    if group == "tracking":
        assert cfg.tracking.mode == option


def test_experiment_quick_overrides_only_what_it_changes(compose_config):
    default = compose_config()
    quick = compose_config("experiment=quick")
    assert OmegaConf.to_container(quick.search_space, resolve=True) == load_space("small")
    assert quick.tuner.max_trials == 3
    assert quick.training.epochs == 2
    # everything the preset does not mention keeps the default
    assert quick.tuner.name == default.tuner.name
    assert quick.training.batch_size == default.training.batch_size
    assert quick.data == default.data
    assert quick.tracking == default.tracking
    # command-line overrides still win over the preset
    shrunk = compose_config("experiment=quick", "tuner.max_trials=1", "training.epochs=1")
    assert (shrunk.tuner.max_trials, shrunk.training.epochs) == (1, 1)


def test_sweep_spec_builds_typed_values_for_digits(compose_config, tmp_path):
    cfg = compose_config("experiment=quick", "data.limit=200", "seed=3", f"paths.root={tmp_path}",
                         "tuner=grid", "tuner.max_trials=4", "training.epochs=1",
                         "sweep.name=mine", "sweep.resume=false", "final_fit.epochs=2")
    spec = sweep_spec(cfg)
    assert isinstance(spec, SweepSpec)
    assert spec.data == DataConfig("digits", val_fraction=0.1, test_fraction=0.2, limit=200)
    assert isinstance(spec.tuner, TunerConfig)
    assert (spec.tuner.name, spec.tuner.max_trials) == (TunerName.grid, 4)
    assert spec.training == TrainingConfig(epochs=1, batch_size=cfg.training.batch_size,
                                           early_stopping_patience=cfg.training
                                           .early_stopping_patience)
    assert spec.search_space == load_space("small")
    assert (spec.seed, spec.name, spec.resume) == (3, "mine", False)
    assert spec.final_fit == FinalFitConfig(enabled=True, epochs=2)
    assert spec.root == str(tmp_path)
    assert spec.directory == tmp_path.resolve() / "sweeps" / "mine"
    # plain containers all the way down: the spec is free of DictConfig
    assert type(spec.search_space) is dict and type(spec.config) is dict
    assert spec.config["tuner"]["name"] == "grid"
    assert isinstance(validate(spec), SearchSpace)


def test_default_sweep_name_carries_data_tuner_seed_and_hash(compose_config):
    spec = sweep_spec(compose_config("seed=1", "tuner=bayesian"))
    assert spec.sweep_name == f"digits-bayesian-seed1-{spec.space_hash[:8]}"
    assert Path(spec.root) == Path("outputs")


@pytest.mark.parametrize("data", ["npz", "image_folder"])
def test_a_data_set_without_its_path_is_a_user_error(compose_config, data):
    with pytest.raises(UserError, match="data.path") as info:
        load_dataset(sweep_spec(compose_config(f"data={data}")).data, seed=0)
    assert "\n" not in str(info.value)


def test_tracking_server_without_uri_is_a_user_error(compose_config, tmp_path):
    cfg = compose_config("tracking=server", f"paths.root={tmp_path}")
    with pytest.raises((UserError, TrackingError), match="tracking.uri"):
        open_store(tracking_spec(cfg))


@pytest.mark.parametrize(("override", "key"), [
    ("training.epochz=1", "epochz"),
    ("tuner.max_trialz=1", "max_trialz"),
    ("training.epochs=abc", "epochs"),
    ("tuner.max_trials=many", "max_trials"),
    ("training.mixed_precision=maybe", "mixed_precision"),
    ("data.name=imagenet", "digits, mnist, fashion_mnist"),
    ("data.color_mode=cmyk", "grayscale, rgb"),
    ("tuner.objective=val_f1", "val_accuracy, accuracy, val_loss, loss"),
    ("tuner.direction=up", "min, max"),
    ("tracking.mode=cloud", "local, server, none"),
])
def test_misspelled_key_or_wrong_type_fails_at_compose_time(compose_config, override, key):
    with pytest.raises((HydraException, OmegaConfBaseException)) as info:
        compose_config(override)
    text = f"{info.value} {info.value.__cause__}"
    assert key in text


def test_unknown_group_option_fails_at_compose_time(compose_config):
    with pytest.raises(HydraException, match="tuner/foo"):
        compose_config("tuner=foo")


@pytest.mark.parametrize("preset", _options("search_space"))
def test_every_search_space_preset_validates(compose_config, preset):
    spec = sweep_spec(compose_config(f"search_space={preset}"))
    space = validate(spec)
    assert set(space.dims) == {*SPACE_KEYS, *(f"augmentation.{k}" for k in AUGMENTATION_KEYS)}
    assert space.max_params == _yaml("search_space", preset).get("max_params")
    assert space.max_blocks >= 1



@pytest.mark.parametrize(("override", "key", "expected"), [
    ("search_space.num_blocks={min:1,max:4}", "num_blocks", {"min": 1, "max": 4}),  # list -> range
    ("search_space.learning_rate=[0.01]", "learning_rate", [0.01]),                 # range -> list
    ("search_space.filters=[8]", "filters", [8]),                                   # list -> list
    ("search_space.learning_rate.max=0.01", "learning_rate",                        # one field
     {"min": 0.001, "max": 0.01, "sampling": "log"}),
])
def test_a_search_space_key_takes_either_form_on_the_command_line(compose_config, override,
                                                                   key, expected):
    cfg = compose_config(*whole_space_values(["search_space=default", override]))
    assert OmegaConf.to_container(cfg.search_space[key]) == expected
    SearchSpace.from_config(OmegaConf.to_container(cfg.search_space, resolve=True))


def test_hydra_alone_cannot_put_a_range_over_a_list(compose_config):
    """Why whole_space_values exists (if Hydra learns it, the rewrite can go)."""
    with pytest.raises((HydraException, OmegaConfBaseException), match="Error merging"):
        compose_config("search_space.num_blocks={min:1,max:4}")


def test_the_recorded_config_masks_a_password_in_the_tracking_uri(compose_config):
    cfg = compose_config("tracking=server", "tracking.uri=http://alice:s3cret@mlflow:5000")
    spec = sweep_spec(cfg)
    assert spec.config["tracking"]["uri"] == "http://***@mlflow:5000"
    assert "s3cret" not in str(spec.config) and "s3cret" not in str(spec.recorded_config)
    assert tracking_spec(cfg).uri == "http://alice:s3cret@mlflow:5000"   # still used to connect
