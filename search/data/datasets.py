"""Load image classification data as float32 NHWC arrays in [0, 1] with int32 labels 0..K-1."""

import hashlib
import logging
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from cnnsearch.search.config import DataConfig
from cnnsearch.search.data import idx
from cnnsearch.search.errors import UserError, first_line

if TYPE_CHECKING:
    from PIL.Image import Image

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
NPZ_KEYS: tuple[str, ...] = ("x_train", "y_train", "x_test", "y_test")
# Where a system package installs a data set's IDX files (read before asking Keras).
SYSTEM_PACKAGES = {"fashion_mnist": "dataset-fashion-mnist"}
SYSTEM_FOLDERS = {"fashion_mnist": Path("/usr/share/datasets/fashion-mnist")}
KERAS_CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "mnist": tuple(str(i) for i in range(10)),
    "fashion_mnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
    "cifar10": (
        "airplane", "automobile", "bird", "cat", "deer",
        "dog", "frog", "horse", "ship", "truck",
    ),
}  # fmt: skip


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train/validation/test splits: x float32 NHWC in [0, 1], y int32 in 0..K-1."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one example as (height, width, channels)."""
        height, width, channels = self.x_train.shape[1:]
        return int(height), int(width), int(channels)

    @property
    def num_classes(self) -> int:
        """Number of classes K."""
        return len(self.class_names)

    def digest(self) -> str:
        """12 hex digits of a SHA-256 over every split: the same data, the same digest."""
        sha = hashlib.sha256()
        for array in (self.x_train, self.y_train, self.x_val, self.y_val, self.x_test,
                      self.y_test):
            sha.update(np.ascontiguousarray(array).data)
        return sha.hexdigest()[:12]

    def profile(self) -> dict:
        """Split sizes, image shape and classes (what a record of the data set shows)."""
        return {"train": len(self.x_train), "val": len(self.x_val), "test": len(self.x_test),
                "image_shape": list(self.input_shape), "classes": list(self.class_names)}


@dataclass(frozen=True)
class _Loaded:
    """A source's train and test data, labels already encoded as 0..K-1."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]


def load_dataset(config: DataConfig, seed: int) -> Dataset:
    """Load, scale and split the data described by `config`, deterministically under `seed`.

    Raises:
        UserError: the config or the data on disk is unusable, or a download failed.
    """
    config.validate()
    loaded = _LOADERS[config.name](config, seed)
    x_train, x_test = _to_unit_range(_with_channel(loaded.x_train), _with_channel(loaded.x_test))
    x_train, x_val, y_train, y_val = _split(
        x_train, loaded.y_train, config.val_fraction, seed, "data.val_fraction"
    )
    if config.limit is not None and config.limit < len(y_train):
        _, x_train, _, y_train = _split(x_train, y_train, config.limit, seed, "data.limit")
    data = Dataset(x_train, y_train, x_val, y_val, x_test, loaded.y_test, loaded.class_names)
    logger.info(
        "data=%s: train %s, val %s, test %s, %d classes (%s)",
        config.name,
        x_train.shape,
        x_val.shape,
        x_test.shape,
        data.num_classes,
        ", ".join(data.class_names),
    )
    return data


def _split(
    x: np.ndarray, y: np.ndarray, size: float | int, seed: int, key: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split off `size` (fraction or count) of (x, y), stratified by y when the classes allow.

    Returns:
        x_rest, x_part, y_rest, y_part.
    """
    try:
        return train_test_split(x, y, test_size=size, random_state=seed, stratify=y)
    except ValueError as exc:
        logger.warning("%s: cannot stratify (%s); splitting without stratification", key, exc)
    try:
        return train_test_split(x, y, test_size=size, random_state=seed)
    except ValueError as exc:
        raise UserError(f"{key}={size}: cannot split {len(y)} examples ({exc})") from exc


def _with_channel(x: np.ndarray) -> np.ndarray:
    """Add a trailing channel axis to (N, H, W) images."""
    return x[..., np.newaxis] if x.ndim == 3 else x


