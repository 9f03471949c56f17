"""Death studies: the overlap measure, counting without removal, a tiny synthetic study that
runs, resumes and reports, and study-file mistakes."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml

from demp.app.methods.count import DeathCounter, compare_dead, overlap_fraction
from demp.cli import main
from demp.errors import DempError
from demp.experiments.study import load_study, plan_study, run_study, study_config
from demp.experiments.study_report import _log_axis, death_checks

TINY = {"data.name": "synthetic", "model.name": "mlp", "model.width": 1.0, "model.kwargs": {"hidden": [16, 16, 16]},
        "train.epochs": 1, "train.max_steps": 4, "train.batch_size": 64, "train.log_every": 1,
        "train.eval_every_epoch": False, "data.probe_size": 128, "data.probe_batch": 64,
        "method.prune_every": 2}


def test_overlap_counts_stayed_revived_and_new():
    before = {"a": torch.tensor([True, True, False, False]), "b": torch.tensor([True, False])}
    now = {"a": torch.tensor([True, False, True, False]), "b": torch.tensor([True, False])}
    assert compare_dead(before, now) == (2, 1, 1)
    assert overlap_fraction(2, 1) == pytest.approx(2 / 3)
    assert overlap_fraction(0, 0) is None
    assert compare_dead({}, now) == (0, 0, 3)       # first check: everything dead is new


def _counter() -> tuple[nn.Module, DeathCounter, list[torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
    probe = [torch.randn(32, 4) for _ in range(2)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, DeathCounter(model, opt, probe[0][:2], 10, probe, reg_peak=0.0, noise_peak=0.0), probe


def test_counter_counts_dead_units_and_removes_nothing():
    model, counter, _ = _counter()
    bn = model[1]
    with torch.no_grad():
        bn.weight[:2] = 0.0
        bn.bias[:2] = -1.0                       # units 0, 1 dead whatever the input
        bn.running_mean.fill_(100.0)             # stale statistics: re-estimated before counting
    stale = bn.running_mean.clone()
    report = counter.prune()
    assert report.units_removed == 0 and model[0].out_features == 6
    assert torch.equal(bn.running_mean, stale)   # the trained statistics are put back
    first = counter.counts[-1]
    assert (first.units, first.dead, first.sites) == (6, 2, {"2": 2})
    assert (first.overlap, first.revived, first.new, first.ever_dead) == (None, 0, 2, 2)
    with torch.no_grad():
        bn.bias[0] = 1.0                          # unit 0 comes back to life
        bn.weight[2], bn.bias[2] = 0.0, -1.0      # unit 2 dies
    counter.step_count = 5
    counter.prune()
    second = counter.counts[-1]
    assert (second.step, second.dead, second.overlap, second.revived, second.new, second.ever_dead) == \
        (5, 2, 0.5, 1, 1, 3)

    _, fresh, _ = _counter()                     # resume: counts and masks come back
    fresh.load_state_dict(counter.state_dict())
    assert fresh.counts == counter.counts and torch.equal(fresh.ever_masks["2"], counter.ever_masks["2"])


def test_death_checks_keep_one_record_per_step():
    lines = [{"step": 1, "deaths": [{"step": 0, "dead": 1}]}, {"step": 2},
             {"step": 3, "deaths": [{"step": 2, "dead": 3}]}, {"event": "final", "deaths": [{"step": 4, "dead": 4}]}]
    assert [c["dead"] for c in death_checks(lines)] == [1, 3, 4]


def test_log_axis_only_for_numbers_spanning_a_decade():
    assert _log_axis([1e-3, 1e-2, 1e-1]) == "log"
    assert _log_axis([0.0, 1e-3, 1e-1]) == "symlog"
    assert _log_axis([1.0, 2.0]) is None and _log_axis([None, None]) is None


def write_study(folder: Path, **content) -> Path:
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump({"set": TINY, **content}, sort_keys=False))
    return path


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


def test_plan_names_and_override_layers(tmp_path: Path):
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


def test_tiny_study_runs_resumes_and_reports(tmp_path: Path, capsys):
    path = write_study(tmp_path, name="tiny", vary="optim.lr", values=[1e-3, 1e-1],
                       panels={"adamw": {"optim.name": "adamw"}, "sgd": {"optim.name": "sgd"}})
    out = tmp_path / "out"
    outcomes = run_study(path, out=str(out))
    assert [o.status for o in outcomes] == ["done"] * 4
    assert "units (ever dead" in capsys.readouterr().out
    for name in ("dead_over_training.png", "final_dead.png", "overlap.png", "report.md", "study.csv"):
        assert (out / name).is_file(), name
    with (out / "study.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["adamw-0.001-s0", "adamw-0.1-s0", "sgd-0.001-s0", "sgd-0.1-s0"]
    assert all(r["units"] == "48" and 0 <= float(r["dead_frac"]) <= 1 for r in rows)
    metrics = [json.loads(x) for x in (out / "sgd-0.1-s0" / "metrics.jsonl").read_text().splitlines()]
    steps = [c["step"] for c in death_checks(metrics)]
    assert steps == [0, 2, 4]                                     # every 2 steps and after the last
    assert "| adamw |" in (out / "report.md").read_text()

    stamps = {r["run"]: (out / r["run"] / "summary.json").stat().st_mtime_ns for r in rows}
    assert all(o.status == "skipped" for o in run_study(path, out=str(out)))
    assert stamps == {n: (out / n / "summary.json").stat().st_mtime_ns for n in stamps}

    (out / "report.md").unlink()
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").is_file() and "3 plots" in capsys.readouterr().out
