"""Tracking cost and export time, measured again here so every figure comes from one
machine and one run.

* Tracking: the overhead benchmark's ``none`` and ``local`` variants (our sweep of the
  fixed architecture with and without the MLflow recorder), interleaved. Cost per
  trial = median seconds per trial with tracking=local minus with tracking=none; plus
  creating the recorder (store set-up) and its end of sweep (leaderboard, plots,
  model logging and registration), which happen once per sweep.
* Export: the fixed architecture trained for 2 epochs, then
  ``search.export.export_winner`` with every format whose packages are installed
  (keras, saved_model, onnx, tflite), in that order, in one process, as
  ``cnnsearch export export.format=all`` does: seconds (written + parity-checked: the
  ``export_seconds`` of the manifest covers writing only) and bytes per format.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks import common, overhead
from benchmarks.common import Table, fmt, median, ratio

NAME = "costs"
VARIANTS = ("none", "local", "export")


def export(params: dict) -> dict:
    """Train the fixed architecture briefly and export it in every format (worker)."""
    import keras

    from benchmarks import variants
    from cnnsearch.models.architecture import Architecture, Block, Head
    from cnnsearch.models.cnn import build_model, compile_model
    from cnnsearch.models.export import FORMATS, missing_packages
    from cnnsearch.search.export import ExportSource, ExportSpec, export_winner

    data = variants.digits(params["seed"])
    keras.utils.set_random_seed(params["seed"])
    arch = Architecture(data.input_shape, data.num_classes,
                        (Block(filters=32, kernel_size=3, pooling="max", pool_size=2),),
                        Head(global_pooling="flatten", dense_units=64))
    model = compile_model(build_model(arch), "adam", 1e-3, jit_compile=False)
    model.fit(data.x_train, data.y_train, epochs=params["epochs"], batch_size=32, verbose=0)
    missing = {fmt: missing_packages(fmt) for fmt in FORMATS if missing_packages(fmt)}
    formats = tuple(fmt for fmt in FORMATS if fmt not in missing)
    source = ExportSource(model, data.x_test[:256], data.class_names, "benchmark")
    started = time.perf_counter()
    manifest = export_winner(source, ExportSpec(formats, Path(params["workdir"]) / "export"))
    total = time.perf_counter() - started
    return {"total_seconds": total, "missing": missing, "params": arch.params,
            "formats": {fmt: {k: record[k] for k in ("export_seconds", "bytes", "parity_ok",
                                                     "max_abs_diff", "top1_agreement")}
                        for fmt, record in manifest["files"].items()}}


WORKERS = {**{v: overhead.WORKERS[v] for v in ("none", "local")}, "export": export}


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(NAME, __doc__)
    p.add_argument("--trials", type=int, default=5, help="trials per sweep (default 5)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per trial (default 2)")
    p.add_argument("--repeats", type=int, default=3,
                   help="runs of each variant, interleaved (default 3)")
    p.add_argument("--seed", type=int, default=0)
    return p


def measure(args: argparse.Namespace, out: Path) -> dict:
    if args.tiny:
        args.trials, args.epochs, args.repeats = 2, 1, 1
    params = {"trials": args.trials, "epochs": args.epochs, "batch_size": 32,
              "seed": args.seed}
    runs = common.run_interleaved(NAME, VARIANTS, args.repeats, lambda v, r: params, out)
    summary = overhead.summarise({v: runs[v] for v in ("none", "local")})
    none, local = summary["none"], summary["local"]
    tracking = {
        "per_trial_seconds": local["per_trial_seconds"] - none["per_trial_seconds"],
        "per_trial_ratio": ratio(local["per_trial_seconds"], none["per_trial_seconds"]),
        "setup_seconds": local["setup_seconds"],
        "end_of_sweep_seconds": local["observers_end_seconds"] - none["observers_end_seconds"],
        "total_ratio": ratio(local["total_seconds"], none["total_seconds"]),
    }
    formats = list(runs["export"][0]["formats"])   # in FORMATS order
    exports = {fmt: {
        "seconds": median(run["formats"][fmt]["export_seconds"] for run in runs["export"]),
        "bytes": median(run["formats"][fmt]["bytes"] for run in runs["export"]),
        "parity_ok": all(run["formats"][fmt]["parity_ok"] for run in runs["export"]),
    } for fmt in formats}
    return {"params": {**params, "repeats": args.repeats}, "runs": runs,
            "summary": {"sweeps": summary, "tracking": tracking, "export": exports,
                        "export_total_seconds": median(r["total_seconds"]
                                                       for r in runs["export"]),
                        "export_missing": runs["export"][0]["missing"]}}


def tables(payload: dict) -> list[Table]:
    s, p = payload["summary"], payload["params"]
    t, sweeps = s["tracking"], s["sweeps"]
    tracking_rows = [
        ["seconds per trial, tracking=none", fmt(sweeps["none"]["per_trial_seconds"])],
        ["seconds per trial, tracking=local", fmt(sweeps["local"]["per_trial_seconds"])],
        ["tracking cost per trial (s)", fmt(t["per_trial_seconds"])],
        ["ratio per trial, local / none", fmt(t["per_trial_ratio"])],
        ["recorder set-up, once per sweep (s)", fmt(t["setup_seconds"], 2)],
        ["end of sweep: leaderboard, plots, model logging + registry (s)",
         fmt(t["end_of_sweep_seconds"], 2)],
        ["whole sweep, local / none", fmt(t["total_ratio"])],
    ]
    export_rows = [[fmt_name, fmt(e["seconds"], 2), fmt(int(e["bytes"])),
                    "yes" if e["parity_ok"] else "no"] for fmt_name, e in s["export"].items()]
    export_rows += [[f"{name} (not installed: {', '.join(pkgs)})", "", "", ""]
                    for name, pkgs in s["export_missing"].items()]
    export_rows.append(["all formats, incl. parity checks", fmt(s["export_total_seconds"], 2),
                        "", ""])
    return [
        (f"tracking cost: {p['trials']} trials x {p['epochs']} epochs of the fixed "
         f"architecture, median of {p['repeats']} interleaved runs", ["measure", "value"],
         tracking_rows),
        (f"export time: fixed architecture, median of {p['repeats']} runs",
         ["format", "seconds", "bytes", "parity ok"], export_rows),
    ]


def main(argv: list[str] | None = None) -> int:
    return common.entry(NAME, argv, build_parser(), WORKERS, measure, tables)


if __name__ == "__main__":
    raise SystemExit(main())
