"""Rendering on fabricated run folders: summary.csv, the plots and report.md of a sweep, the
widths plot, methods shown from method and label (old and new summaries alike), n and the
spread kind per point, speed-ups only for paired runs (a reason elsewhere, flagged above the
FLOPs ratio), one section per dataset/model group, a report regenerated from its summary.csv,
the study plots' log axis."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from demp.errors import DempError
from demp.experiments.render import log_axis, report
from demp.experiments.results import COLUMNS, UNPAIRED, mark_paired, read_csv, row_key
from demp.experiments.text import markdown_report
from demp.experiments.text import format_summary
from test_results import make_budget_runs, make_run, sweep  # noqa: F401 - sweep is a fixture


def test_report_writes_csv_plots_and_markdown(sweep: Path, tmp_path: Path):
    out = tmp_path / "out"
    files = report([sweep], out, title="fabricated", plot_runs="demp-adamw-*")
    with (out / "summary.csv").open() as f:
        reader = csv.reader(f)
        assert tuple(next(reader)) == COLUMNS
        body = list(reader)
    assert len(body) == 2 * (1 + 4 + 3) + 2          # the failed run has no summary: left out
    rows = read_csv(out / "summary.csv")
    assert [r["method"] for r in rows][:2] == ["dense", "dense"]
    assert rows == sorted(rows, key=row_key)
    assert rows[0]["knob"] is None and isinstance(rows[0]["seed"], int)
    for name in ("acc_vs_units.png", "acc_vs_params.png", "acc_vs_train_flops.png",
                 "run_plots/demp-adamw-0.001-s0_curves.png", "run_plots/demp-adamw-0.001-s0_live_units.png"):
        assert (out / name).stat().st_size > 10_000, name
    assert not (out / "run_plots" / "snap-adamw-0.3-s0_curves.png").exists()
    text = files["report.md"].read_text()
    assert "## At matched units removed" in text and "n/a" in text
    assert not (out / "acc_vs_wall.png").exists()                 # wall times of unpaired runs: no plot
    assert "| demp-adamw-0.004-s1 |" in text and "](acc_vs_units.png)" in text
    assert "| demp-sgd-0.1-s0 | Traceback: boom |" in text


def testlog_axis_only_for_numbers_spanning_a_decade():
    assert log_axis([1e-3, 1e-2, 1e-1]) == "log"
    assert log_axis([0.0, 1e-3, 1e-1]) == "symlog"
    assert log_axis([1.0, 2.0]) is None and log_axis([None, None]) is None



def test_widths_plot_and_matched_flops_section(tmp_path):
    root = make_budget_runs(tmp_path / "runs")
    files = report([root], tmp_path / "out", plot_runs="")
    assert "widths_at_0.8.png" in files and files["widths_at_0.8.png"].stat().st_size > 1000
    text = files["report.md"].read_text()
    assert "## At matched inference FLOPs" in text and "widths_at_0.8" in text


def test_old_and_new_variant_summaries_give_the_same_report(tmp_path: Path):
    """A variant written as 'demp[paper]' (before the label field) or as method demp, label paper."""
    for folder, method, label in (("old", "demp[paper]", None), ("new", "demp", "paper")):
        make_run(tmp_path / folder, "dense-adamw-s0", method="dense")
        make_run(tmp_path / folder, "demp-adamw-0.01-paper-s0", method=method, label=label, knob=0.01,
                 units=0.4, acc=0.7)
        make_run(tmp_path / folder, "snap-adamw-0.5-s0", method="snap", knob=0.5, target=0.5, units=0.5, acc=0.72)
    files = {d: report([tmp_path / d], tmp_path / f"out-{d}", plot_runs="") for d in ("old", "new")}
    for name in ("summary.csv", "report.md"):
        assert files["old"][name].read_text() == files["new"][name].read_text(), name
    assert "| demp-adamw-0.01-paper-s0 | demp[paper] | adamw |" in files["new"]["report.md"].read_text()
    assert [r["method"] for r in read_csv(files["new"]["summary.csv"])] == ["dense", "snap", "demp[paper]"]


def test_format_summary_names_the_variant(tmp_path: Path):
    run = make_run(tmp_path, "run", method="demp", label="paper", knob=0.01, units=0.5)
    summary = {**json.loads((run / "summary.json").read_text()), "width": 1.0, "lr": 1e-3, "epochs": 3, "steps": 12}
    assert format_summary(summary).startswith("demp[paper] on cifar10: vgg16_bn (width 1.0), adamw lr 0.001, "
                                              "3 epochs / 12 steps, knob 0.01")


def test_sparse_runs_get_a_plot_against_non_zero_parameters(tmp_path: Path):
    """Runs with non-zero counts (any run since sparse training) are plotted against them; runs
    without (older ones) leave that plot out instead of failing."""
    for name, sparse in (("old", None), ("rigl", 0.2)):
        make_run(tmp_path / "runs", name, method="dense", label=None if sparse is None else "rigl")
        if sparse is not None:
            path = tmp_path / "runs" / name / "summary.json"
            summary = json.loads(path.read_text())
            summary.update(nonzero_params_remaining=sparse, sparse_fwd_flops_remaining=0.3)
            path.write_text(json.dumps(summary))
    files = report([tmp_path / "runs"], tmp_path / "out")
    assert (tmp_path / "out" / "acc_vs_nonzero_params.png").is_file()
    only_old = report([tmp_path / "runs" / "old"], tmp_path / "out_old")
    assert not (tmp_path / "out_old" / "acc_vs_nonzero_params.png").exists() and files and only_old


def _line(text: str, start: str) -> list[str]:
    """The cells of the first table line of report.md starting with ``start``."""
    line = next(l for l in text.splitlines() if l.startswith(start))
    return [c.strip() for c in line.strip("|").split("|")]


def test_points_show_n_and_the_spread_kind(tmp_path: Path):
    """1, 2 and 3 seeds at three knobs: n 1 with no spread, n 2 with min-max, n 3 with the sd."""
    accs = {0.3: [0.75], 0.5: [0.70, 0.74], 0.7: [0.60, 0.62, 0.67]}
    make_run(tmp_path / "runs", "dense", method="dense", acc=0.8)
    for knob, values in accs.items():
        for seed, acc in enumerate(values):
            make_run(tmp_path / "runs", f"snap-{knob}-s{seed}", method="snap", knob=knob, target=knob,
                     units=1 - knob, acc=acc, seed=seed)
    text = report([tmp_path / "runs"], tmp_path / "out", plot_runs="")["report.md"].read_text()
    one, two, three = (_line(text, f"| snap | adamw | {k} |") for k in (0.3, 0.5, 0.7))
    assert one[3:6] == ["1", "75.00", "-"]
    assert two[3:6] == ["2", "72.00", "70.00-74.00"]
    assert three[3:6] == ["3", "63.00", "± 3.61 sd"]                    # sd of 60, 62, 67
    assert _line(text, "| 50% | snap | adamw |")[3:6] == ["72.00", "70.00-74.00", "2"]


def test_speedups_only_for_paired_runs_and_flagged_above_the_flops_ratio(sweep: Path, tmp_path: Path):
    for name in ("dense-adamw-s0", "demp-adamw-0.004-s0"):
        mark_paired(sweep / name, "A")
    for name in ("dense-adamw-s1", "demp-adamw-0.004-s1"):       # 1.5x faster for 1.33x fewer FLOPs
        mark_paired(sweep / name, "B")
    text = report([sweep], tmp_path / "out", plot_runs="")["report.md"].read_text()
    assert _line(text, "| demp-adamw-0.004-s0 |")[-3:] == ["1.25x", "80", "1.25x"]   # FLOPs ratio, wall, speed-up
    assert _line(text, "| demp-adamw-0.01-s0 |")[-1] == UNPAIRED
    assert _line(text, "| snap-sgd-0.3-s0 |")[-1] == UNPAIRED
    flagged = _line(text, "| demp-adamw-0.004-s1 |")[-1]
    assert flagged.startswith("flagged: 1.50x exceeds the training-FLOPs ratio 1.33x")
    assert "### Flagged timings" in text and _line(text, "| demp-adamw-0.004-s1 | B |")[2] == "1.50x"
    assert (tmp_path / "out" / "acc_vs_wall.png").is_file()                 # from the paired runs
    assert not re.search(r"\b1\.50x\b", text.split("### Flagged timings")[0].split("### Runs")[0])


def test_two_datasets_make_two_groups(tmp_path: Path):
    """A CIFAR run and Fashion-MNIST runs in one folder: a section and plots per group, never one
    averaged row."""
    make_run(tmp_path / "runs", "dense-cifar", method="dense", acc=0.9)
    make_run(tmp_path / "runs", "snap-cifar", method="snap", knob=0.5, target=0.5, units=0.5, acc=0.85)
    for seed in range(3):
        make_run(tmp_path / "runs", f"dense-fmnist-s{seed}", method="dense", seed=seed, acc=0.8 + seed / 100,
                 dataset="fashion_mnist")
    files = report([tmp_path / "runs"], tmp_path / "out", plot_runs="")
    text = files["report.md"].read_text()
    headings = [l for l in text.splitlines() if l.startswith("## ")]
    assert headings == ["## cifar10 / vgg16_bn, width 0.25", "## fashion_mnist / vgg16_bn, width 0.25"]
    cifar, fmnist = text.split("## fashion_mnist")
    assert _line(cifar, "| adamw |")[1:3] == ["1", "90.00"] and _line(fmnist, "| adamw |")[1:3] == ["3", "81.00"]
    assert "dense-fmnist" not in cifar and "snap" not in fmnist
    assert "acc_vs_units-cifar10-vgg16_bn-w0.25.png" in files and "acc_vs_units-fashion_mnist-vgg16_bn-w0.25.png" in files
    assert {r["dataset"] for r in read_csv(files["summary.csv"])} == {"cifar10", "fashion_mnist"}


def test_report_regenerated_from_its_summary_csv(sweep: Path, tmp_path: Path):
    """The summary.csv alone gives the same report.md (the per-run plots drawn from the run
    folders earlier are kept); a csv mixed with folders is refused."""
    mark_paired(sweep / "dense-adamw-s0", "A")
    mark_paired(sweep / "demp-adamw-0.004-s0", "A")
    out = tmp_path / "out"
    first = report([sweep], out, title="t", plot_runs="demp-adamw-0.001-*")
    text, table = first["report.md"].read_text(), first["summary.csv"].read_text()
    again = report([out / "summary.csv"], out, title="t", plot_runs="demp-adamw-0.001-*")
    assert again["summary.csv"].read_text() == table
    failed = text.split("## Failed runs")[0]                   # failures are not in summary.csv
    assert again["report.md"].read_text() == failed.rstrip("\n") + "\n"
    assert "run_plots/demp-adamw-0.001-s0_curves.png" in again and "1.25x" in failed
    with pytest.raises(DempError, match="not a mix"):
        report([out / "summary.csv", sweep], tmp_path / "x")


def test_no_table_shows_a_speedup_above_its_flops_ratio(tmp_path: Path):
    """A paired 2x (half the FLOPs of its paired dense) shown next to a FLOPs ratio of 1.2x (the
    group's dense runs include a short one) is flagged in every table, never printed as 2.00x."""
    def row(run, method, knob, flops, wall, group):
        return {**dict.fromkeys(COLUMNS), "run": run, "method": method, "optimizer": "adamw", "knob": knob, "seed": 0, "test_acc": 0.7,
                "units_remaining": 1.0 if knob is None else 0.5, "train_flops": flops, "wall_s": wall,
                "timing_group": group}
    rows = [row("dense", "dense", None, 100.0, 100.0, "A"), row("dense-short", "dense", None, 20.0, 20.0, None),
            row("demp", "demp", 0.5, 50.0, 50.0, "A")]
    text = markdown_report(rows, "t", {}, tmp_path)
    flagged = "flagged: 2.00x exceeds the training-FLOPs ratio 1.20x"
    assert text.count(flagged) == 3 and "2.00x" not in text.replace(flagged, "")   # points, matched, runs


def test_text_runs_show_bits_per_byte(tmp_path: Path):
    """Runs with validation bits per byte get those columns in summary.csv and report.md (others do not)."""
    make_run(tmp_path / "img", "dense-adamw-s0", method="dense")
    assert "bits/byte" not in report([tmp_path / "img"], tmp_path / "out-img", plot_runs="")["report.md"].read_text()
    for name, method, bpb in (("dense-adamw-s0", "dense", 2.5), ("snap-adamw-0.5-s0", "snap", 2.75)):
        run = make_run(tmp_path / "lm", name, method=method, knob=0.5 if method == "snap" else None)
        path = run / "summary.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "test_bpb": bpb, "best_bpb": bpb - 0.1}))
    files = report([tmp_path / "lm"], tmp_path / "out-lm", plot_runs="")
    assert [r["test_bpb"] for r in read_csv(files["summary.csv"])] == [2.5, 2.75]
    assert "| val bits/byte | best bits/byte |" in files["report.md"].read_text()
    assert "| 2.750 | 2.650 |" in files["report.md"].read_text()
