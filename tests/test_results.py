"""Results on fabricated run folders: loading, the legacy form of a variant's method, CSV
rows and order, interpolation at matched units removed (including n/a outside a curve's
span), speed-ups, DemP against the best other method; the death-study records (the count
method's counts, as the analyses read them)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from demp.experiments.results import (Variant, death_checks, interpolate, legacy_summary, load_runs, matched_table,
                                      row_key, variant, versus_best, versus_each_demp_run)

SITES = ("features.0", "features.3", "features.7", "classifier.1")


def make_run(root: Path, name: str, *, method: str, optimizer: str = "adamw", knob=None, seed=0,
             units: float = 1.0, acc: float = 0.8, wall: float = 100.0, epochs: int = 3,
             target=None, label=None) -> Path:
    """A run folder as ``demp train`` writes it, with made-up numbers (a ``label`` as its own field)."""
    run = root / name
    run.mkdir(parents=True)
    widths = {s: 16 for s in SITES}
    records, step = [], 0
    for epoch in range(1, epochs + 1):
        for _ in range(4):
            step += 10
            frac = 1 - (1 - units) * step / (40 * epochs)
            records.append({"step": step, "epoch": epoch - 1, "loss": 2.3 / (1 + step / 20), "lr": 1e-3,
                            "lam": 0.0, "sigma": 0.0, "units": round(64 * frac),
                            "params": round(10000 * frac ** 2), "fwd_flops": 1e6 * frac ** 2})
        if method != "dense" and epoch == epochs:
            records.append({"event": "removal", "step": step, "units_removed": 3})
        live = {s: max(1, round(w * (1 - (1 - units) * epoch / epochs * (i + 1) / 2.5)))
                for i, (s, w) in enumerate(widths.items())}
        records.append({"epoch": epoch, "test_acc": acc * epoch / epochs, "test_loss": 1.0 / epoch,
                        "train_loss": 1.2 / epoch, "units": sum(live.values()), "params": 1,
                        "live_units": live, "wall_s": wall * epoch / epochs})
    (run / "metrics.jsonl").write_text("\n".join(map(json.dumps, records)) + "\n{torn")
    summary = {"test_acc": acc, "best_acc": acc + 0.005, "units_initial": 64,
               "units_final": round(64 * units), "units_remaining": units, "params_initial": 10000,
               "params_final": round(10000 * units ** 2), "params_remaining": units ** 2,
               "fwd_flops_initial": 1e6, "fwd_flops_final": 1e6 * units ** 2,
               "train_flops": 3e9 * (1 + units) / 2, "wall_s": wall, "eval_s": 2.0,
               "prune_events": 0 if method == "dense" else 3, "method": method,
               "optimizer": optimizer, "knob": knob, "seed": seed, "model": "vgg16_bn",
               "dataset": "cifar10", "target": target, "fwd_flops_remaining": units ** 2,
               "widths_final": {s: max(1, round(16 * units)) for s in SITES},
               **({"label": label} if label else {})}
    (run / "summary.json").write_text(json.dumps(summary))
    return run


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A sweep folder: dense, DemP and SNAP under two optimizers, a second seed, a failed run."""
    root = tmp_path / "sweep"
    for opt, base in (("adamw", 0.80), ("sgd", 0.78)):
        make_run(root, f"dense-{opt}-s0", method="dense", optimizer=opt, acc=base, wall=100.0)
        for knob, units in ((1e-3, 0.9), (4e-3, 0.6), (1e-2, 0.3), (3e-2, 0.1)):
            make_run(root, f"demp-{opt}-{knob:g}-s0", method="demp", optimizer=opt, knob=knob,
                     units=units, acc=base - 0.2 * (1 - units), wall=100.0 * (0.5 + units / 2))
        for target in (0.3, 0.5, 0.7):  # spans 30-70% removed: 80% is out of reach
            make_run(root, f"snap-{opt}-{target:g}-s0", method="snap", optimizer=opt, knob=target,
                     units=1 - target, acc=base - 0.3 * target, wall=100.0 * (1 - target / 2), target=target)
    make_run(root, "dense-adamw-s1", method="dense", seed=1, acc=0.82, wall=120.0)
    make_run(root, "demp-adamw-0.004-s1", method="demp", knob=4e-3, seed=1, units=0.5, acc=0.74,
             wall=80.0)
    (root / "demp-sgd-0.1-s0").mkdir()
    (root / "demp-sgd-0.1-s0" / "error.txt").write_text("Traceback: boom")
    return root


