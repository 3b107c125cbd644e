"""Tests for search.data: every source is built offline in tmp_path or bundled with sklearn."""

import gzip
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from cnnsearch.search.config import DataConfig
from cnnsearch.search.data import datasets as data_module
from cnnsearch.search.data.datasets import KERAS_CLASS_NAMES, load_dataset
from cnnsearch.search.errors import UserError

NPZ_LABELS = (3, 5, 7)


def _npz_arrays(n_train: int = 60, n_test: int = 20) -> dict[str, np.ndarray]:
    """Tiny uint8 10x12 images with labels 3, 5, 7 in turn."""
    rng = np.random.default_rng(0)
    labels = np.array(NPZ_LABELS)
    return {
        "x_train": rng.integers(0, 256, (n_train, 10, 12), dtype=np.uint8),
        "y_train": labels[np.arange(n_train) % 3],
        "x_test": rng.integers(0, 256, (n_test, 10, 12), dtype=np.uint8),
        "y_test": labels[np.arange(n_test) % 3],
    }


def _write_npz(tmp_path: Path, **arrays: np.ndarray) -> str:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return str(path)


def _npz_error(tmp_path: Path, **changes: np.ndarray | None) -> str:
    """Message of the UserError raised for the default arrays with `changes` (None drops a key)."""
    arrays = {**_npz_arrays(), **changes}
    path = _write_npz(tmp_path, **{k: v for k, v in arrays.items() if v is not None})
    with pytest.raises(UserError) as info:
        load_dataset(DataConfig("npz", path=path), seed=0)
    return str(info.value)


def _write_images(root: Path, counts: dict[str, int], sizes=((9, 7), (12, 10))) -> Path:
    """PNG files in one folder per class; image i has size sizes[i % len(sizes)] as (w, h)."""
    for c, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = np.full(sizes[i % len(sizes)][::-1] + (3,), 40 * c + i, dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def _assert_same(a, b) -> None:
    for key in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))


# digits ------------------------------------------------------------------------------------


def test_digits_shapes_dtypes_and_splits():
    data = load_dataset(DataConfig("digits"), seed=0)
    assert data.input_shape == (8, 8, 1)
    assert data.num_classes == 10
    assert data.class_names == tuple(str(i) for i in range(10))
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (1293, 144, 360)
    for x in (data.x_train, data.x_val, data.x_test):
        assert x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1
    for y in (data.y_train, data.y_val, data.y_test):
        assert y.dtype == np.int32 and set(np.unique(y)) == set(range(10))


def test_digits_deterministic_under_seed():
    _assert_same(load_dataset(DataConfig("digits"), 1), load_dataset(DataConfig("digits"), 1))
    a, b = load_dataset(DataConfig("digits"), 1), load_dataset(DataConfig("digits"), 2)
    assert not np.array_equal(a.y_test, b.y_test)


def test_digits_fractions():
    data = load_dataset(DataConfig("digits", val_fraction=0.5, test_fraction=0.5), seed=0)
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (449, 449, 899)


def test_limit_shrinks_train_only():
    full = load_dataset(DataConfig("digits"), seed=0)
    small = load_dataset(DataConfig("digits", limit=100), seed=0)
    assert len(small.y_train) == 100
    assert set(np.unique(small.y_train)) == set(range(10))
    np.testing.assert_array_equal(small.x_test, full.x_test)
    np.testing.assert_array_equal(small.y_val, full.y_val)
    assert len(load_dataset(DataConfig("digits", limit=5), seed=0).y_train) == 5
    assert len(load_dataset(DataConfig("digits", limit=10**6), seed=0).y_train) == 1293


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"val_fraction": 0.0}, "data.val_fraction"),
        ({"val_fraction": 1.0}, "data.val_fraction"),
        ({"test_fraction": 1.5}, "data.test_fraction"),
        ({"limit": 0}, "data.limit"),
        ({"image_size": (0, 8)}, "data.image_size"),
    ],
)
def test_bad_spec_values_name_the_key(changes, key):
    with pytest.raises(UserError, match=key):
        load_dataset(DataConfig("digits", **changes), seed=0)


# npz ---------------------------------------------------------------------------------------


