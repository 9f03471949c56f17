"""Report folders: plots (matplotlib, file-only Agg backend) and the files of ``demp report``.

``report(paths, out)`` accepts run folders and folders holding run folders (a sweep), or the
summary.csv of an earlier report (to regenerate it without the run folders), and writes to
``out``, the plots once per dataset/model group (file stems suffixed with the group where
there are several):

- ``summary.csv``: one row per run, columns ``results.COLUMNS``, sorted by method, optimizer, knob, seed;
- ``acc_vs_units.png``, ``acc_vs_params.png``, ``acc_vs_train_flops.png`` (and ``TRADEOFFS``'
  others; ``acc_vs_wall.png`` from paired runs only, none without them): one panel per
  optimizer, one curve per method (mean over seeds per knob, sorted by x), each run as a faint
  dot, dense as a dashed horizontal reference;
- ``widths_at_0.8.png``: final width per site of dense, DemP and the best baseline at 80%;
- ``run_plots/<run>_curves.png`` (loss, accuracy, size over training) and
  ``run_plots/<run>_live_units.png`` (live units per site per epoch) for the runs chosen;
- ``report.md``: per group, the points with their spreads over seeds, the comparisons at matched
  units and FLOPs removed (``matched_table``) and every run (``text.markdown_report``).

``study_report(folder)`` writes a death study's report (``demp study``, or ``demp report
STUDY_DIR``) to the study folder (or ``out``), from ``study.json`` and each finished run's
``deaths`` records:

- ``dead_over_training.png``: dead fraction against the fraction of training, one line per
  value of the varied hyper-parameter, one panel per panel x series;
- ``final_dead.png``: final dead fraction against the varied hyper-parameter (log axis when its
  values span a decade or more, names otherwise), one panel per panel label (the optimizer),
  one line per series;
- ``overlap.png``: at each check, the fraction of the units dead at the previous check that
  are still dead (1.0: the dead set is absorbing);
- ``study.csv`` and ``report.md`` with the numbers.
"""
from __future__ import annotations

import csv
import fnmatch
import math
import zlib
from pathlib import Path
from statistics import mean
from typing import Any, Iterable, Optional, Sequence

from demp.core.atomic import atomic_write_text
from demp.errors import DempError
from demp.experiments.results import (DENSE, FLOPS_POINTS, Group, Row, Run, StudyResult, Variant, curve, find_failed, group_of,
                                      load_runs, load_study_results, method_keys, method_rank, row_key,
                                      rows_from_csv, split_groups, variant, write_csv)
from demp.experiments.text import markdown_report, pct, si_scale, study_markdown

_MARKERS = "osD^v<>pPX*h"

TRADEOFFS = {  # file stem: (row key, x label, x as percent); acc_vs_wall: paired runs only (see PAIRED_ONLY)
    "acc_vs_units": ("units_remaining", "units remaining (% of dense)", True),
    "acc_vs_params": ("params_remaining", "parameters remaining (% of dense)", True),
    "acc_vs_fwd_flops": ("fwd_flops_remaining", "inference FLOPs remaining (% of dense)", True),
    "acc_vs_train_flops": ("train_flops", "training compute ({}FLOPs, forward+backward, total)", False),
    "acc_vs_wall": ("wall_s", "training time (s, wall-clock; paired runs only, timed back to back)", False),
    "acc_vs_nonzero_params": ("nonzero_params_remaining", "non-zero parameters remaining (% of dense)", True),
}
PAIRED_ONLY = {"wall_s"}
"""Values that compare only between runs timed as a pair (``results.PAIRED_KEY``): plotted from those alone."""


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _style(method: Variant) -> dict:
    """A fixed colour and marker per method, so every plot reads the same: a variant keeps its
    method's marker and takes a colour of its own from another palette (tab20b, by its name)."""
    i = method_rank(Variant(method.method))[0]
    if not method.label:
        return {"color": f"C{i % 10}", "marker": _MARKERS[i % len(_MARKERS)]}
    import matplotlib
    shade = zlib.crc32(method.name.encode()) % 20
    return {"color": matplotlib.colormaps["tab20b"](shade), "marker": _MARKERS[i % len(_MARKERS)]}


