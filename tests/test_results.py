"""Results on fabricated run folders: loading, the legacy form of a variant's method, CSV
rows and order, interpolation at matched units removed (including n/a outside a curve's
span), seed spreads (min-max at 2 seeds, sd at 3), speed-ups only between paired runs (and
flagged above the FLOPs ratio), groups by dataset and model, DemP against the best other
method with both spreads; the death-study records (the count method's counts, as the
analyses read them)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from demp.errors import DempError
from demp.experiments.results import (UNPAIRED, Group, Stat, Variant, add_speedups, death_checks, interpolate,
                                      interpolate_stat, legacy_summary, load_runs, mark_paired, matched_table,
                                      per_point, row_key, split_groups, stat, variant, versus_best,
                                      versus_each_demp_run)

SITES = ("features.0", "features.3", "features.7", "classifier.1")


def make_run(root: Path, name: str, *, method: str, optimizer: str = "adamw", knob=None, seed=0,
             units: float = 1.0, acc: float = 0.8, wall: float = 100.0, epochs: int = 3,
             target=None, label=None, dataset: str = "cifar10") -> Path:
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
               "dataset": dataset, "width": 0.25, "target": target, "fwd_flops_remaining": units ** 2,
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


def hand_made_rows(timing_group=None) -> list[dict]:
    """Dense, DemP (two seeds at knob 2) and a baseline spanning 30-60% removed, all timed in
    ``timing_group`` (None: each timed on its own)."""
    return [
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


def test_matched_table_hand_made_curves():
    rows = [{**r, "timing_group": "bench-1"} for r in hand_made_rows()]     # timed as a pair: speed-ups
    table = {(e["units_removed"], e["method"]): e for e in matched_table(rows)}
    assert set(table) == {(0.5, "demp"), (0.5, "snap"), (0.8, "demp"), (0.8, "snap")}
    d50, d80 = table[0.5, "demp"], table[0.8, "demp"]
    assert d50["test_acc"] == pytest.approx(0.75 + (0.85 - 0.75) * 0.1 / 0.4)   # between 0.4 and 0.8
    assert d50["train_flops"] == pytest.approx(40 + 40 * 0.1 / 0.4)
    assert d50["speedup"] == pytest.approx(2.0 + (1.25 - 2.0) * 0.1 / 0.4)     # 100/50, 100/80
    knob2 = (100 / 35 + 100 / 45) / 2                                          # the mean of the seeds' ratios
    assert d50["flops_ratio"] == pytest.approx(knob2 + (1.25 - knob2) * 0.1 / 0.4)
    assert d80["test_acc"] == pytest.approx(0.6 + 0.15 * 0.1 / 0.3)           # between 0.1 and 0.4
    assert d80["params_remaining"] == pytest.approx(0.01 + (0.1625 - 0.01) * 0.1 / 0.3)
    assert (d50["removed_min"], d50["removed_max"]) == pytest.approx((0.2, 0.9))
    s50, s80 = table[0.5, "snap"], table[0.8, "snap"]
    assert s50["test_acc"] == pytest.approx(0.65) and s50["speedup"] == pytest.approx(100 / 90)
    assert all(s80[k] is None for k in ("test_acc", "params_remaining", "train_flops", "speedup"))
    assert s80["speedup_note"] is None                                         # paired, only out of span
    head = versus_best(matched_table(rows))
    assert [(h["point"], h["method"], h["best"]) for h in head] == [(0.5, "demp", "snap"), (0.8, "demp", None)]
    assert head[0]["diff"] == pytest.approx(100 * (d50["test_acc"] - 0.65)) and head[1]["diff"] is None


def test_unpaired_runs_get_no_speedup_but_a_reason():
    """Wall times of runs timed separately (the same figures as above) give no speed-up; the
    training-FLOPs ratio stays."""
    rows = add_speedups(hand_made_rows())
    assert all(r["speedup"] is None and r["speedup_note"] == UNPAIRED for r in rows)
    assert [r["flops_ratio"] for r in rows[:2]] == pytest.approx([1.0, 1.25])
    table = {(e["units_removed"], e["method"]): e for e in matched_table(rows)}
    assert table[0.5, "demp"]["speedup"] is None and table[0.5, "demp"]["speedup_note"] == UNPAIRED
    assert table[0.5, "demp"]["flops_ratio"] == pytest.approx(matched_table([{**r, "timing_group": "g"} for r in
                                                                            hand_made_rows()])[0]["flops_ratio"])
    # paired with each other but not with a dense run: a different reason
    lone = add_speedups([{**r, "timing_group": "b" if r["method"] != "dense" else None} for r in hand_made_rows()])
    assert lone[1]["speedup"] is None and "no dense run" in lone[1]["speedup_note"]


def test_paired_speedups_only_within_their_group_and_flagged_above_the_flops_ratio(sweep: Path):
    """Runs marked paired by mark_paired (as bench_speedup.py marks its runs) get a speed-up
    against the dense run of their own timing group; one faster than its FLOPs saving allows is
    flagged; the others have none."""
    for name in ("dense-adamw-s0", "demp-adamw-0.004-s0"):
        mark_paired(sweep / name, "A", threads=2)
    for name in ("dense-adamw-s1", "demp-adamw-0.004-s1"):
        mark_paired(sweep / name, "B")
    summary = json.loads((sweep / "dense-adamw-s0" / "summary.json").read_text())
    assert summary["timing"]["paired"] is True and summary["timing"]["group"] == "A" and summary["timing"]["cpu"]
    rows = {r["run"]: r for r in add_speedups([r.row() for r in load_runs([sweep])])}
    # group A: dense 100 s, DemP 80 s with 0.8 of dense's training FLOPs: 1.25x, FLOPs ratio 1.25x
    assert rows["demp-adamw-0.004-s0"]["speedup"] == pytest.approx(1.25)
    assert rows["dense-adamw-s0"]["speedup"] == pytest.approx(1.0)
    # group B: dense 120 s, DemP 80 s = 1.5x, but its FLOPs ratio is 3 / 2.25 = 1.33x: flagged
    flagged = rows["demp-adamw-0.004-s1"]
    assert flagged["speedup"] is None and flagged["speedup_flagged"] == pytest.approx(1.5)
    assert flagged["speedup_note"].startswith("flagged: 1.50x exceeds the training-FLOPs ratio 1.33x")
    assert rows["demp-adamw-0.01-s0"]["speedup"] is None and rows["demp-adamw-0.01-s0"]["speedup_note"] == UNPAIRED
    assert rows["snap-sgd-0.5-s0"]["speedup_note"] == UNPAIRED
    # the FLOPs ratio is against the mean of both dense runs of the optimizer, paired or not
    assert rows["demp-adamw-0.004-s1"]["flops_ratio"] == pytest.approx(3e9 / 2.25e9)


def test_a_timing_mark_without_group_is_refused(sweep: Path):
    path = sweep / "dense-adamw-s0" / "summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "timing": {"paired": True}}))
    with pytest.raises(DempError, match="no timing group"):
        [r.row() for r in load_runs([sweep])]


def test_spread_kind_follows_the_number_of_seeds():
    assert stat([0.5]) == Stat(0.5, 0.5, 0.5, None, 1) and stat([0.5]).spread is None
    two = stat([0.7, 0.8])
    assert two.spread == "range" and (two.lo, two.hi, two.n) == (0.7, 0.8, 2)
    three = stat([0.7, 0.8, 0.9])
    assert three.spread == "sd" and three.sd == pytest.approx(0.1) and three.n == 3
    assert stat([None]) is None and stat([None, 0.4]).n == 1


def test_per_point_gives_n_and_spread_per_knob():
    """1, 2 and 3 seeds at three knobs: n and the spread kind of each point."""
    accs = {1: [0.8], 2: [0.70, 0.74], 3: [0.60, 0.62, 0.67]}
    rows = [{"method": "demp", "optimizer": "adamw", "knob": k, "seed": s, "test_acc": a,
             "units_remaining": 1 - k / 4, "train_flops": 1.0, "wall_s": 1.0}
            for k, values in accs.items() for s, a in enumerate(values)]
    points = {p["knob"]: p["stats"]["test_acc"] for p in per_point(rows)}
    assert [(points[k].n, points[k].spread) for k in (1, 2, 3)] == [(1, None), (2, "range"), (3, "sd")]
    assert (points[2].lo, points[2].hi) == (0.70, 0.74) and points[2].mean == pytest.approx(0.72)
    assert points[3].sd == pytest.approx(stat(accs[3]).sd) and points[3].mean == pytest.approx(0.63)


def test_interpolated_spread_takes_the_smaller_n():
    xs = [0.2, 0.6, 1.0]
    stats = [stat([0.5, 0.6, 0.7]), stat([0.7, 0.8, 0.9, 0.95]), stat([0.9, 1.0])]
    inside = interpolate_stat(xs, stats, 0.4)
    assert inside.n == 3 and inside.spread == "sd"
    assert inside.mean == pytest.approx((0.6 + stats[1].mean) / 2)
    assert inside.sd == pytest.approx((stats[0].sd + stats[1].sd) / 2)
    edge = interpolate_stat(xs, stats, 0.8)
    assert edge.n == 2 and edge.spread == "range" and (edge.lo, edge.hi) == pytest.approx((0.8, 0.975))
    assert interpolate_stat(xs, stats, 0.6) == stats[1] and interpolate_stat(xs, stats, 1.2) is None


def test_demp_minus_best_carries_both_spreads_and_n():
    """DemP with two seeds at 50% removed against SNAP with three seeds at 40% and 60% and
    slimming with one: the best other method (SNAP, interpolated) with its sd and n 3."""
    def row(method, knob, seed, units, acc):
        return {"method": method, "optimizer": "adamw", "knob": knob, "seed": seed, "test_acc": acc,
                "units_remaining": units, "fwd_flops_remaining": units, "train_flops": 1.0, "wall_s": 1.0}
    snap = {0.4: [0.78, 0.80, 0.82], 0.6: [0.70, 0.73, 0.76]}
    rows = [row("dense", None, 0, 1.0, 0.9), row("demp", 0.5, 0, 0.5, 0.79), row("demp", 0.5, 1, 0.5, 0.83),
            row("slimming", 0.5, 0, 0.5, 0.70),
            *[row("snap", t, s, 1 - t, a) for t, accs in snap.items() for s, a in enumerate(accs)]]
    (h,) = versus_each_demp_run(rows, "units_remaining")
    assert h["best"] == "snap" and h["best_acc"] == pytest.approx(0.765)
    assert (h["stat"].n, h["stat"].spread, h["stat"].lo, h["stat"].hi) == (2, "range", 0.79, 0.83)
    assert h["best_stat"].n == 3 and h["best_stat"].spread == "sd"
    assert h["best_stat"].sd == pytest.approx((stat(snap[0.4]).sd + stat(snap[0.6]).sd) / 2)
    assert h["diff"] == pytest.approx(100 * (0.81 - 0.765))
    (m,) = [e for e in versus_best(matched_table(rows, (0.5,))) if e["method"] == "demp"]
    assert (m["stat"].n, m["best_stat"].n, m["best"]) == (2, 3, "snap")
    assert m["diff"] == pytest.approx(h["diff"])


def test_two_datasets_make_two_groups_never_one_row(tmp_path: Path):
    """A CIFAR run and Fashion-MNIST runs in one folder: two groups, and a comparison over both refused."""
    make_run(tmp_path, "dense-cifar", method="dense", acc=0.9)
    for seed in range(3):
        make_run(tmp_path, f"dense-fmnist-s{seed}", method="dense", seed=seed, acc=0.8, dataset="fashion_mnist")
    rows = [r.row() for r in load_runs([tmp_path])]
    groups = split_groups(rows)
    assert list(groups) == [Group("cifar10", "vgg16_bn", 0.25), Group("fashion_mnist", "vgg16_bn", 0.25)]
    assert [len(g) for g in groups.values()] == [1, 3]
    assert [p["stats"]["test_acc"].n for g in groups.values() for p in per_point(g)] == [1, 3]
    with pytest.raises(DempError, match="several datasets/models"):
        matched_table(rows)


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