def test_npz_shapes_scaling_and_label_remap(tmp_path):
    arrays = _npz_arrays()
    data = load_dataset(DataConfig("npz", path=_write_npz(tmp_path, **arrays)), seed=0)
    assert data.input_shape == (10, 12, 1)
    assert data.class_names == ("3", "5", "7")
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (54, 6, 20)
    assert set(np.unique(data.y_val)) == {0, 1, 2}
    np.testing.assert_array_equal(data.y_test, np.searchsorted(NPZ_LABELS, arrays["y_test"]))
    np.testing.assert_allclose(data.x_test[..., 0], arrays["x_test"] / 255, atol=1e-6)


def test_npz_floats_outside_unit_range_divided_by_train_max(tmp_path):
    arrays = _npz_arrays()
    arrays["x_train"] = arrays["x_train"].astype(np.float64) * 2  # max abs 510 or less
    arrays["x_test"] = np.full((20, 10, 12, 1), 100.0)
    data = load_dataset(DataConfig("npz", path=_write_npz(tmp_path, **arrays)), seed=0)
    np.testing.assert_allclose(data.x_test, 100.0 / arrays["x_train"].max())
    assert data.x_train.max() <= 1 and data.x_train.dtype == np.float32


def test_npz_floats_in_unit_range_unchanged(tmp_path):
    arrays = {**_npz_arrays(), "x_test": np.full((20, 10, 12), 0.25, dtype=np.float32)}
    arrays["x_train"] = arrays["x_train"] / 255.0
    data = load_dataset(DataConfig("npz", path=_write_npz(tmp_path, **arrays)), seed=0)
    np.testing.assert_allclose(data.x_test, 0.25)


@pytest.mark.parametrize("path", [None, ""])
def test_npz_path_required(path):
    with pytest.raises(UserError, match="data.path is required for data=npz"):
        load_dataset(DataConfig("npz", path=path), seed=0)


def test_npz_file_missing(tmp_path):
    with pytest.raises(UserError, match="nope.npz"):
        load_dataset(DataConfig("npz", path=str(tmp_path / "nope.npz")), seed=0)


@pytest.mark.parametrize("content", [b"", b"not an npz file", b"PK\x03\x04broken zip"])
def test_npz_invalid_file(tmp_path, content):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(UserError, match="not a valid .npz"):
        load_dataset(DataConfig("npz", path=str(path)), seed=0)


def test_npz_single_npy_array(tmp_path):
    path = tmp_path / "array.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(UserError, match=".npy"):
        load_dataset(DataConfig("npz", path=str(path)), seed=0)


def test_npz_missing_key_named(tmp_path):
    message = _npz_error(tmp_path, y_test=None)
    assert "missing key(s) y_test" in message
    assert "x_train, y_train, x_test, y_test" in message


def test_npz_length_mismatch(tmp_path):
    message = _npz_error(tmp_path, y_train=np.zeros(59, dtype=int))
    assert "length" in message and "train" in message and "60" in message and "59" in message


def test_npz_single_class(tmp_path):
    message = _npz_error(tmp_path, y_train=np.full(60, 4), y_test=np.full(20, 4))
    assert "at least 2 classes" in message


def test_npz_test_label_not_in_train(tmp_path):
    message = _npz_error(tmp_path, y_test=np.full(20, 9))
    assert "not present in y_train" in message and "9" in message


def test_npz_bad_shapes(tmp_path):
    assert "(N, H, W)" in _npz_error(tmp_path, x_train=np.zeros((60, 120)))
    assert "1-D" in _npz_error(tmp_path, y_train=np.zeros((60, 3)))
    assert "x_test images" in _npz_error(tmp_path, x_test=np.zeros((20, 12, 10)))


def test_npz_column_labels_flattened(tmp_path):
    arrays = _npz_arrays()
    arrays["y_train"] = arrays["y_train"].reshape(-1, 1)
    data = load_dataset(DataConfig("npz", path=_write_npz(tmp_path, **arrays)), seed=0)
    assert data.y_train.ndim == 1 and data.num_classes == 3


def test_npz_deterministic(tmp_path):
    spec = DataConfig("npz", path=_write_npz(tmp_path, **_npz_arrays()))
    _assert_same(load_dataset(spec, 3), load_dataset(spec, 3))
    assert not np.array_equal(load_dataset(spec, 3).x_val, load_dataset(spec, 4).x_val)


# image_folder ------------------------------------------------------------------------------


