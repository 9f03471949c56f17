"""Rendering on fabricated run folders: summary.csv, the plots and report.md of a sweep, the
widths plot, methods shown from method and label (old and new summaries alike), the
study plots' log axis."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from demp.experiments.render import log_axis, report
from demp.experiments.results import COLUMNS, read_csv, row_key
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
