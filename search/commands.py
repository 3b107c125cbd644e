"""The subcommands' bodies: composed config in, typed specs to the library, a report out.

This is the edge where the DictConfig stops; everything below takes plain values.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from search.data import DataSpec
from search.errors import UserError
from search.events import SweepResult
from search.hypermodel import TrainingSpec
from search.progress import ProgressDisplay
from search.sweep import SweepSpec, run_sweep
from search.tuners import TunerSpec

console = Console(stderr=True)


def sweep_spec(cfg: DictConfig) -> SweepSpec:
    """Turn the composed config into the sweep's typed spec.

    Raises:
        UserError: when a mandatory value (such as ``data.path``) is missing.
    """
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UserError(f"{missing[0]} is required (set it on the command line: {missing[0]}=...)")
    plain = OmegaConf.to_container(cfg, resolve=True)
    data = dict(plain["data"])
    if data.get("image_size") is not None:
        data["image_size"] = tuple(data["image_size"])
    return SweepSpec(
        data=DataSpec(**data),
        search_space=plain["search_space"],
        tuner=TunerSpec(**plain["tuner"]),
        training=TrainingSpec(**plain["training"]),
        root=plain["paths"]["root"],
        name=plain["sweep"]["name"],
        resume=plain["sweep"]["resume"],
        seed=plain["seed"],
        final_fit=plain["final_fit"]["enabled"],
        final_fit_epochs=plain["final_fit"]["epochs"],
        config=plain,
    )


def sweep_command(cfg: DictConfig) -> SweepResult:
    """``cnnsearch sweep``: run one sweep and print its summary table."""
    spec = sweep_spec(cfg)
    result, _ = run_sweep(spec, [ProgressDisplay(console)])
    Console().print(summary_table(result))
    return result


def summary_table(result: SweepResult) -> Table:
    """The end-of-sweep table: winner, its size and scores, trial counts, time."""
    table = Table(title=f"sweep {result.name}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    rows = {
        "best trial": result.best_trial_id,
        "architecture": result.architecture,
        "params": f"{result.params:,}",
        "FLOPs": f"{result.flops:,}",
        "val accuracy": _fmt(result.best_val_accuracy),
        "test accuracy": _fmt(result.test_accuracy),
        "wall time": f"{result.seconds:.1f} s",
        "trials run / failed / skipped":
            f"{result.n_completed} / {result.n_failed} / {result.n_skipped}",
        "folder": result.directory,
    }
    if result.stopped_reason:
        rows["stopped early"] = result.stopped_reason
    for reason, count in list(result.skip_reasons.items())[:5]:
        rows[f"skipped x{count}"] = reason
    for key, value in rows.items():
        table.add_row(key, str(value))
    return table


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
