"""The training recipe around the search: the default candidate first, the learning rate
dropping on a plateau, the cosine final fit (real tiny sweeps)."""

from __future__ import annotations

import pytest

from cnnsearch.search.sweep import run_sweep

# Two values per key, the first one differing from what the small preset lists first.
SPACE = dict(num_blocks=[2, 1], filters=[16, 8], pooling=["avg", "max", "sum"],
             dense_units=[32, 0])


def _blocks_and_head(candidate) -> tuple:
    arch = candidate.architecture
    return ([(b.filters, b.pooling) for b in arch.blocks], arch.head.dense_units)


def test_the_first_trial_is_the_default_candidate_and_not_drawn_again(make_spec, small_space,
                                                                       recorder):
    spec = make_spec({**small_space, **SPACE}, tuner={"max_trials": 6},
                     final_fit={"enabled": False})
    run_sweep(spec, [recorder])

    shapes = [_blocks_and_head(candidate) for _, _, candidate in recorder.of("trial_started")]
    assert shapes[0] == ([(16, "avg"), (16, "avg")], 32)
    assert shapes[0] not in shapes[1:]
    assert len(set(map(str, shapes))) == 6   # then random draws, none repeated


def test_without_start_from_defaults_the_first_trial_is_a_random_draw(make_spec, small_space,
                                                                      recorder):
    spec = make_spec({**small_space, **SPACE},
                     tuner={"max_trials": 1, "start_from_defaults": False},
                     final_fit={"enabled": False})
    run_sweep(spec, [recorder])

    (_, _, candidate), = recorder.of("trial_started")
    assert _blocks_and_head(candidate) != ([(16, "avg"), (16, "avg")], 32)


def test_an_infeasible_default_candidate_is_skipped_for_a_random_one(make_spec, small_space,
                                                                     recorder):
    # 2 blocks of 7x7 'valid' convolutions cannot fit 8x8 digits; 1 block of 3x3 can
    space = {**small_space, "num_blocks": [2, 1], "kernel_size": [7, 3], "padding": ["valid"],
             "dense_units": [0]}
    spec = make_spec(space, tuner={"max_trials": 1}, final_fit={"enabled": False})
    result, _ = run_sweep(spec, [recorder])

    first_skip = recorder.of("candidate_skipped")[0][1]
    assert (first_skip["num_blocks"], first_skip["block1_kernel_size"]) == (2, 7)
    assert result.n_completed == 1


@pytest.mark.parametrize("patience", [1, None])
def test_the_learning_rate_drops_when_the_objective_stalls(make_spec, small_space, recorder,
                                                          patience):
    # a rate so small that the weights never change: val_accuracy stays where it starts
    space = {**small_space, "learning_rate": [1e-9], "num_blocks": [1]}
    spec = make_spec(space, tuner={"max_trials": 1}, final_fit={"enabled": False},
                     training={"epochs": 4, "reduce_lr_patience": patience,
                               "reduce_lr_factor": 0.5})
    run_sweep(spec, [recorder])

    rates = [logs.get("learning_rate") for _, _, logs in recorder.of("epoch_ended")]
    if patience is None:
        assert rates == [None] * 4
    else:   # logged per epoch: the rate that epoch trained with
        assert rates == pytest.approx([1e-9, 1e-9, 5e-10, 2.5e-10], rel=1e-5)


@pytest.mark.parametrize(("schedule", "final_rate"), [("cosine", 0.0), ("constant", 0.003)])
def test_the_final_fit_decays_the_learning_rate_to_zero_on_a_cosine(make_spec, small_space,
                                                                    schedule, final_rate):
    spec = make_spec({**small_space, "num_blocks": [1]}, tuner={"max_trials": 1},
                     final_fit={"epochs": 2, "schedule": schedule})
    _, model = run_sweep(spec)

    assert float(model.optimizer.learning_rate) == pytest.approx(final_rate, abs=1e-7)
