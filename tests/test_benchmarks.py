"""Every benchmark entry point runs end to end in tiny mode, so none of them rots.

Benchmarks are not tests: nothing here checks a timing, only that each entry point
writes its JSON with the expected keys and finite numbers, and that the report
copies tables into a README.
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import pytest

from benchmarks import NAMES, common, report

KEYS = {"benchmark", "command", "tiny", "started", "seconds", "machine", "params", "runs",
        "summary"}


def run_tiny(name: str, out: Path) -> dict:
    """``python -m benchmarks.<name> --tiny --out <out>``, in-process; its JSON."""
    module = importlib.import_module(f"benchmarks.{name}")
    assert module.main(["--tiny", "--out", str(out)]) == 0
    payload = json.loads((out / f"{name}.json").read_text())
    assert KEYS <= payload.keys()
    assert payload["benchmark"] == name and payload["tiny"] is True
    assert payload["command"] == f"python -m benchmarks.{name} --tiny --out {out}"
    assert payload["machine"]["cores_logical"] >= 1 and payload["machine"]["versions"]["keras"]
    for table in module.tables(payload):
        assert table[2], f"{name}: empty table {table[0]!r}"
    return payload


def finite(*values) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for v in values)


def test_common_helpers():
    assert common.interleave(["a", "b"], 2) == [(0, "a"), (0, "b"), (1, "a"), (1, "b")]
    assert common.median([3, None, 1, math.nan, 2]) == 2
    assert math.isnan(common.median([None])) and math.isnan(common.ratio(1.0, 0.0))
    assert common.ratio(3.0, 2.0) == 1.5
    assert common.slope([1, 2, 3], [10, 12, 14]) == pytest.approx(2.0)
    assert common.first_reaching([1, 2, 3], [0.5, None, 0.99], 0.98) == 3
    assert common.first_reaching([1, 2], [0.5, 0.6], 0.98) is None


@pytest.mark.slow   # ~26 s, as the other benchmarks' tiny runs
def test_overhead_tiny_and_report(tmp_path):
    payload = run_tiny("overhead", tmp_path)
    summary = payload["summary"]
    for variant in ("baseline", "none", "local"):
        assert summary[variant]["n_trials"] == 2
        assert finite(summary[variant]["per_trial_seconds"])
    assert finite(*summary["ratios"].values(), summary["tracking_per_trial_seconds"])

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.START}\nold\n{report.END}\nend\n")
    assert report.main(["--out", str(tmp_path), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old" not in text and "Left out (tiny mode): overhead" in text
    assert report.main(["--out", str(tmp_path), "--readme", str(readme), "--include-tiny"]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{report.END}\nend\n")
    assert "### overhead" in text and "python -m benchmarks.overhead --tiny" in text
    assert "| baseline | 2 |" in text

    # --only: one benchmark into its own block, the whole-results block left alone
    readme.write_text(f"{report.START}\nkeep\n{report.END}\n<!-- results:overhead:start -->\n"
                      "old\n<!-- results:overhead:end -->\n")
    assert report.main(["--out", str(tmp_path), "--readme", str(readme), "--include-tiny",
                        "--only", "overhead"]) == 0
    text = readme.read_text()
    assert "keep" in text and "old" not in text and "### overhead" in text

    # --block: a second run of the same benchmark into a block of its own name
    readme.write_text("<!-- results:overhead:start -->\nfirst\n<!-- results:overhead:end -->\n"
                      "<!-- results:more:start -->\nold\n<!-- results:more:end -->\n")
    assert report.main(["--out", str(tmp_path), "--readme", str(readme), "--include-tiny",
                        "--only", "overhead", "--block", "more"]) == 0
    text = readme.read_text()
    assert "first" in text and "old" not in text and "### overhead" in text


@pytest.mark.slow
def test_throughput_tiny(tmp_path):
    payload = run_tiny("throughput", tmp_path)
    for variant in ("bare", "sweep", "sweep_jit", "sweep_mixed"):
        assert finite(payload["summary"][variant]["images_per_second"])
    assert finite(*payload["summary"]["ratios"].values())
    assert payload["backend"] in ("tensorflow", "jax", "torch")


@pytest.mark.slow
def test_quality_tiny(tmp_path):
    payload = run_tiny("quality", tmp_path)
    for variant in ("svm", "random", "bayesian", "hyperband", "keras_tuner", "cnn2"):
        assert 0.0 <= payload["summary"][variant]["test_accuracy"] <= 1.0
        assert finite(payload["summary"][variant]["total_seconds"])
    assert payload["summary"]["random"]["n_trials"] >= 1
    assert isinstance(payload["autokeras"], str)


@pytest.mark.slow
def test_memory_tiny(tmp_path):
    payload = run_tiny("memory", tmp_path)
    for variant in ("ours_local", "ours_none", "keras_tuner"):
        (run,) = payload["runs"][variant]
        assert len(run["rss_mb"]) == 2 and finite(*run["rss_mb"])
        assert finite(payload["summary"][variant]["slope_mb_per_trial"])


@pytest.mark.slow
def test_costs_tiny(tmp_path):
    payload = run_tiny("costs", tmp_path)
    assert finite(*payload["summary"]["tracking"].values())
    exports = payload["summary"]["export"]
    assert "keras" in exports
    for record in exports.values():
        assert finite(record["seconds"], record["bytes"]) and record["parity_ok"]


@pytest.mark.slow
def test_profile_tiny(tmp_path):
    payload = run_tiny("profile", tmp_path)
    for variant in ("baseline", "none", "local"):
        hotspots = payload["summary"][variant]
        assert hotspots["model.fit"] > 0 and finite(*hotspots.values())
        assert (tmp_path / "profiles" / f"{variant}.prof").stat().st_size > 0
    assert payload["summary"]["local"]["MLflow recorder, per-trial events"] > 0
    assert payload["summary"]["none"]["MLflow recorder, per-trial events"] == 0


@pytest.mark.slow   # 9 whole commands (imports, MLflow) in fresh processes: ~1.5 min
def test_wholerun_tiny(tmp_path):
    payload = run_tiny("wholerun", tmp_path)
    summary = payload["summary"]
    assert set(summary) == {"baseline", "none", "local", "local_new"}
    assert summary["baseline"]["ratio"] == 1.0
    assert all(finite(s["seconds"], s["ratio"]) and s["seconds"] > 0 for s in summary.values())
    store = tmp_path / "wholerun-store" / "mlflow" / "mlflow.db"   # local reused one store
    assert store.is_file()


@pytest.mark.slow
def test_scaling_tiny(tmp_path):
    payload = run_tiny("scaling", tmp_path)
    one, two = payload["summary"]["workers1"], payload["summary"]["workers2"]
    assert one["n_trials"] == two["n_trials"] == 2
    assert one["speedup"] == 1.0 and finite(two["speedup"], two["efficiency"])
    assert two["efficiency"] == pytest.approx(two["speedup"] / 2)
    for phases in (one, two):   # each run's log lines were stamped as they arrived
        assert finite(phases["startup_seconds"], phases["trials_seconds"],
                      phases["finish_seconds"])
        assert 0 < phases["startup_seconds"] + phases["trials_seconds"] <= phases["seconds"]
        assert 0 < phases["trial_seconds"] <= 2 * phases["trials_seconds"]


def test_gpu_summary_reads_nvidia_smi_lines():
    lines = "30, 1000\n50, 3000\n70, 2000\n90, 25"   # the last one cut off by the stop
    assert common.gpu_summary(lines) == {"gpu_utilisation": 60.0, "gpu_memory_mib": 3000.0}
    assert common.gpu_summary("") == {}
    with common.GpuSampler() as sampler:   # without nvidia-smi it samples nothing
        pass
    assert sampler.summary == {} or finite(*sampler.summary.values())


def test_scaling_bound_takes_one_workers_startup_and_finish():
    from benchmarks import scaling

    runs = {"workers1": [{"seconds": 60.0, "startup_seconds": 5.0, "trials_seconds": 50.0,
                          "finish_seconds": 5.0, "n_trials": 8, "trials_per_hour": 480}],
            "workers2": [{"seconds": 45.0, "startup_seconds": 12.0, "trials_seconds": 28.0,
                          "finish_seconds": 5.0, "n_trials": 8, "trials_per_hour": 640}]}
    two = scaling.summarise(runs)["workers2"]
    assert two["speedup"] == pytest.approx(60 / 45)
    assert two["trials_speedup"] == pytest.approx(50 / 28)
    assert two["bound_speedup"] == pytest.approx(60 / (5 + 28 + 5))
    del runs["workers2"][0]["trials_seconds"]   # a run whose log lacked the line
    assert math.isnan(scaling.summarise(runs)["workers2"]["bound_speedup"])


def test_scaling_reads_the_phases_from_the_sweeps_log_lines():
    from benchmarks import scaling

    lines = ["[22:34:56 INFO] chief serving trials at 127.0.0.1:32941",
             "[worker 1] [22:34:57 INFO] trial 0: 8x8x1 | 32c3s1-max2 | flatten-d128 | 10",
             "[worker 1] [22:35:04 INFO] trial 0: score 0.9722 after 20 epochs (7.2s, RSS "
             "787 MB); best so far 0.9722; elapsed 10s",
             "[22:35:26 INFO] final fit: trial 4 on train + validation for 10 epochs"]
    opens = [[phase for phase, pattern in scaling.PHASE_LINES.items() if pattern.search(line)]
             for line in lines]
    assert opens == [[], ["trials"], [], ["finish"]]
    assert [float(m[1]) for line in lines if (m := scaling.TRIAL_ENDED.search(line))] == [7.2]


def test_scaling_table_on_a_gpu_checks_the_best_workers_against_3x():
    from benchmarks import scaling

    runs = {f"workers{n}": [{"seconds": 100.0 / speedup, "n_trials": 16,
                             "trials_per_hour": 576 * speedup,
                             "gpu_utilisation": 10.0 * n}]
            for n, speedup in ((1, 1.0), (2, 1.9), (4, 3.2), (8, 2.9))}
    payload = {"params": {"trials": 16, "epochs": 5, "space": "default", "repeats": 1},
               "summary": scaling.summarise(runs)}
    ((_, columns, rows),) = scaling.tables(payload)
    assert columns[-1] == "GPU util %" and [row[-1] for row in rows] == ["10", "20", "40", "80"]
    assert [row[6] for row in rows] == ["", "", ">= 3.0", ""]   # only the best is checked
    assert rows[2][7] == "yes"   # 3.2x
    for run in runs.values():   # on a CPU: no GPU column, the 2-worker target
        del run[0]["gpu_utilisation"]
    ((_, columns, rows),) = scaling.tables({**payload, "summary": scaling.summarise(runs)})
    assert "GPU util %" not in columns
    assert [row[6] for row in rows] == ["", f">= {scaling.TARGET}", "", ""]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="apt-get install dataset-fashion-mnist (.ci/run installs it)")
def test_fashion_tiny(tmp_path):
    payload = run_tiny("fashion", tmp_path)
    for searcher in ("ours", "keras_tuner", "optuna"):
        s = payload["summary"][searcher]
        assert 0.0 <= s["test_accuracy"] <= 1.0 and s["n_trials"] >= 1
        assert finite(s["total_seconds"], s["best_val_accuracy"])
    assert [name for name, _ in payload["anchors"]]


def test_every_benchmark_has_a_test():
    tested = {"fashion", "wholerun", "overhead", "throughput", "quality", "memory", "costs",
              "profile", "scaling"}
    assert set(NAMES) == tested


@pytest.mark.parametrize("python", [None, "/nonexistent/bin/python"])
def test_fashion_refuses_autokeras_without_its_python(tmp_path, monkeypatch, python):
    from benchmarks import fashion

    monkeypatch.delenv("AUTOKERAS_PYTHON", raising=False)
    argv = ["--tiny", "--out", str(tmp_path), "--searchers", "ours", "autokeras"]
    with pytest.raises(SystemExit, match="--searchers autokeras: not run: "):
        fashion.main(argv + (["--autokeras-python", python] if python else []))
    assert not (tmp_path / "logs").exists()   # refused before any searcher ran


def test_fashion_targets_are_checked_on_the_medians():
    from benchmarks import fashion

    summary = {"ours": {"test_accuracy": 0.912, "time_to_90": 80.0},
               "keras_tuner": {"test_accuracy": 0.900, "time_to_90": None},   # never got there
               "optuna": {"test_accuracy": 0.905, "time_to_90": 300.0}}
    ((_, _, rows),) = fashion.targets(summary)
    assert [row[-1] for row in rows] == ["yes", "yes", "yes"]
    summary["ours"].update(test_accuracy=0.904, time_to_90=None)
    ((_, _, rows),) = fashion.targets(summary)
    assert [row[-1] for row in rows] == ["**no**", "**no**", "**no**"]
    summary["keras_tuner"]["time_to_90"], summary["ours"]["time_to_90"] = 200.0, 101.0
    ((_, _, rows),) = fashion.targets(summary)
    assert rows[2][-1] == "**no**"   # 101 s is more than half of 200 s


def _fashion_run(accuracy: float) -> dict:
    """One searcher's result for one seed, as fashion-partial.json holds it."""
    return {"test_accuracy": accuracy, "best_val_accuracy": accuracy, "n_trials": 3,
            "total_seconds": 10.0, "trial_ends": [5.0, 9.0],
            "trial_val_accuracy": [accuracy - 0.01, accuracy], "time_to_90": 9.0,
            "process_seconds": 12.0}