# ----------------------------------------------------------------------------- runs

def plot_tradeoff(rows: Sequence[Row], x_key: str, x_label: str, percent: bool, path: Path,
                  title: str) -> Path:
    """Test accuracy vs ``x_key``: one panel per optimizer, one curve per method, dense dashed."""
    plt = _pyplot()
    optimizers = sorted({r["optimizer"] for r in rows if r.get("optimizer")}) or [None]
    fig, axes = plt.subplots(1, len(optimizers), figsize=(5.2 * len(optimizers) + 1.5, 4.4),
                             sharey=True, squeeze=False)
    if percent:
        scale = 100.0
    elif "{}" in x_label:  # FLOP counts: an SI prefix in the label instead of matplotlib's offset text
        top, prefix = si_scale(max((r[x_key] for r in rows if r.get(x_key)), default=1.0))
        scale, x_label = 1.0 / top, x_label.format(prefix)
    else:
        scale = 1.0
    handles: dict[str, Any] = {}
    for ax, opt in zip(axes[0], optimizers):
        mine = [r for r in rows if r.get("optimizer") == opt and r.get(x_key) is not None
                and r.get("test_acc") is not None]
        dense = [r for r in mine if variant(r) == DENSE]
        if dense:
            acc = 100 * mean(r["test_acc"] for r in dense)
            ax.axhline(acc, color="black", linestyle="--", linewidth=1)
            handles["dense"] = ax.scatter([scale * mean(r[x_key] for r in dense)], [acc],
                                          color="black", marker="*", s=120, zorder=3,
                                          label="dense (dashed: its accuracy)")
        for method, o in method_keys(mine):
            style = _style(method)
            ax.scatter([scale * r[x_key] for r in mine if variant(r) == method],
                       [100 * r["test_acc"] for r in mine if variant(r) == method],
                       color=style["color"], marker=style["marker"], s=14, alpha=0.35)
            pts = [p for p in curve(mine, method, o) if p[x_key] is not None]
            pts.sort(key=lambda p: p[x_key])
            handles[method.name], = ax.plot([scale * p[x_key] for p in pts], [100 * p["test_acc"] for p in pts],
                                            label=method.name, linewidth=1.5, markersize=6, **style)
        ax.set_title(f"optimizer: {opt}" if opt else "all runs")
        ax.set_xlabel(x_label)
        ax.grid(alpha=0.3)
        if percent:
            ax.set_xlim(0, 105)
    axes[0][0].set_ylabel("final test accuracy (%)")
    fig.suptitle(title)
    fig.legend(list(handles.values()), list(handles), loc="center left", bbox_to_anchor=(1.0, 0.5),
               title="method (line: mean over seeds)", frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _epoch_records(run: Run) -> list[dict]:
    """Epoch-end records, each with ``_step``: the last logged step before it (the file is in order)."""
    records, step = [], 0
    for m in run.metrics:
        if "event" in m:
            continue
        if "loss" in m and "step" in m:
            step = m["step"]
        elif "test_acc" in m:
            records.append({**m, "_step": m.get("step", step)})
    return records


def _step_records(run: Run) -> list[dict]:
    """The per-step training records (loss, lr, sizes), events left out."""
    return [m for m in run.metrics if "step" in m and "loss" in m and "event" not in m]


def plot_run_curves(run: Run, path: Path) -> Path:
    """Loss, test accuracy and network size of one run over its optimizer steps."""
    plt = _pyplot()
    steps, epochs = _step_records(run), _epoch_records(run)
    fig, (a_loss, a_acc, a_size) = plt.subplots(1, 3, figsize=(14, 3.8))
    a_loss.plot([m["step"] for m in steps], [m["loss"] for m in steps], linewidth=1,
                label="training loss (logged steps)")
    for key, label in (("train_loss", "train loss (epoch mean)"), ("test_loss", "test loss")):
        done = [m for m in epochs if m.get(key) is not None]
        if done:
            a_loss.plot([m["_step"] for m in done], [m[key] for m in done], "o-", label=label)
    a_loss.set(title="loss", xlabel="optimizer step", ylabel="cross-entropy")
    a_loss.legend(fontsize=8)
    a_acc.plot([m["_step"] for m in epochs], [100 * m["test_acc"] for m in epochs], "o-")
    a_acc.set(title="test accuracy at epoch ends", xlabel="optimizer step",
              ylabel="test accuracy (%)")
    for key, label in (("units", "units"), ("params", "parameters")):
        initial = run.summary.get(f"{key}_initial")
        if initial:
            a_size.plot([m["step"] for m in steps if m.get(key)],
                        [100 * m[key] / initial for m in steps if m.get(key)], label=label)
    a_size.set(title="network size", xlabel="optimizer step", ylabel="remaining (% of initial)",
               ylim=(0, 105))
    a_size.legend(fontsize=8)
    for ax in (a_loss, a_acc, a_size):
        ax.grid(alpha=0.3)
    fig.suptitle(f"{run.name}: final test accuracy {pct(run.summary.get('test_acc'), 2)}%, "
                 f"units remaining {pct(run.summary.get('units_remaining'))}%")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_live_units(run: Run, path: Path) -> Optional[Path]:
    """Live units of every site at each epoch end (None when the run logged none)."""
    records = [m for m in _epoch_records(run) if isinstance(m.get("live_units"), dict)]
    if not records:
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator
    sites = list(records[0]["live_units"])
    cmap = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    for i, site in enumerate(sites):
        ax.plot([m["epoch"] for m in records], [m["live_units"].get(site, 0) for m in records],
                "o-", markersize=3, linewidth=1.2, color=cmap(i / max(1, len(sites) - 1)), label=site)
    ax.set(title=f"{run.name}: live units per site (colour: depth, input side dark)",
           xlabel="epoch", ylabel="live units (channels / features)")
    ax.set_ylim(bottom=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False,
              ncol=max(1, math.ceil(len(sites) / 24)))
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_widths(runs: Sequence[Run], path: Path, target: float = 0.8, optimizer: str = "adamw") -> Optional[Path]:
    """Final width per site: dense, the DemP run that removed closest to ``target`` of the units
    (any variant) and the most accurate baseline at ``target`` (one optimizer); shows where each
    method takes its units from.  None without them."""
    at = [r for r in runs if r.summary.get("optimizer") == optimizer and r.summary.get("widths_final")]
    dense = next((r for r in at if variant(r.summary) == DENSE), None)
    demp = [r for r in at if variant(r.summary).method == "demp"]
    rivals = [r for r in at if variant(r.summary).method not in ("dense", "demp")
              and r.summary.get("target") == target]
    if dense is None or not demp or not rivals:
        return None
    ours = min(demp, key=lambda r: abs(1 - r.summary["units_remaining"] - target))
    best = max(rivals, key=lambda r: r.summary["test_acc"])
    sites = list(dense.summary["widths_final"])
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(7.0, 0.45 * len(sites) + 2), 4.4))
    x = list(range(len(sites)))
    for i, run in enumerate([dense, ours, best]):
        s = run.summary
        label = "dense" if run is dense else (f"{variant(s).name} ({100 * (1 - s['units_remaining']):.0f}% of "
                                              f"units removed, {100 * s['test_acc']:.1f}%)")
        widths = [s["widths_final"].get(site, 0) for site in sites]
        ax.bar([v + (i - 1) * 0.28 for v in x], widths, width=0.28, label=label,
               color="lightgray" if run is dense else _style(Variant(s["method"]))["color"])
    ax.set_xticks(x, [str(i + 1) for i in x])
    ax.set(xlabel="ReLU site (input side first)", ylabel="units (channels / features)",
           title=f"final widths: the best baseline at {100 * target:.0f}% of units removed and the "
                 f"closest DemP run, {optimizer}")
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _kept(paths: Iterable[Path]) -> list[Path]:
    """Those of ``paths`` that exist: plots an earlier report drew from run folders no longer given."""
    return [p for p in paths if p.is_file()]


