"""Export the winner in the requested formats, each checked against the trained model.

Everything is written to a temporary folder beside the destination and moved into
place only when every format passed its parity check, so a failed export leaves
nothing half-written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from cnnsearch.models.export import (
    FORMATS,
    QUANTIZE,
    export_model,
    missing_packages,
    onnx_opsets,
    predict_with_runtime,
)
from cnnsearch.models.native_logs import native_logs_hidden
from cnnsearch.search.errors import UserError

log = logging.getLogger(__name__)

FLOAT_TOLERANCE = 1e-4       # max |difference| of probabilities, float32 formats
QUANTIZED_AGREEMENT = 0.99   # top-1 agreement, quantised formats
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ExportSpec:
    """Which formats, where, and how."""

    formats: tuple[str, ...]
    directory: Path
    opset: int = 17
    quantize: str = "none"
    overwrite: bool = False


@dataclass(frozen=True)
class ExportSource:
    """The model to export, a sample to check it on, and where it came from."""

    model: keras.Model
    sample: np.ndarray
    class_names: tuple[str, ...]
    source: str                    # e.g. "models:/m-<id>" (the sweep's logged model)
    run_id: str | None = None
    test_accuracy: float | None = None


def parse_formats(value: str) -> tuple[str, ...]:
    """``"all"``, one format, or a comma-separated list.

    Raises:
        UserError: on an unknown format.
    """
    names = FORMATS if value == "all" else tuple(v.strip() for v in value.split(","))
    for name in names:
        if name not in FORMATS:
            raise UserError(f"export.format {name!r} is unknown; choose from "
                            f"{', '.join(FORMATS)} or all")
    return names


def check_spec(spec: ExportSpec) -> None:
    """Refuse what would fail or overwrite, before any work.

    Raises:
        UserError: bad quantisation, a missing optional package, an ONNX opset the
            converter cannot write, a destination that is a file, or a non-empty
            destination without ``export.overwrite=true``.
    """
    if spec.quantize not in QUANTIZE:
        raise UserError(f"export.quantize {spec.quantize!r} is unknown; choose from "
                        f"{', '.join(QUANTIZE)}")
    for fmt in spec.formats:
        missing = missing_packages(fmt)
        if missing:
            raise UserError(f"export.format={fmt} needs {', '.join(missing)}: "
                            "pip install 'cnnsearch[export]'")
    opsets = onnx_opsets() if "onnx" in spec.formats else None
    if opsets is not None and spec.opset not in opsets:
        raise UserError(f"export.opset {spec.opset} is not supported; choose from "
                        f"{opsets.start} to {opsets.stop - 1}")
    if spec.directory.exists() and not spec.directory.is_dir():
        raise UserError(f"export.dir {spec.directory} is a file, not a folder; "
                        "choose another export.dir")
    if spec.directory.exists() and any(spec.directory.iterdir()):
        if not spec.overwrite:
            raise UserError(f"export.dir {spec.directory} exists and is not empty; "
                            "use export.overwrite=true or another export.dir")
        if not (spec.directory / MANIFEST).exists():  # never wipe a folder we did not write
            raise UserError(f"export.dir {spec.directory} is not a cnnsearch export (no "
                            f"{MANIFEST}); export.overwrite only replaces earlier exports")


def export_winner(source: ExportSource, spec: ExportSpec, write=export_model,
                  predict=predict_with_runtime) -> dict:
    """Write every format, check each against the in-memory model, write the manifest.

    ``write(model, fmt, folder, opset=, quantize=)`` writes one format and returns its
    path; ``predict(fmt, path, x)`` runs it in its own runtime (models.export's, unless
    given).

    Returns:
        The manifest (also written as ``manifest.json`` in the destination).

    Raises:
        UserError: a format's predictions differ beyond tolerance.
    """
    check_spec(spec)
    staging = spec.directory.parent / f".{spec.directory.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        reference = np.asarray(source.model.predict(source.sample, verbose=0))
        files = {fmt: _export_one(source, spec, fmt, staging, reference, write, predict)
                 for fmt in spec.formats}
        manifest = {
            "source": source.source, "run_id": source.run_id,
            "test_accuracy": source.test_accuracy,
            "input_shape": list(source.model.input_shape[1:]),
            "input_name": "image", "input_dtype": "float32",
            "preprocessing": "pixels scaled to [0, 1], channels last",
            "class_names": list(source.class_names),
            "parity_sample": len(source.sample), "files": files,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        bad = {f: r for f, r in files.items() if not r["parity_ok"]}
        if bad:
            fmt, record = next(iter(bad.items()))
            raise UserError(f"export.format={fmt} does not match the trained model: max abs "
                            f"difference {record['max_abs_diff']:.2e}, top-1 agreement "
                            f"{record['top1_agreement']:.2%}; nothing was written")
        if spec.directory.exists():
            shutil.rmtree(spec.directory)
        staging.rename(spec.directory)
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _export_one(source: ExportSource, spec: ExportSpec, fmt: str, folder: Path,
                reference: np.ndarray, write, predict) -> dict:
    started = time.perf_counter()
    quantize = spec.quantize if fmt == "tflite" else "none"
    path = write(source.model, fmt, folder, opset=spec.opset, quantize=quantize)
    seconds = time.perf_counter() - started
    with native_logs_hidden():   # the TFLite runtime announces its CPU delegate
        predicted = predict(fmt, path, source.sample)
    record = parity(reference, predicted, quantize)
    record.update(path=path.name, quantize=quantize, export_seconds=round(seconds, 3),
                  bytes=_size(path), sha256=_sha256(path))
    log.info("export %-11s %s  %8d bytes  max|diff| %.2e  top-1 %.2f%%  %.1fs", fmt, path.name,
             record["bytes"], record["max_abs_diff"], 100 * record["top1_agreement"], seconds)
    return record


def parity(reference: np.ndarray, predicted: np.ndarray, quantize: str = "none") -> dict:
    """Compare an artifact's predictions with the model's.

    Float formats must agree within ``FLOAT_TOLERANCE``; quantised ones must pick the
    same class for at least ``QUANTIZED_AGREEMENT`` of the sample.
    """
    predicted = np.asarray(predicted, dtype="float32").reshape(reference.shape)
    diff = float(np.max(np.abs(predicted - reference)))
    agreement = float(np.mean(predicted.argmax(-1) == reference.argmax(-1)))
    ok = agreement >= QUANTIZED_AGREEMENT if quantize != "none" else diff <= FLOAT_TOLERANCE
    return {"max_abs_diff": diff, "top1_agreement": agreement, "parity_ok": bool(ok)}


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in _files(path))


def _sha256(path: Path) -> str:
    """Of the file, or of a folder's files (relative names and contents, in order)."""
    digest = hashlib.sha256()
    for file in _files(path):
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()