def test_fashion_from_partial_keeps_the_seeds_every_searcher_finished(tmp_path):
    from benchmarks import fashion

    partial = tmp_path / "fashion-partial.json"
    partial.write_text(json.dumps({"ours": [_fashion_run(a) for a in (0.91, 0.92, 0.93)],
                                   "keras_tuner": [_fashion_run(0.90), _fashion_run(0.89)]}))
    payload = fashion.from_partial([partial], {"budget": 10.0, "limit": 100}, [0, 1, 2],
                                   tmp_path / "plot.png")
    assert payload["params"]["seeds"] == [0, 1]
    assert [len(runs) for runs in payload["runs"].values()] == [2, 2]
    assert payload["summary"]["ours"]["test_accuracy"] == pytest.approx(0.915)
    assert payload["seconds"] == 48.0 and payload["stopped_early"].startswith("after 2 of")
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_fashion_from_partial_combines_runs_of_some_seeds_each(tmp_path):
    from benchmarks import fashion

    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({"ours": [_fashion_run(0.91), _fashion_run(0.92)],
                                 "optuna": [_fashion_run(0.8)] * 2}))
    second.write_text(json.dumps({"ours": [_fashion_run(0.95)], "optuna": [_fashion_run(0.9)]}))
    payload = fashion.from_partial([first, second], {"budget": 10.0, "limit": 100},
                                   [0, 1, 2], tmp_path / "plot.png")
    assert payload["params"]["seeds"] == [0, 1, 2]
    assert payload["summary"]["ours"]["test_accuracy"] == pytest.approx(0.92)
    assert payload["summary"]["optuna"]["test_accuracy"] == pytest.approx(0.8)
    assert "stopped_early" not in payload and payload["combined"] == [str(first), str(second)]
    assert payload["seconds"] == 72.0


def test_wholerun_never_removes_a_store_folder_it_did_not_make(tmp_path):
    from benchmarks import wholerun

    foreign = tmp_path / "wholerun-store"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    args = wholerun.build_parser().parse_args(["--tiny"])
    with pytest.raises(common.BenchmarkError, match="was not made by this benchmark"):
        wholerun.measure(args, tmp_path)
    assert (foreign / "notes.txt").read_text() == "keep me"