def _to_unit_range(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Convert both arrays to float32 scaled by one factor derived from the training set."""
    scale = _scale_factor(x_train)
    return (x_train.astype(np.float32) / scale), (x_test.astype(np.float32) / scale)


def _scale_factor(x_train: np.ndarray) -> float:
    """255 for uint8-like integers, 1 for floats already in [0, 1], else the max abs value."""
    low, high = float(x_train.min()), float(x_train.max())
    if np.issubdtype(x_train.dtype, np.integer) and low >= 0 and high <= 255:
        return 255.0
    if low >= 0 and high <= 1:
        return 1.0
    return max(abs(low), abs(high))


def _load_digits(config: DataConfig, seed: int) -> _Loaded:
    """sklearn's bundled 8x8 digits (values 0..16), split into train and test."""
    digits = load_digits()
    x, y = digits.images / 16.0, digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = _split(x, y, config.test_fraction, seed,
                                              "data.test_fraction")
    return _Loaded(x_train, y_train, x_test, y_test, tuple(str(i) for i in range(10)))


def _load_keras(config: DataConfig, seed: int) -> _Loaded:
    """A keras.datasets dataset with its own test split (downloaded once, then cached)."""
    try:
        (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, config.name).load_data()
    except Exception as exc:  # offline downloads fail with URL, OS or plain Exceptions
        raise UserError(
            f"data={config.name} needs internet or a cached copy in ~/.keras/datasets "
            f"(download failed: {_short_reason(exc)}); "
            "use data=digits (bundled) or data=npz data.path=FILE"
        ) from exc
    return _Loaded(
        x_train,
        y_train.reshape(-1).astype(np.int32),
        x_test,
        y_test.reshape(-1).astype(np.int32),
        KERAS_CLASS_NAMES[config.name],
    )


def _load_idx(config: DataConfig, seed: int) -> _Loaded:
    """MNIST or Fashion-MNIST from the authors' IDX files, the first source found.

    ``data.path`` (a folder) when given; else the folder a system package installs
    (Debian's ``dataset-fashion-mnist``); else ``keras.datasets``, which reads its cache
    in ~/.keras/datasets or downloads.
    """
    class_names = KERAS_CLASS_NAMES[config.name]
    system = SYSTEM_FOLDERS.get(config.name)
    if config.path:
        folder = Path(config.path).expanduser()
        if not folder.is_dir():
            raise UserError(f"data.path {folder} is not a folder (data={config.name} reads the "
                            f"IDX files {', '.join(idx.FILES.values())} in it)")
    elif system is not None and idx.has_files(system):
        folder = system
    else:
        try:
            return _load_keras(config, seed)
        except UserError as exc:
            raise UserError(_where_to_get(config.name, exc.__cause__)) from exc.__cause__
    arrays = idx.load_folder(folder, len(class_names))
    logger.info("data=%s: IDX files in %s", config.name, folder)
    return _Loaded(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                   class_names)


def _where_to_get(name: str, download_error: BaseException | None) -> str:
    """One line naming every way to give cnnsearch this data set offline."""
    ways = [f"data.path=FOLDER holding its IDX files ({', '.join(idx.FILES.values())}, "
            "plain or .gz)"]
    if name in SYSTEM_PACKAGES:
        ways.append(f"`apt-get install {SYSTEM_PACKAGES[name]}` (puts them in "
                    f"{SYSTEM_FOLDERS[name]})")
    ways.append("a Keras cache in ~/.keras/datasets (filled by keras.datasets when online; "
                f"download failed: {_short_reason(download_error or Exception('unknown'))})")
    return f"data={name}: no data found; give " + ", or ".join(ways)


def _short_reason(exc: Exception, max_chars: int = 160) -> str:
    """First line of an exception message, shortened to fit in a one-line error."""
    text = first_line(str(exc)) or type(exc).__name__
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


def _required_path(config: DataConfig) -> Path:
    """config.path as a Path, or a UserError when it is not set."""
    if not config.path:
        raise UserError(f"data.path is required for data={config.name}")
    return Path(config.path).expanduser()


def _load_npz(config: DataConfig, seed: int) -> _Loaded:
    """A user .npz file with x_train, y_train, x_test, y_test (like keras' mnist.npz)."""
    path = _required_path(config)
    if not path.is_file():
        raise UserError(f"data.path {path} does not exist (data=npz needs a .npz file)")
    arrays = _read_npz(path)
    x_train, y_train = _checked_split(arrays, "train", path)
    x_test, y_test = _checked_split(arrays, "test", path)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise UserError(
            f"{path}: x_test images have shape {x_test.shape[1:]} "
            f"but x_train images have {x_train.shape[1:]}"
        )
    return _encode_labels(x_train, y_train, x_test, y_test, path)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The required arrays of an .npz file; UserError if unreadable or keys are missing."""
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path} is not a valid .npz file ({_short_reason(exc)})") from exc
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise UserError(f"{path} is a single .npy array, not an .npz file with {NPZ_KEYS}")
    with npz:
        missing = [key for key in NPZ_KEYS if key not in npz.files]
        if missing:
            raise UserError(
                f"{path} is missing key(s) {', '.join(missing)}; "
                f"required keys: {', '.join(NPZ_KEYS)}"
            )
        try:
            return {key: npz[key] for key in NPZ_KEYS}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise UserError(f"{path} is not a valid .npz file ({_short_reason(exc)})") from exc


def _checked_split(
    arrays: dict[str, np.ndarray], split: str, path: Path
) -> tuple[np.ndarray, np.ndarray]:
    """x and y of one split in NHWC and 1-D form; UserError on bad shapes or lengths."""
    x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
    if x.ndim not in (3, 4):
        raise UserError(
            f"{path}: x_{split} must have shape (N, H, W) or (N, H, W, C), got {x.shape}"
        )
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.reshape(-1)
    if y.ndim != 1:
        raise UserError(f"{path}: y_{split} must be a 1-D array of class labels, got {y.shape}")
    if len(x) != len(y):
        raise UserError(
            f"{path}: {split} split length mismatch: "
            f"x_{split} has {len(x)} examples, y_{split} has {len(y)}"
        )
    if len(x) == 0:
        raise UserError(f"{path}: x_{split} is empty")
    for name, array in ((f"x_{split}", x), (f"y_{split}", y)):
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
            raise UserError(f"{path}: {name} must hold numbers, got dtype {array.dtype}")
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            bad = int(np.size(array) - np.isfinite(array).sum())
            raise UserError(f"{path}: {name} has {bad} NaN or infinite value(s)")
    if np.issubdtype(y.dtype, np.floating) and not np.array_equal(y, np.round(y)):
        example = y[y != np.round(y)][0]
        raise UserError(f"{path}: y_{split} must hold integer class labels, got {example:g}")
    return _with_channel(x), y


def _encode_labels(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, path: Path
) -> _Loaded:
    """Map the training labels' distinct values to 0..K-1, named by their original values."""
    classes = np.unique(y_train)
    if len(classes) < 2:
        raise UserError(f"{path}: y_train needs at least 2 classes, found {len(classes)}")
    unknown = np.setdiff1d(np.unique(y_test), classes)
    if unknown.size:
        raise UserError(
            f"{path}: y_test has labels not present in y_train: {unknown[:10].tolist()}"
        )
    return _Loaded(
        x_train,
        np.searchsorted(classes, y_train).astype(np.int32),
        x_test,
        np.searchsorted(classes, y_test).astype(np.int32),
        tuple(str(c) for c in classes.tolist()),
    )


def _load_image_folder(config: DataConfig, seed: int) -> _Loaded:
    """Images in one sub-folder per class under data.path, split into train and test."""
    class_dirs = _class_dirs(_required_path(config))
    files: list[Path] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        images = _image_files(class_dir)
        files += images
        labels += [label] * len(images)
    size = config.image_size or _image_size(files[0])
    x = np.stack([_read_image(file, config.color_mode, size) for file in files])
    y = np.array(labels, dtype=np.int32)
    x_train, x_test, y_train, y_test = _split(x, y, config.test_fraction, seed,
                                              "data.test_fraction")
    return _Loaded(x_train, y_train, x_test, y_test, tuple(d.name for d in class_dirs))


def _class_dirs(root: Path) -> list[Path]:
    """The sorted, non-hidden sub-folders of root; UserError unless there are at least 2."""
    if not root.is_dir():
        raise UserError(f"data.path {root} is not a directory (data=image_folder needs one)")
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise UserError(f"data.path {root} has no class sub-folders (one folder per class)")
    if len(dirs) < 2:
        raise UserError(
            f"data.path {root} needs at least 2 class sub-folders, found only {dirs[0].name}"
        )
    return dirs


def _image_files(class_dir: Path) -> list[Path]:
    """The sorted image files of one class folder; UserError if there are none."""
    files = sorted(
        p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise UserError(f"class folder {class_dir} has no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def _image_size(file: Path) -> tuple[int, int]:
    """(height, width) of an image file."""
    width, height = _open_image(file, "rgb", None).size
    return height, width


def _read_image(file: Path, color_mode: str, size: tuple[int, int]) -> np.ndarray:
    """One image as a uint8 (H, W, C) array resized to `size`."""
    return keras.utils.img_to_array(_open_image(file, color_mode, size), dtype="uint8")


def _open_image(file: Path, color_mode: str, size: tuple[int, int] | None) -> "Image":
    """keras.utils.load_img with a UserError naming the file if it cannot be read."""
    try:
        return keras.utils.load_img(file, color_mode=color_mode, target_size=size)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read image {file} ({_short_reason(exc)})") from exc


_LOADERS: dict[str, Callable[[DataConfig, int], _Loaded]] = {
    "digits": _load_digits,
    "mnist": _load_idx,
    "fashion_mnist": _load_idx,
    "cifar10": _load_keras,
    "npz": _load_npz,
    "image_folder": _load_image_folder,
}