def group_plots(group: Group, rows: Sequence[Row], runs: Sequence[Run], out: Path, suffix: str, title: str,
                plot_runs: str) -> list[Path]:
    """One group's plots: the trade-offs, the widths at 80% and the per-run plots (run names
    matching the glob ``plot_runs``).  Without run folders (a report from summary.csv) the widths
    and per-run plots an earlier report drew in ``out`` are kept."""
    images = []
    for stem, (key, label, percent) in TRADEOFFS.items():
        mine = [r for r in rows if r.get("timing_group")] if key in PAIRED_ONLY else rows
        if not any(r.get(key) is not None for r in mine):   # e.g. runs older than the sparse counts
            continue
        images.append(plot_tradeoff(mine, key, label, percent, out / f"{stem}{suffix}.png",
                                    f"{title}, {group.name}: test accuracy vs {label.split(' (')[0]}"))
    names = [r["run"] for r in rows if plot_runs and fnmatch.fnmatch(r["run"], plot_runs)]
    widths = out / f"widths_at_0.8{suffix}.png"
    if not runs:
        return images + _kept([widths, *(out / "run_plots" / f"{name}_{kind}.png"
                                         for name in names for kind in ("curves", "live_units"))])
    if plot_widths(runs, widths):
        images.append(widths)
    selected = [r for r in runs if r.name in names]
    if selected:
        (out / "run_plots").mkdir(exist_ok=True)
    for run in sorted(selected, key=lambda r: row_key(r.row())):
        images.append(plot_run_curves(run, out / "run_plots" / f"{run.name}_curves.png"))
        live = plot_live_units(run, out / "run_plots" / f"{run.name}_live_units.png")
        if live:
            images.append(live)
    return images