def test_legacy_summary_splits_an_old_variant_string_once():
    assert legacy_summary({"method": "demp[a05-r1]", "seed": 0}) == {"method": "demp", "label": "a05-r1", "seed": 0}
    new = {"method": "demp", "label": "paper"}
    assert legacy_summary(new) is new
    assert legacy_summary({"method": "snap"}) == {"method": "snap"}


def test_variants_come_from_method_and_label(tmp_path: Path):
    """An old summary (method 'demp[paper]') and a new one (method demp, label paper) give the same row;
    variants sort after the plain methods, by name; every DemP form meets the best other method."""
    make_run(tmp_path / "old", "demp-p", method="demp[paper]", knob=0.5, units=0.5)
    make_run(tmp_path / "new", "demp-p", method="demp", label="paper", knob=0.5, units=0.5)
    old, new = ([r.row() for r in load_runs([tmp_path / d])] for d in ("old", "new"))
    assert old == new and variant(new[0]) == Variant("demp", "paper") and variant(new[0]).name == "demp[paper]"
    rows = [{"method": m, "label": label} for m, label in
            (("snap", None), ("demp", "paper"), ("demp", None), ("dense", None), ("dense", "x"))]
    assert [variant(r).name for r in sorted(rows, key=row_key)] == ["dense", "demp", "snap", "demp[paper]", "dense[x]"]
    table = [{"units_removed": 0.5, "optimizer": "adamw", "method": m, "label": label, "test_acc": acc}
             for m, label, acc in (("demp", None, 0.7), ("demp", "paper", 0.6), ("snap", None, 0.65))]
    assert [(h["method"], h["best"]) for h in versus_best(table)] == [("demp", "snap"), ("demp[paper]", "snap")]


def test_interpolate_inside_outside_and_at_ends():
    xs, ys = [0.2, 0.5, 0.9], [10.0, 40.0, 80.0]
    assert interpolate(xs, ys, 0.35) == pytest.approx(25.0)
    assert interpolate(xs, ys, 0.7) == pytest.approx(60.0)
    assert interpolate(list(reversed(xs)), list(reversed(ys)), 0.7) == pytest.approx(60.0)
    assert interpolate(xs, ys, 0.2) == 10.0 and interpolate(xs, ys, 0.9) == 80.0
    assert interpolate(xs, ys, 0.1) is None and interpolate(xs, ys, 0.95) is None
    assert interpolate([0.5], [3.0], 0.5) == 3.0 and interpolate([0.5], [3.0], 0.4) is None
    assert interpolate([0.2, 0.2, 0.6], [1.0, 3.0, 6.0], 0.4) == pytest.approx(4.0)  # ties average
    assert interpolate([0.2, 0.6], [None, 6.0], 0.4) is None                          # missing y
    assert interpolate([0.2, 0.6], [1.0, 5.0], 1 - 0.8) == pytest.approx(1.0)          # 0.19999...
    assert interpolate([], [], 0.5) is None


def test_matched_table_hand_made_curves():
    rows = [
        {"method": "dense", "optimizer": "adamw", "knob": None, "seed": 0, "test_acc": 0.9,
         "units_remaining": 1.0, "params_remaining": 1.0, "train_flops": 100.0, "wall_s": 100.0},
        # DemP, two seeds at knob 2 (mean units 0.4): curve (0.8, 0.85) (0.4, 0.75) (0.1, 0.6)
        *[{"method": "demp", "optimizer": "adamw", "knob": k, "seed": s, "test_acc": a,
           "units_remaining": u, "params_remaining": u ** 2, "train_flops": 100 * u, "wall_s": w}
          for k, s, u, a, w in ((1, 0, 0.8, 0.85, 80.0), (2, 0, 0.35, 0.70, 50.0),
                                (2, 1, 0.45, 0.80, 50.0), (3, 0, 0.1, 0.60, 25.0))],
        # a baseline reaching only 30-60% removed
        *[{"method": "snap", "optimizer": "adamw", "knob": t, "seed": 0, "test_acc": 0.9 - t / 2,
           "units_remaining": 1 - t, "params_remaining": 1 - t, "train_flops": 90.0, "wall_s": 90.0}
          for t in (0.3, 0.6)],
    ]
    table = {(e["units_removed"], e["method"]): e for e in matched_table(rows)}
    assert set(table) == {(0.5, "demp"), (0.5, "snap"), (0.8, "demp"), (0.8, "snap")}
    d50, d80 = table[0.5, "demp"], table[0.8, "demp"]
    assert d50["test_acc"] == pytest.approx(0.75 + (0.85 - 0.75) * 0.1 / 0.4)   # between 0.4 and 0.8
    assert d50["train_flops"] == pytest.approx(40 + 40 * 0.1 / 0.4)
    assert d50["speedup"] == pytest.approx(2.0 + (1.25 - 2.0) * 0.1 / 0.4)     # 100/50, 100/80
    assert d80["test_acc"] == pytest.approx(0.6 + 0.15 * 0.1 / 0.3)           # between 0.1 and 0.4
    assert d80["params_remaining"] == pytest.approx(0.01 + (0.1625 - 0.01) * 0.1 / 0.3)
    assert (d50["removed_min"], d50["removed_max"]) == pytest.approx((0.2, 0.9))
    s50, s80 = table[0.5, "snap"], table[0.8, "snap"]
    assert s50["test_acc"] == pytest.approx(0.65) and s50["speedup"] == pytest.approx(100 / 90)
    assert all(s80[k] is None for k in ("test_acc", "params_remaining", "train_flops", "speedup"))
    head = versus_best(matched_table(rows))
    assert [(h["point"], h["method"], h["best"]) for h in head] == [(0.5, "demp", "snap"), (0.8, "demp", None)]
    assert head[0]["diff"] == pytest.approx(100 * (d50["test_acc"] - 0.65)) and head[1]["diff"] is None


