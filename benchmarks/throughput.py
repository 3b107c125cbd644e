"""Training throughput: images/second in a trial's fit vs a bare ``model.fit``.

The fixed benchmark architecture (benchmarks.variants.FIXED) trains for E epochs on
the digits training split, with validation after each epoch, same batch size:

* ``bare``: ``inline_model`` compiled and fitted directly, a callback stamping epochs;
* ``sweep``: one trial of our sweep (``SweepTuner``: keras-tuner, our callbacks,
  checkpointing of the best epoch), epochs stamped by the last sweep observer;
* ``sweep_jit``: the same with ``training.jit_compile=true`` (XLA);
* ``sweep_mixed``: the same with ``training.mixed_precision=true`` (float16 compute).

Steady state = the median epoch time over epochs 2..E (the first epoch, which
traces and compiles the step functions, is excluded and reported on its own as
"first epoch"; for the sweep it also holds building the model). images/second =
training images / steady epoch time (validation is inside every epoch on both
sides). Each run is a fresh process; variants alternate. The Keras backend and
devices come from inside the workers (``KERAS_BACKEND``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks import common
from benchmarks.common import Table, fmt, median, ratio, verdict

NAME = "throughput"
VARIANTS = ("bare", "sweep", "sweep_jit", "sweep_mixed")
TARGET = 0.97


def _device() -> dict:
    import keras

    try:
        devices = keras.distribution.list_devices()
    except (RuntimeError, ValueError):
        devices = []
    return {"backend": keras.backend.backend(), "devices": devices}


def _steady(epoch_seconds: list[float], images: int) -> dict:
    steady = median(epoch_seconds[1:])
    return {"epoch_seconds": epoch_seconds, "first_epoch_seconds": epoch_seconds[0],
            "steady_epoch_seconds": steady, "images_per_second": ratio(images, steady),
            "compile_seconds": epoch_seconds[0] - steady, "train_images": images}


def bare(params: dict) -> dict:
    """``model.fit`` of the inline model (worker)."""
    import keras

    from benchmarks import variants

    data = variants.digits(params["seed"])
    keras.utils.set_random_seed(params["seed"])
    model = variants.compile_plain(variants.inline_model(data.input_shape, data.num_classes))
    ends: list[float] = []
    stamp = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: ends.append(time.perf_counter()))
    started = time.perf_counter()
    model.fit(data.x_train, data.y_train, validation_data=(data.x_val, data.y_val),
              epochs=params["epochs"], batch_size=params["batch_size"], callbacks=[stamp],
              verbose=0)
    seconds = [b - a for a, b in zip([started, *ends], ends, strict=False)]
    return {**_steady(seconds, len(data.x_train)), **_device()}


def sweep(params: dict, jit: bool = False, mixed: bool = False) -> dict:
    """One trial of our sweep (worker)."""
    from benchmarks import variants

    overrides = [*variants.fixed_overrides(1), "search_space.learning_rate=[0.001]",
                 "tuner=random", "tuner.max_trials=1", f"seed={params['seed']}",
                 f"training.epochs={params['epochs']}",
                 f"training.batch_size={params['batch_size']}",
                 "training.early_stopping_patience=null",
                 f"training.jit_compile={str(jit).lower()}",
                 f"training.mixed_precision={str(mixed).lower()}",
                 "final_fit.enabled=false", "tracking=none"]
    run = variants.run_ours(overrides, variants.workdir(params, "root"))
    ends = next(iter(run["epochs"].values()))
    seconds = [b - a for a, b in zip([0.0, *ends], ends, strict=False)]
    trial = run["trials"][0]
    return {**_steady(seconds, run["train_images"]), **_device(),
            "outcome_images_per_second": trial["images_per_second"]}


WORKERS = {"bare": bare, "sweep": sweep, "sweep_jit": lambda p: sweep(p, jit=True),
           "sweep_mixed": lambda p: sweep(p, mixed=True)}


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(NAME, __doc__)
    p.add_argument("--epochs", type=int, default=12, help="epochs per run (default 12)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5,
                   help="runs of each variant, interleaved (default 5)")
    p.add_argument("--seed", type=int, default=0)
    return p


def measure(args: argparse.Namespace, out: Path) -> dict:
    if args.tiny:
        args.epochs, args.repeats = 2, 1
    params = {"epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed}
    runs = common.run_interleaved(NAME, VARIANTS, args.repeats, lambda v, r: params, out)
    summary = {variant: {key: median(r[key] for r in results) for key in (
        "images_per_second", "steady_epoch_seconds", "first_epoch_seconds", "compile_seconds")}
        for variant, results in runs.items()}
    bare_ips = summary["bare"]["images_per_second"]
    sweep_ips = summary["sweep"]["images_per_second"]
    summary["ratios"] = {
        "sweep/bare": ratio(sweep_ips, bare_ips),
        "sweep_jit/sweep": ratio(summary["sweep_jit"]["images_per_second"], sweep_ips),
        "sweep_mixed/sweep": ratio(summary["sweep_mixed"]["images_per_second"], sweep_ips),
    }
    first = runs["sweep"][0]
    return {"params": {**params, "repeats": args.repeats}, "backend": first["backend"],
            "devices": first["devices"], "runs": runs, "summary": summary}


def tables(payload: dict) -> list[Table]:
    summary, p = payload["summary"], payload["params"]
    base = summary["sweep"]["images_per_second"]
    rows = []
    for variant in VARIANTS:
        s = summary[variant]
        rows.append([variant, fmt(s["images_per_second"], 0), fmt(s["steady_epoch_seconds"]),
                     fmt(s["first_epoch_seconds"], 2), fmt(s["compile_seconds"], 2),
                     fmt(ratio(s["images_per_second"], summary["bare"]["images_per_second"])),
                     fmt(ratio(s["images_per_second"], base))])
    share = summary["ratios"]["sweep/bare"]
    title = (f"throughput: {payload['backend']} backend on "
             f"{', '.join(payload['devices']) or 'CPU'}; median of {p['repeats']} interleaved "
             f"runs, {p['epochs']} epochs, batch {p['batch_size']}; sweep/bare = {fmt(share)} "
             f"(target >= {TARGET}: {verdict(share, TARGET, at_most=False)})")
    return [(title, ["variant", "images/s (steady)", "s/epoch", "first epoch s",
                     "compile s (first - steady)", "vs bare", "vs sweep"], rows)]


def main(argv: list[str] | None = None) -> int:
    return common.entry(NAME, argv, build_parser(), WORKERS, measure, tables)


if __name__ == "__main__":
    raise SystemExit(main())