def report(paths: Sequence[str | Path], out: str | Path, title: str = "DemP report",
           plot_runs: str = "*", flops_points: Sequence[float] = FLOPS_POINTS) -> dict[str, Path]:
    """Write summary.csv, per dataset/model group the trade-off plots and per-run plots (run
    names matching the glob ``plot_runs``; "" for none), and report.md (matched inference FLOPs
    at the fractions removed ``flops_points``) to ``out``; return the files by name.  ``paths``:
    run folders and folders holding them, or one summary.csv of an earlier report (the report
    regenerated from it alone)."""
    if not all(0 < x < 1 for x in flops_points):
        raise DempError(f"FLOPs points are fractions removed, between 0 and 1 (exclusive); got {list(flops_points)}")
    files_given = [Path(p) for p in paths if Path(p).is_file()]
    if files_given:
        if len(files_given) != len(paths) or len(files_given) > 1 or files_given[0].suffix != ".csv":
            raise DempError("give run folders or sweep folders, or a single summary.csv, not a mix: "
                            f"{', '.join(map(str, paths))}")
        runs, rows, failed = [], rows_from_csv(files_given[0]), {}
    else:
        runs = load_runs(paths)
        rows, failed = [r.row() for r in runs], find_failed(paths)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows.sort(key=row_key)
    files = {"summary.csv": out / "summary.csv"}
    write_csv(rows, files["summary.csv"])
    groups = split_groups(rows)
    images = {g: group_plots(g, mine, [r for r in runs if group_of(r.summary) == g], out,
                             "" if len(groups) == 1 else f"-{g.slug}", title, plot_runs)
              for g, mine in groups.items()}
    files.update({p.relative_to(out).as_posix(): p for group in images.values() for p in group})
    files["report.md"] = out / "report.md"
    atomic_write_text(files["report.md"], markdown_report(rows, title, images, out, failed,
                                                                flops_points=flops_points))
    return files


# ----------------------------------------------------------------------------- death studies

def log_axis(xs: Sequence[Optional[float]]) -> Optional[str]:
    """'log' (or 'symlog' with a zero) when the numbers span a decade or more; else None."""
    if any(x is None for x in xs):
        return None
    positive = [x for x in xs if x > 0]
    if len(positive) < 2 or any(x < 0 for x in xs) or max(positive) / min(positive) < 10:
        return None
    return "symlog" if len(positive) < len(xs) else "log"


def _groups(results: Sequence[StudyResult], key: str) -> list[str]:
    """Labels of ``key`` in plan order."""
    return list(dict.fromkeys(getattr(r, key) for r in results))


def _title(*parts: str) -> str:
    """A panel title from its labels ('all runs' without any)."""
    return " / ".join(p for p in parts if p) or "all runs"


