"""MNIST and Fashion-MNIST in their authors' IDX format, read offline.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of
dimensions), one big-endian uint32 per dimension, then the values. The authors ship
four files, often gzipped: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from cnnsearch.search.errors import UserError

FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
         "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
_UBYTE = 0x08


def find_file(folder: Path, name: str) -> Path | None:
    """``folder/name`` or ``folder/name.gz``, whichever exists."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def has_files(folder: Path) -> bool:
    """True if ``folder`` holds all four IDX files (plain or gzipped)."""
    return all(find_file(folder, name) for name in FILES.values())


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """One IDX file of unsigned bytes with ``ndim`` dimensions, as a uint8 array.

    Raises:
        UserError: unreadable, not IDX, another type or rank, or truncated.
    """
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as file:
            raw = file.read()
    except (OSError, EOFError, zlib.error) as exc:   # a damaged .gz: any of the three
        raise UserError(f"cannot read IDX file {path} ({exc})") from exc
    if len(raw) < 4 or raw[:2] != b"\0\0":
        raise UserError(f"{path} is not an IDX file (bad magic number)")
    code, rank = raw[2], raw[3]
    if code != _UBYTE or rank != ndim:
        raise UserError(f"{path}: expected unsigned bytes in {ndim} dimensions, found type "
                        f"0x{code:02x} in {rank}")
    header = 4 + 4 * rank
    if len(raw) < header:
        raise UserError(f"{path} is truncated (header cut short)")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=rank, offset=4))
    size = math.prod(shape)
    if len(raw) - header != size:
        raise UserError(f"{path} is truncated or padded: {'x'.join(map(str, shape))} needs "
                        f"{size:,} bytes of data, found {len(raw) - header:,}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def load_folder(folder: Path, num_classes: int) -> dict[str, np.ndarray]:
    """The four arrays of an IDX folder: x_train, y_train (int32), x_test, y_test.

    Raises:
        UserError: a file is missing or unusable, counts disagree, or a label is out
            of range.
    """
    arrays = {}
    for key, name in FILES.items():
        path = find_file(folder, name)
        if path is None:
            raise UserError(f"{folder} has no {name}[.gz] (an IDX data folder holds "
                            f"{', '.join(FILES.values())})")
        arrays[key] = read_idx(path, 3 if key.startswith("x") else 1)
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(x) != len(y):
            raise UserError(f"{folder}: {len(x)} {split} images but {len(y)} labels")
        if len(y) and y.max() >= num_classes:
            raise UserError(f"{folder}: {split} label {int(y.max())} is out of range "
                            f"0..{num_classes - 1}")
        arrays[f"y_{split}"] = y.astype(np.int32)
    return arrays
