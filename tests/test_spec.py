"""Sweep and study files: schema errors that name the bad key, the checking helpers, run
names, planning order and the layers of overrides in each run's Config."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from demp.errors import DempError
from demp.experiments.spec import (load_study, load_sweep, numbers, overrides, plan_runs, plan_study, run_config,
                                   run_name, study_config)

SWEEP_TINY = {"data.name": "synthetic", "model.name": "small_cnn", "model.width": 0.125, "train.epochs": 1,
        "train.max_steps": 3, "train.batch_size": 64, "train.log_every": 1, "method.prune_every": 2,
        "data.probe_size": 128, "data.probe_batch": 64, "method.score_batches": 1,
        "method.rounds": 1}

STUDY_TINY = {"data.name": "synthetic", "model.name": "mlp", "model.width": 1.0, "model.kwargs": {"hidden": [16, 16, 16]},
        "train.epochs": 1, "train.max_steps": 4, "train.batch_size": 64, "train.log_every": 1,
        "train.eval_every_epoch": False, "data.probe_size": 128, "data.probe_batch": 64,
        "method.prune_every": 2}


def write_sweep(folder: Path, **content) -> Path:
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({"set": SWEEP_TINY, **content}, sort_keys=False))
    return path


def write_study(folder: Path, **content) -> Path:
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump({"set": STUDY_TINY, **content}, sort_keys=False))
    return path


def test_checking_helpers(tmp_path: Path):
    path = tmp_path / "x.yaml"
    assert numbers(["1e-3", 2], path, "k") == (1e-3, 2.0) and numbers(3, path, "k", int) == (3,)
    with pytest.raises(DempError, match=r"x.yaml: k: expected a number or a list of numbers, got True"):
        numbers([True], path, "k")
    with pytest.raises(DempError, match="k: must not be empty"):
        numbers([], path, "k")
    assert overrides({"train": {"epochs": 3, "kw": {}}, "seed": 1}, path, "set") == \
        {"train.epochs": 3, "train.kw": {}, "seed": 1}


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


def test_extra_seeds_filters_must_name_known_methods(tmp_path: Path):
    bad = write_sweep(tmp_path, grid=[{"method": "dense"}],
                      extra_seeds={"seeds": [1], "near_units_removed": [0.5], "methods": ["dense", "snp"]})
    with pytest.raises(DempError, match=r"extra_seeds.methods.*unknown \['snp'\]"):
        load_sweep(bad)


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


def test_study_file_mistakes_name_the_fix(tmp_path: Path):
    def error(**content) -> str:
        with pytest.raises(DempError) as e:
            load_study(write_study(tmp_path, **content))
        return str(e.value)

    assert "vary: missing" in error(values=[1])
    assert "values: missing or empty" in error(vary="optim.lr")
    assert "unknown key 'valus'" in error(vary="optim.lr", valus=[1])
    assert "drop method.name" in error(vary="optim.lr", values=[0.1], panels={"x": {"method.name": "demp"}})
    assert "unknown key 'optim.lrr'" in error(vary="optim.lrr", values=[0.1])


def test_study_plan_names_and_override_layers(tmp_path: Path):
    study = load_study(write_study(tmp_path, vary="optim.lr", values=["1e-3", 0.1],
                                   panels={"adamw": {"optim.name": "adamw"},
                                           "sgd": {"optim.name": "sgd", "optim.momentum": 0.0}},
                                   series={"l2": {"method.reg_form": "l2"}}))
    runs = plan_study(study)
    assert [r.name for r in runs] == ["adamw-l2-0.001-s0", "adamw-l2-0.1-s0", "sgd-l2-0.001-s0", "sgd-l2-0.1-s0"]
    cfg = study_config(study, runs[2], tmp_path / "x")
    assert (cfg.method.name, cfg.optim.name, cfg.optim.momentum, cfg.optim.lr, cfg.method.reg_form) == \
        ("count", "sgd", 0.0, 1e-3, "l2")
    assert runs[0].x == 1e-3
    labelled = load_study(write_study(tmp_path, vary="noise", values={"none": {"method.noise_peak": 0},
                                                                      "all": {"method.noise_mode": "all"}}))
    assert [(r.name, r.x) for r in plan_study(labelled)] == [("none-s0", None), ("all-s0", None)]



def test_scratch_entries_name_their_sources_and_come_after_them(tmp_path: Path):
    """``from`` names the runs whose widths scratch trains ('{seed}': the run's seed); a scratch
    run is planned just after its source, wherever its entry is."""
    sweep = load_sweep(write_sweep(tmp_path, grid=[
        {"method": "scratch", "from": ["demp-adamw-t0.5-s{seed}", "snap-adamw-0.5-s0"]},
        {"method": "dense"},
        {"method": "demp", "target": [0.5]},
        {"method": "snap", "target": [0.5]},
        {"method": "scratch", "optim": "sgd", "from": "demp-adamw-t0.5-s{seed}", "variant": "sgd-widths"}],
        seeds=[0, 1]))
    names = [r.name for r in plan_runs(sweep)]
    assert names == ["dense-adamw-s0", "dense-adamw-s1",
                     "demp-adamw-t0.5-s0", "scratch-adamw-demp-adamw-t0.5-s0",
                     "demp-adamw-t0.5-s1", "scratch-adamw-demp-adamw-t0.5-s1",
                     "snap-adamw-0.5-s0", "scratch-adamw-snap-adamw-0.5-s0", "scratch-adamw-snap-adamw-0.5-s0-s1",
                     "snap-adamw-0.5-s1",
                     "scratch-sgd-sgd-widths-demp-adamw-t0.5-s0", "scratch-sgd-sgd-widths-demp-adamw-t0.5-s1"]
    runs = {r.name: r for r in plan_runs(sweep)}
    cfg = run_config(sweep, runs["scratch-adamw-snap-adamw-0.5-s0-s1"], tmp_path / "out" / "x")
    assert (cfg.method.name, cfg.seed) == ("scratch", 1)
    assert cfg.method.widths_from == str(tmp_path / "out" / "snap-adamw-0.5-s0")
    assert run_config(sweep, runs["scratch-sgd-sgd-widths-demp-adamw-t0.5-s1"]).label == "sgd-widths"


def test_scratch_entry_mistakes(tmp_path: Path):
    def error(*grid) -> str:
        with pytest.raises(DempError) as e:
            load_sweep(write_sweep(tmp_path, grid=list(grid)))
        return str(e.value)
    assert "grid[0] (scratch): needs 'from': the runs whose final widths scratch trains" in error({"method": "scratch"})
    assert "grid[0] (snap).from: method snap does not start from another run" in error(
        {"method": "snap", "target": [0.5], "from": ["x"]})
    assert "expected run folder names (with {seed} for the run's seed; quote such a name in a [...] list), " \
        "got 'demp-{sed}'" in error(
        {"method": "scratch", "from": ["demp-{sed}"]})
    assert "from: must not be empty" in error({"method": "scratch", "from": []})
    assert "method scratch takes no knob" in error({"method": "scratch", "from": ["a"], "target": [0.5]})
