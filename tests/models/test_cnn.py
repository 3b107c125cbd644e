"""Tests for models.cnn: compile, one real (tiny) training, save and load in safe mode."""

import dataclasses

import keras
import numpy as np
import pytest

from cnnsearch.models.architecture import OPTIMIZERS, Architecture, Augmentation, Block, Head
from cnnsearch.models.cnn import build_model, compile_model, inference_model
from cnnsearch.search.config import DataConfig
from cnnsearch.search.data.datasets import load_dataset
from tests.conftest import run_without_cnnsearch


def _digits_architecture(input_shape=(8, 8, 1), num_classes=10) -> Architecture:
    return Architecture(
        input_shape,
        num_classes,
        (
            Block(filters=32, kernel_size=3, padding="same", pooling="max", pool_size=2),
            Block(filters=32, kernel_size=3, padding="same", pooling="sum", pool_size=2),
        ),
        Head("flatten", dense_units=64),
    )


@pytest.fixture(autouse=True)
def _fresh_session():
    yield
    keras.backend.clear_session()


@pytest.mark.parametrize("optimizer", ["adamax", "Adam", ""])
def test_compile_rejects_unknown_optimizer(optimizer):
    model = build_model(_digits_architecture())
    with pytest.raises(ValueError, match="optimizer must be one of"):
        compile_model(model, optimizer=optimizer)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_compile_and_train_on_batch(optimizer):
    model = compile_model(build_model(_digits_architecture()), optimizer, 1e-3, jit_compile=False)
    assert type(model.optimizer).__name__.lower() == optimizer
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(1e-3)
    rng = np.random.default_rng(0)
    x = rng.random((8, 8, 8, 1), dtype=np.float32)
    y = rng.integers(0, 10, 8).astype("int32")
    logs = model.train_on_batch(x, y, return_dict=True)
    assert set(logs) >= {"loss", "accuracy"}
    assert np.isfinite(logs["loss"])
    probs = model.predict_on_batch(x)
    assert probs.shape == (8, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_tiny_training_on_digits_is_far_above_chance():
    keras.utils.set_random_seed(0)
    data = load_dataset(DataConfig("digits"), seed=0)
    model = build_model(_digits_architecture(data.input_shape, data.num_classes))
    compile_model(model, "adam", 3e-3)
    # 10 epochs (~3 s on 2 cores): 5 epochs reach only 0.83-0.94 depending on the seed.
    model.fit(data.x_train, data.y_train, epochs=10, batch_size=64, verbose=0)
    _, accuracy = model.evaluate(data.x_test, data.y_test, batch_size=256, verbose=0)
    assert accuracy > 0.9  # chance is 0.1


def test_sum_pooling_model_loads_in_safe_mode_without_cnnsearch(tmp_path):
    model = build_model(_digits_architecture())
    path = tmp_path / "model.keras"
    model.save(path)
    x = np.random.default_rng(1).random((4, 8, 8, 1), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", model.predict_on_batch(x))
    result = run_without_cnnsearch("""
        import numpy as np
        import keras

        model = keras.saving.load_model(sys.argv[1], safe_mode=True)
        assert isinstance(model.get_layer("block2_pool"), keras.Sequential)
        got = model.predict_on_batch(np.load(sys.argv[2]))
        expected = np.load(sys.argv[3])
        sys.exit(0 if np.allclose(got, expected, rtol=1e-5, atol=1e-6) else 3)
        """, path, tmp_path / "x.npy", tmp_path / "expected.npy", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


AUGMENTED = Augmentation(flip="horizontal", translate=0.2, zoom=0.1, contrast=0.2)


def test_augmentation_layers_come_first_and_match_the_description():
    arch = dataclasses.replace(_digits_architecture(), augmentation=AUGMENTED)
    model = build_model(arch)
    names = [layer.name for layer in model.layers[1:]]   # after the input
    assert names[:4] == ["augment_flip", "augment_translate", "augment_zoom", "augment_contrast"]
    assert names == [layer.name for layer in arch.layers()]
    assert model.count_params() == arch.params == _digits_architecture().params


def test_augmentation_changes_images_in_training_only():
    arch = dataclasses.replace(_digits_architecture(), augmentation=Augmentation("horizontal"))
    model = build_model(arch)
    x = np.random.default_rng(0).random((64, 8, 8, 1), dtype=np.float32)
    inference = model(x, training=False)
    np.testing.assert_allclose(model.predict_on_batch(x), inference, rtol=1e-5, atol=1e-6)
    # about half the images are mirrored in training, so their outputs change
    changed = np.abs(keras.ops.convert_to_numpy(model(x, training=True) - inference)).max(axis=1)
    assert 10 < (changed > 1e-6).sum() < 54


def test_the_inference_model_drops_augmentation_and_keeps_every_weight(tmp_path):
    arch = dataclasses.replace(_digits_architecture(), augmentation=AUGMENTED)
    model = build_model(arch)
    plain = inference_model(model, arch)
    assert not any(layer.name.startswith("augment_") for layer in plain.layers)
    assert [w.path for w in plain.weights] == [w.path for w in model.weights]
    x = np.random.default_rng(1).random((16, 8, 8, 1), dtype=np.float32)
    np.testing.assert_allclose(plain.predict_on_batch(x), model.predict_on_batch(x),
                               rtol=1e-5, atol=1e-6)
    unaugmented = build_model(_digits_architecture())
    assert inference_model(unaugmented, _digits_architecture()) is unaugmented
    path = tmp_path / "model.keras"
    plain.save(path)
    result = run_without_cnnsearch("""
        import keras

        model = keras.saving.load_model(sys.argv[1], safe_mode=True)
        names = [layer.name for layer in model.layers]
        sys.exit(3 if any(n.startswith("augment_") for n in names) else 0)
        """, path, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