def _colors(values: Sequence[str]) -> dict[str, Any]:
    """A viridis colour per value, in order."""
    import matplotlib
    cmap = matplotlib.colormaps["viridis"]
    return {v: cmap(i / max(1, len(values) - 1)) for i, v in enumerate(values)}


def plot_over_training(results: Sequence[StudyResult], vary: str, what: str, path: Path) -> Path:
    """Dead fraction ('dead') or overlap ('overlap') over training: one line per value."""
    plt = _pyplot()
    cells = [(p, s) for p in _groups(results, "panel") for s in _groups(results, "series")]
    values = _groups(results, "value")
    colors = _colors(values)
    cols = min(len(cells), 4)
    rows = math.ceil(len(cells) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False, sharey=True)
    for ax, (panel, series) in zip(axes.flat, cells):
        for r in (r for r in results if (r.panel, r.series) == (panel, series)):
            if what == "dead":
                pts = [(c["step"] / r.total_steps, r.dead_fraction(c)) for c in r.checks]
            else:
                pts = [(c["step"] / r.total_steps, c["overlap"]) for c in r.checks if c["overlap"] is not None]
            if pts:
                ax.plot(*zip(*pts), marker=".", color=colors[r.value],
                        label=f"{r.value}" + (f" s{r.seed}" if r.seed else ""))
        ax.set_title(_title(panel, series), fontsize=9)
        ax.set_xlabel("fraction of training")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(cells):]:
        ax.axis("off")
    axes[0][0].set_ylabel("dead units (fraction)" if what == "dead"
                          else "previously dead still dead (fraction)")
    entries = {label: h for ax in axes.flat for h, label in zip(*ax.get_legend_handles_labels())}
    if entries:  # one legend for all panels (a panel may have no line: no overlap yet)
        axes[0][0].legend(list(entries.values()), list(entries), title=vary, fontsize=7, title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_final(results: Sequence[StudyResult], vary: str, path: Path) -> Path:
    """Final dead fraction against the varied hyper-parameter: one panel per panel label, one line per series."""
    plt = _pyplot()
    panels, values = _groups(results, "panel"), _groups(results, "value")
    axis = log_axis([r.x for r in results])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False, sharey=True)
    for ax, panel in zip(axes[0], panels):
        for i, series in enumerate(_groups(results, "series")):
            mine = [r for r in results if (r.panel, r.series) == (panel, series)]
            pts: dict[Any, list[float]] = {}
            for r in mine:
                pts.setdefault(r.x if axis else values.index(r.value), []).append(r.dead_fraction(r.final))
            xs = sorted(pts)
            ax.plot(xs, [sum(pts[x]) / len(pts[x]) for x in xs], marker="osD^v"[i % 5], label=series or None)
        if axis == "symlog":
            ax.set_xscale("symlog", linthresh=min(r.x for r in results if r.x and r.x > 0))
        elif axis:
            ax.set_xscale("log")
        else:
            ax.set_xticks(range(len(values)), values, rotation=30, fontsize=8)
        ax.set_title(_title(panel), fontsize=9)
        ax.set_xlabel(vary)
        ax.grid(alpha=0.3)
        if any(_groups(results, "series")):
            ax.legend(fontsize=7)
    axes[0][0].set_ylabel("dead units at the end (fraction)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def study_report(folder: str | Path, out: Optional[str | Path] = None) -> dict[str, Path]:
    """Write the study's plots, study.csv and report.md (to the study folder by default)."""
    folder = Path(folder)
    plan, results = load_study_results(folder)
    out = Path(out) if out else folder
    out.mkdir(parents=True, exist_ok=True)
    rows = [r.row() for r in results]
    files = {"study.csv": out / "study.csv"}
    with files["study.csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    images = [plot_over_training(results, plan["vary"], "dead", out / "dead_over_training.png"),
              plot_final(results, plan["vary"], out / "final_dead.png"),
              plot_over_training(results, plan["vary"], "overlap", out / "overlap.png")]
    files.update({p.name: p for p in images})
    files["report.md"] = out / "report.md"
    files["report.md"].write_text(study_markdown(plan, rows, images, out, find_failed([folder])))
    return files