def test_image_folder_grayscale_resized(tmp_path):
    root = _write_images(tmp_path / "imgs", {"cats": 10, "dogs": 10, "owls": 10})
    data = load_dataset(DataConfig("image_folder", path=str(root), image_size=(6, 5)), seed=0)
    assert data.input_shape == (6, 5, 1)
    assert data.class_names == ("cats", "dogs", "owls")
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (21, 3, 6)
    assert set(np.unique(data.y_test)) == {0, 1, 2}
    assert data.x_train.dtype == np.float32 and 0 <= data.x_train.min() <= data.x_train.max() <= 1


def test_image_folder_rgb_size_of_first_image(tmp_path):
    root = _write_images(tmp_path / "imgs", {"b": 6, "a": 6})
    (root / "a" / "notes.txt").write_text("not an image")
    data = load_dataset(DataConfig("image_folder", path=str(root), color_mode="rgb"), seed=0)
    assert data.input_shape == (7, 9, 3)
    assert data.class_names == ("a", "b")
    assert len(data.y_train) + len(data.y_val) + len(data.y_test) == 12


def test_image_folder_pixel_values(tmp_path):
    root = _write_images(tmp_path / "imgs", {"a": 5, "b": 5}, sizes=((4, 4),))
    data = load_dataset(DataConfig("image_folder", path=str(root), color_mode="rgb"), seed=0)
    x = np.concatenate([data.x_train, data.x_val, data.x_test])
    y = np.concatenate([data.y_train, data.y_val, data.y_test])
    values = sorted(zip(y.tolist(), (x[:, 0, 0, 0] * 255).round().tolist(), strict=True))
    assert values == [(0, v) for v in range(5)] + [(1, 40 + v) for v in range(5)]


def test_image_folder_empty_class_named(tmp_path):
    root = _write_images(tmp_path / "imgs", {"a": 4, "b": 4})
    (root / "empty").mkdir()
    with pytest.raises(UserError, match="empty has no images"):
        load_dataset(DataConfig("image_folder", path=str(root)), seed=0)


def test_image_folder_single_class(tmp_path):
    root = _write_images(tmp_path / "imgs", {"only": 4})
    with pytest.raises(UserError, match="at least 2 class"):
        load_dataset(DataConfig("image_folder", path=str(root)), seed=0)


def test_image_folder_no_class_folders(tmp_path):
    with pytest.raises(UserError, match="no class sub-folders"):
        load_dataset(DataConfig("image_folder", path=str(tmp_path)), seed=0)


def test_image_folder_missing_dir_and_path(tmp_path):
    with pytest.raises(UserError, match="not a directory"):
        load_dataset(DataConfig("image_folder", path=str(tmp_path / "missing")), seed=0)
    with pytest.raises(UserError, match="data.path is required"):
        load_dataset(DataConfig("image_folder"), seed=0)


def test_image_folder_unreadable_image_named(tmp_path):
    root = _write_images(tmp_path / "imgs", {"a": 4, "b": 4})
    (root / "b" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="broken.png"):
        load_dataset(DataConfig("image_folder", path=str(root)), seed=0)


# keras datasets ----------------------------------------------------------------------------


def _no_network():
    raise Exception("URL fetch failure on https://example.invalid/data: None")


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_data_set_nowhere_names_every_way_to_get_it(monkeypatch, tmp_path, name):
    monkeypatch.setattr(getattr(keras.datasets, name), "load_data", _no_network)
    monkeypatch.setitem(data_module.SYSTEM_FOLDERS, "fashion_mnist", tmp_path / "empty")
    with pytest.raises(UserError) as info:
        load_dataset(DataConfig(name), seed=0)
    message = str(info.value)
    assert "\n" not in message
    for words in (f"data={name}", "data.path=FOLDER", "train-images-idx3-ubyte",
                  "~/.keras/datasets", "URL fetch failure"):
        assert words in message
    assert ("apt-get install dataset-fashion-mnist" in message) == (name == "fashion_mnist")


def _write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    blob = (bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes()
            + array.astype(np.uint8).tobytes())
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(blob))
    else:
        path.write_bytes(blob)
    return path


