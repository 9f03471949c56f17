"""Sweeps: schema errors, planning, a tiny grid on synthetic data that runs, records a failing
run, resumes without redoing finished runs, adds extra seeds and writes summary.csv."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from demp.errors import DempError
from demp.experiments.reporting import COLUMNS
from demp.experiments.sweep import load_sweep, plan_extra_seeds, plan_runs, run_config, run_name, run_sweep

TINY = {"data.name": "synthetic", "model.name": "small_cnn", "model.width": 0.125, "train.epochs": 1,
        "train.max_steps": 3, "train.batch_size": 64, "train.log_every": 1, "method.prune_every": 2,
        "data.probe_size": 128, "data.probe_batch": 64, "method.score_batches": 1,
        "method.rounds": 1}


def write_sweep(folder: Path, **content) -> Path:
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({"set": TINY, **content}, sort_keys=False))
    return path


def test_schema_errors_name_the_bad_key(tmp_path: Path):
    def error(**content) -> str:
        with pytest.raises(DempError) as e:
            load_sweep(write_sweep(tmp_path, **content))
        return str(e.value)

    assert "unknown key 'gird'; valid keys: name, out, base" in error(gird=[])
    assert "grid: missing or empty" in error(grid=[])
    assert "grid[0]: unknown key 'knobs'; valid keys: method, optim, knob" in error(
        grid=[{"method": "demp", "knobs": [1e-3]}])
    assert "grid[0].method: unknown method 'demon'; valid: " in error(grid=[{"method": "demon"}])
    assert "unknown optimizer 'adam'; valid: adamw, sgd" in error(grid=[{"method": "dense", "optim": "adam"}])
    assert "needs 'knob': a list of method.reg_peak values" in error(grid=[{"method": "demp"}])
    assert "method snap takes 'knob' or 'target'" in error(grid=[{"method": "snap", "reg_peak": [0.1]}])
    assert "method dense takes no knob" in error(grid=[{"method": "dense", "knob": [1]}])
    assert "expected a number" in error(grid=[{"method": "demp", "knob": ["big"]}])
    assert "optims: unknown key 'adam'" in error(grid=[{"method": "dense"}], optims={"adam": {}})
    assert "base: config file 'nope.yaml' not found" in error(grid=[{"method": "dense"}], base="nope.yaml")
    assert "extra_seeds: needs 'near_units_removed'" in error(grid=[{"method": "dense"}],
                                                               extra_seeds={"seeds": [1]})
    assert "already planned by grid[0]" in error(grid=[{"method": "dense"}, {"method": "dense"}])
    message = error(grid=[{"method": "demp", "knob": [1e-3], "set": {"optim.lrr": 1}}])
    assert "run demp-adamw-0.001-s0" in message and "unknown key 'optim.lrr'" in message
    assert "unknown key 'tran'" in error(grid=[{"method": "dense", "set": {"tran.epochs": 1}}])


def test_plan_names_order_and_override_layers(tmp_path: Path):
    (tmp_path / "sgd.yaml").write_text("optim: {name: sgd, lr: 0.1, weight_decay: 0.0001}\n")
    sweep = load_sweep(write_sweep(
        tmp_path, base=None, optims={"sgd": "sgd.yaml", "adamw": {"optim.lr": 0.004}},
        grid=[{"method": "dense", "optim": ["adamw", "sgd"]},
              {"method": "demp", "optim": "sgd", "knob": ["1e-3", 0.03], "set": {"method": {"reg_span": 0.5}}},
              {"method": "snap", "target": [0.5]}],
        seeds=[0, 2]))
    names = [r.name for r in plan_runs(sweep)]
    assert names == ["dense-adamw-s0", "dense-adamw-s2", "dense-sgd-s0", "dense-sgd-s2",
                     "demp-sgd-0.001-s0", "demp-sgd-0.001-s2", "demp-sgd-0.03-s0", "demp-sgd-0.03-s2",
                     "snap-adamw-0.5-s0", "snap-adamw-0.5-s2"]
    runs = {r.name: r for r in plan_runs(sweep)}
    demp = run_config(sweep, runs["demp-sgd-0.001-s2"], tmp_path / "x")
    assert (demp.optim.name, demp.optim.lr, demp.optim.weight_decay) == ("sgd", 0.1, 1e-4)
    assert (demp.method.name, demp.method.reg_peak, demp.method.reg_span) == ("demp", 1e-3, 0.5)
    assert (demp.seed, demp.out, demp.data.name, demp.train.max_steps) == (2, str(tmp_path / "x"), "synthetic", 3)
    adamw = run_config(sweep, runs["snap-adamw-0.5-s0"])
    assert (adamw.optim.lr, adamw.method.target, adamw.method.name) == (0.004, 0.5, "snap")
    assert run_name("demp", "adamw", 1e-05, 3) == "demp-adamw-1e-05-s3"


def test_tiny_grid_runs_resumes_and_reports(tmp_path: Path, capsys):
    path = write_sweep(tmp_path, grid=[
        {"method": "dense"},
        {"method": "demp", "knob": [0.01, 0.3]},
        {"method": "snap", "target": [0.5]},
        {"method": "random", "target": [0.5], "set": {"model.kwargs.bogus": 1}},   # fails to build
    ], extra_seeds={"seeds": [1], "near_units_removed": [0.5]})
    out = tmp_path / "out"
    run_sweep(path, out=str(out), dry_run=True)
    planned = capsys.readouterr().out
    assert "grid: 5 runs" in planned and "demp-adamw-0.3-s0" in planned and "new" in planned
    assert not out.exists()

    outcomes = {o.name: o for o in run_sweep(path, out=str(out))}
    assert outcomes["random-adamw-0.5-s0"].status == "failed"
    assert "bogus" in (out / "random-adamw-0.5-s0" / "error.txt").read_text()
    done = {n for n, o in outcomes.items() if o.status == "done"}
    grid = {"dense-adamw-s0", "demp-adamw-0.01-s0", "demp-adamw-0.3-s0", "snap-adamw-0.5-s0"}
    assert grid | {"dense-adamw-s1", "snap-adamw-0.5-s1"} <= done        # extra seeds: dense + snap
    assert len([n for n in done if n.startswith("demp-") and n.endswith("-s1")]) == 1
    with (out / "summary.csv").open() as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == COLUMNS and len(rows) == 1 + len(done)
    assert (out / "report.md").is_file() and (out / "acc_vs_units.png").is_file()
    summary = json.loads((out / "dense-adamw-s0" / "summary.json").read_text())
    assert summary["method"] == "dense" and summary["seed"] == 0

    stamps = {n: (out / n / "summary.json").stat().st_mtime_ns for n in done}
    again = run_sweep(path, out=str(out))
    assert all(o.status == "skipped" for o in again) and len(again) == len(outcomes)
    assert stamps == {n: (out / n / "summary.json").stat().st_mtime_ns for n in done}
    assert "0 runs done" in capsys.readouterr().out


def test_extra_seeds_can_be_limited_to_methods_and_optimizers(tmp_path: Path):
    path = write_sweep(tmp_path, grid=[{"method": "dense", "optim": ["adamw", "sgd"]},
                                       {"method": "dense", "variant": "ablation"},
                                       {"method": "snap", "target": [0.5]}],
                       extra_seeds={"seeds": [1], "near_units_removed": [0.5], "methods": ["dense"],
                                    "optims": ["adamw"], "variants": False})
    runs, _ = plan_extra_seeds(load_sweep(path), tmp_path / "none")
    assert [r.name for r in runs] == ["dense-adamw-s1"]
    bad = write_sweep(tmp_path, grid=[{"method": "dense"}],
                      extra_seeds={"seeds": [1], "near_units_removed": [0.5], "methods": ["dense", "snp"]})
    with pytest.raises(DempError, match=r"extra_seeds.methods.*unknown \['snp'\]"):
        load_sweep(bad)


def test_workers_run_in_processes(tmp_path: Path):
    path = write_sweep(tmp_path, grid=[{"method": "dense", "optim": ["adamw", "sgd"]}])
    outcomes = run_sweep(path, out=str(tmp_path / "out"), workers=2, log=lambda _: None)
    assert sorted(o.status for o in outcomes) == ["done", "done"]
    cfg = yaml.safe_load((tmp_path / "out" / "dense-sgd-s0" / "config.yaml").read_text())
    assert cfg["optim"]["name"] == "sgd" and cfg["out"] == str(tmp_path / "out" / "dense-sgd-s0")


def test_entry_seeds_and_flops_budget_knob(tmp_path: Path):
    """An entry's own seeds (second seeds placed at their priority) and DemP's FLOPs budget as a knob."""
    sweep = load_sweep(write_sweep(
        tmp_path, grid=[{"method": "demp", "target_flops": [0.5, 0.75], "set": {"method.target_units": None}},
                        {"method": "snap", "target": [0.8]},
                        {"method": "demp", "target_flops": [0.75], "seeds": [1, 2],
                         "set": {"method.target_units": None}}]))
    names = [r.name for r in plan_runs(sweep)]
    assert names == ["demp-adamw-f0.5-s0", "demp-adamw-f0.75-s0", "snap-adamw-0.8-s0",
                     "demp-adamw-f0.75-s1", "demp-adamw-f0.75-s2"]
    cfg = run_config(sweep, {r.name: r for r in plan_runs(sweep)}["demp-adamw-f0.75-s2"])
    assert (cfg.method.target_flops, cfg.method.target_units, cfg.seed) == (0.75, None, 2)