def test_speedup_uses_dense_of_same_seed_else_mean(sweep: Path):
    rows = [r.row() for r in load_runs([sweep])]
    table = {(e["units_removed"], e["method"], e["optimizer"]): e for e in matched_table(rows)}
    # adamw DemP at 50% removed: seed-0 (units 0.6, wall 80, dense 100) and the knob-4e-3 mean with
    # seed 1 (units 0.5, wall 80, its own dense 120): mean units 0.55, speed-up (1.25 + 1.5) / 2
    between = table[0.5, "demp", "adamw"]["speedup"]
    assert between == pytest.approx(1.375 + (100 / 65 - 1.375) * 0.05 / 0.25)
    assert table[0.8, "snap", "sgd"]["test_acc"] is None


def test_same_run_name_in_two_sweeps_kept_apart(tmp_path: Path):
    for sweep in ("a", "b"):
        make_run(tmp_path / sweep, "dense-adamw-s0", method="dense")
    names = sorted(r.name for r in load_runs([tmp_path / "a", tmp_path / "b"]))
    assert names == ["a-dense-adamw-s0", "b-dense-adamw-s0"]


def make_budget_runs(root: Path) -> Path:
    """Dense, DemP and SNAP at 50% and 80% of units removed, CropIt at 80% (adamw, one seed)."""
    make_run(root, "dense", method="dense")
    for target, acc in ((0.5, 0.7), (0.8, 0.6)):
        make_run(root, f"demp-{target}", method="demp", knob=target, target=target, units=1 - target, acc=acc)
        make_run(root, f"snap-{target}", method="snap", knob=target, target=target, units=1 - target, acc=acc - 0.05)
    make_run(root, "cropit-0.8", method="cropit", knob=0.8, target=0.8, units=0.2, acc=0.4)
    return root


def test_matched_inference_flops(tmp_path):
    root = make_budget_runs(tmp_path / "runs")
    rows = [r.row() for r in load_runs([root])]
    flops = {e["method"]: e for e in matched_table(rows, (0.75,), "fwd_flops_remaining")}
    assert flops["demp"]["test_acc"] == pytest.approx(0.7)   # 50% of units: 75% of FLOPs removed


def test_death_checks_keep_one_record_per_step():
    lines = [{"step": 1, "deaths": [{"step": 0, "dead": 1}]}, {"step": 2},
             {"step": 3, "deaths": [{"step": 2, "dead": 3}]}, {"event": "final", "deaths": [{"step": 4, "dead": 4}]}]
    assert [c["dead"] for c in death_checks(lines)] == [1, 3, 4]


def test_each_demp_point_against_the_others_at_its_own_point():
    """A budget lands near, not on, a round point: DemP at 65% removed is compared with SNAP
    interpolated at 65% (between its 50% and 80% runs), not left out."""
    def row(method, knob, units, acc, label=None):
        return {"method": method, "label": label, "optimizer": "adamw", "knob": knob, "seed": 0, "test_acc": acc,
                "units_remaining": units, "fwd_flops_remaining": units, "params_remaining": units,
                "train_flops": 1.0, "wall_s": 1.0}
    rows = [row("dense", None, 1.0, 0.9), row("snap", 0.5, 0.5, 0.80), row("snap", 0.8, 0.2, 0.70),
            row("demp", 0.65, 0.35, 0.76, label="flops")]
    (h,) = versus_each_demp_run(rows, "units_remaining")
    assert (h["method"], h["best"]) == ("demp[flops]", "snap") and h["removed"] == pytest.approx(0.65)
    assert h["best_acc"] == pytest.approx(0.75) and h["diff"] == pytest.approx(1.0)