def _idx_folder(folder: Path, n_train: int = 60, n_test: int = 20, gz: bool = False) -> Path:
    """Tiny MNIST-like IDX files: 6x6 images whose mean brightness encodes the label."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = np.repeat(labels[:, None, None] * 25, 36, axis=1).reshape(n, 6, 6)
        _write_idx(folder / f"{split}-images-idx3-ubyte", images, gz)
        _write_idx(folder / f"{split}-labels-idx1-ubyte", labels, gz)
    return folder


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzipped"])
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_files_from_data_path(tmp_path, name, gz):
    folder = _idx_folder(tmp_path / "idx", gz=gz)
    data = load_dataset(DataConfig(name, path=str(folder)), seed=0)
    assert data.input_shape == (6, 6, 1)
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (54, 6, 20)
    assert data.x_train.dtype == np.float32 and data.x_train.max() <= 1.0
    # the pixels still carry their label: nothing was shuffled apart
    np.testing.assert_allclose(data.x_test[:, 0, 0, 0] * 255, data.y_test * 25, atol=1e-3)
    assert data.class_names == KERAS_CLASS_NAMES[name]


def test_fashion_mnist_from_the_system_folder_before_keras(monkeypatch, tmp_path):
    monkeypatch.setitem(data_module.SYSTEM_FOLDERS, "fashion_mnist", _idx_folder(tmp_path / "d"))
    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", _no_network)
    data = load_dataset(DataConfig("fashion_mnist", limit=20), seed=0)
    assert len(data.y_train) == 20 and len(data.y_test) == 20


@pytest.mark.skipif(not data_module.SYSTEM_FOLDERS["fashion_mnist"].is_dir(),
                    reason="apt-get install dataset-fashion-mnist (.ci/run installs it)")
def test_the_real_fashion_mnist_from_debians_package():
    data = load_dataset(DataConfig("fashion_mnist", limit=1000), seed=0)
    assert data.input_shape == (28, 28, 1)
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (1000, 6000, 10000)
    assert np.bincount(data.y_test).tolist() == [1000] * 10


def _corrupt(folder: Path, how: str) -> str:
    images = folder / "train-images-idx3-ubyte"
    if how == "magic":
        images.write_bytes(b"PK\x03\x04" + images.read_bytes()[4:])
        return "not an IDX file"
    if how == "truncated":
        images.write_bytes(images.read_bytes()[:-7])
        return "truncated"
    if how == "rank":
        _write_idx(images, np.zeros((60, 36)))
        return "expected unsigned bytes in 3 dimensions"
    if how == "count":
        _write_idx(folder / "train-labels-idx1-ubyte", np.arange(59) % 10)
        return "60 train images but 59 labels"
    if how == "label":
        _write_idx(folder / "t10k-labels-idx1-ubyte", np.full(20, 12))
        return "label 12 is out of range 0..9"
    if how == "missing":
        (folder / "t10k-labels-idx1-ubyte").unlink()
        return "has no t10k-labels-idx1-ubyte[.gz]"
    if how == "bad gzip":
        images.unlink()
        (folder / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08 not gzip at all")
        return "cannot read IDX file"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["magic", "truncated", "rank", "count", "label", "missing",
                                 "bad gzip"])
def test_corrupt_idx_files_are_one_line_errors(tmp_path, how):
    folder = _idx_folder(tmp_path / "idx")
    words = _corrupt(folder, how)
    with pytest.raises(UserError) as info:
        load_dataset(DataConfig("fashion_mnist", path=str(folder)), seed=0)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_idx_data_path_that_is_not_a_folder(tmp_path):
    with pytest.raises(UserError, match="is not a folder"):
        load_dataset(DataConfig("mnist", path=str(tmp_path / "nope")), seed=0)


def test_keras_cifar10_labels_flattened_and_named(monkeypatch):
    rng = np.random.default_rng(0)

    def fake_load_data():
        x = rng.integers(0, 256, (50, 4, 4, 3), dtype=np.uint8)
        return (x, (np.arange(50) % 10).reshape(-1, 1)), (x[:20], (np.arange(20) % 10)[:, None])

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", fake_load_data)
    data = load_dataset(DataConfig("cifar10"), seed=0)
    assert data.input_shape == (4, 4, 3)
    assert data.y_train.shape == (45,) and data.y_test.shape == (20,)
    assert data.class_names[0] == "airplane" and data.num_classes == 10


def test_the_digest_names_the_data_not_the_object():
    first = load_dataset(DataConfig("digits", limit=100), seed=0)
    assert first.digest() == load_dataset(DataConfig("digits", limit=100), seed=0).digest()
    assert first.digest() != load_dataset(DataConfig("digits", limit=100), seed=1).digest()
    assert first.profile() == {"train": len(first.x_train), "val": len(first.x_val),
                               "test": len(first.x_test), "image_shape": [8, 8, 1],
                               "classes": list(first.class_names)}
