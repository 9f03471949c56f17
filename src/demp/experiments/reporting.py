"""Aggregate finished runs into a CSV, trade-off plots and a markdown report (``demp report``).

A run folder is one written by ``demp train``: ``summary.json`` (required), ``metrics.jsonl``
and ``config.yaml``.  ``report(paths, out)`` accepts run folders and folders holding run
folders (a sweep), and writes to ``out``:

- ``summary.csv``: one row per run, columns ``COLUMNS``, sorted by method, optimizer, knob, seed;
- ``acc_vs_units.png``, ``acc_vs_params.png``, ``acc_vs_train_flops.png``: one panel per
  optimizer, one curve per method (mean over seeds per knob, sorted by x), each run as a faint
  dot, dense as a dashed horizontal reference;
- ``run_plots/<run>_curves.png`` (loss, accuracy, size over training) and
  ``run_plots/<run>_live_units.png`` (live units per site per epoch) for the runs chosen;
- ``report.md``: the comparison at matched units removed (``matched_table``) and every run.

Accuracies in summaries are fractions in [0, 1]; the report shows percentages.
"""
from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean
from typing import Any, Iterable, Optional, Sequence

from demp.app.rundir import ERROR_NAME, METRICS_NAME, SUMMARY_NAME
from demp.errors import DempError

COLUMNS = ("method", "optimizer", "knob", "target", "seed", "test_acc", "best_acc", "units_remaining",
           "params_remaining", "fwd_flops_final", "fwd_flops_remaining", "train_flops", "wall_s")
METHOD_ORDER = ("dense", "demp", "snap", "cropit", "earlysnap", "earlycrop", "slimming",
                "magnitude", "random")
MATCHED_VALUES = ("test_acc", "params_remaining", "train_flops", "speedup")
FLOPS_POINTS = (0.5, 0.75)   # fractions of inference FLOPs removed for the matched-FLOPs table
_MARKERS = "osD^v<>pPX*h"

Row = dict[str, Any]


# ----------------------------------------------------------------------------- loading

@dataclass
class Run:
    """One finished run folder: its summary and its metric records."""
    path: Path
    name: str                       # folder name, qualified by its parent where two runs share it
    summary: dict
    metrics: list[dict] = field(default_factory=list)

    def row(self) -> Row:
        """The summary.csv row of this run, plus its folder name."""
        return {**{c: self.summary.get(c) for c in COLUMNS}, "run": self.name}


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders (holding summary.json) at or below each path, sorted and without repeats."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if not p.is_dir():
            raise DempError(f"{p} is not a folder: give run folders or a sweep folder holding them")
        found.update(s.parent.resolve() for s in p.rglob(SUMMARY_NAME))
    return sorted(found)


def find_failed(paths: Iterable[str | Path]) -> dict[str, str]:
    """Runs that failed (error.txt, no summary.json) at or below each path: name -> last error line."""
    failed = {}
    for p in map(Path, paths):
        for error in sorted(p.rglob(ERROR_NAME)):
            if not (error.parent / SUMMARY_NAME).is_file():
                lines = error.read_text().strip().splitlines()
                failed[error.parent.name] = lines[-1] if lines else "no message"
    return failed


def read_jsonl(path: Path) -> list[dict]:
    """JSON lines of a file, skipping torn or blank lines (a run killed mid-write)."""
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def load_run(path: Path) -> Run:
    """Read a run folder's summary.json and (if present) metrics.jsonl."""
    try:
        summary = json.loads((path / SUMMARY_NAME).read_text())
    except json.JSONDecodeError as e:
        raise DempError(f"{path / 'summary.json'} is not valid JSON: {e}") from None
    metrics_file = path / METRICS_NAME
    return Run(path, path.name, summary, read_jsonl(metrics_file) if metrics_file.is_file() else [])


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    """Every finished run at or below ``paths``; DempError when there is none."""
    paths = list(paths)
    runs = [load_run(p) for p in find_runs(paths)]
    if not runs:
        raise DempError(f"no finished run (a folder with summary.json) under {', '.join(map(str, paths))}")
    counts = Counter(r.name for r in runs)
    for r in runs:  # the same run name from two sweeps: keep both apart
        if counts[r.name] > 1:
            r.name = f"{r.path.parent.name}-{r.name}"
    return runs


# ----------------------------------------------------------------------------- rows and tables

def _method_rank(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method or "")


def row_key(row: Row) -> tuple:
    """Sort key: method (dense first, then the paper's order), optimizer, knob, seed."""
    knob = row.get("knob")
    return (_method_rank(row.get("method")), row.get("optimizer") or "",
            -math.inf if knob is None else knob, row.get("seed") or 0, row.get("run", ""))


def add_speedups(rows: list[Row]) -> list[Row]:
    """Rows with ``speedup`` = dense wall_s / run wall_s (dense of the same optimizer and seed,
    else the mean dense time of that optimizer; None without a dense run)."""
    dense: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        if r["method"] == "dense" and r.get("wall_s"):
            dense[(r["optimizer"], r["seed"])].append(r["wall_s"])
            dense[(r["optimizer"], None)].append(r["wall_s"])
    out = []
    for r in rows:
        ref = dense.get((r["optimizer"], r["seed"])) or dense.get((r["optimizer"], None))
        out.append({**r, "speedup": mean(ref) / r["wall_s"] if ref and r.get("wall_s") else None})
    return out


def write_csv(rows: Sequence[Row], path: Path) -> None:
    """summary.csv with exactly ``COLUMNS`` (None as an empty cell)."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for r in rows:
            writer.writerow(["" if r.get(c) is None else r[c] for c in COLUMNS])


def read_csv(path: str | Path) -> list[Row]:
    """Rows of a summary.csv written by ``write_csv``, numbers parsed, empty cells None."""
    def value(text: str) -> Any:
        if text == "":
            return None
        try:
            number = float(text)
        except ValueError:
            return text
        return int(number) if number.is_integer() and "." not in text and "e" not in text else number
    with Path(path).open(newline="") as f:
        return [{k: value(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _mean_or_none(values: Iterable[Any]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return mean(values) if values else None


def curve(rows: Sequence[Row], method: str, optimizer: str, x_key: str = "units_remaining") -> list[Row]:
    """A method's curve for one optimizer: every value averaged over seeds per knob, sorted by
    ``x_key`` (rows need ``speedup``, see ``add_speedups``)."""
    by_knob: dict[Any, list[Row]] = defaultdict(list)
    for r in rows:
        if r["method"] == method and r["optimizer"] == optimizer:
            by_knob[r["knob"]].append(r)
    points = [{"knob": knob, "seeds": len(group),
               **{k: _mean_or_none(r.get(k) for r in group)
                  for k in ("units_remaining", "fwd_flops_remaining", *MATCHED_VALUES, "best_acc", "wall_s")}}
              for knob, group in by_knob.items()]
    return sorted((p for p in points if p[x_key] is not None), key=lambda p: p[x_key])


def interpolate(xs: Sequence[float], ys: Sequence[Optional[float]], x: float,
                eps: float = 1e-9) -> Optional[float]:
    """Linear interpolation of y at x along the points sorted by x; None when x lies outside
    the points' span by more than ``eps`` (no extrapolation; eps absorbs 1 - 0.8 != 0.2).
    Points with y None are left out; equal xs average."""
    pairs: dict[float, list[float]] = defaultdict(list)
    for xi, yi in zip(xs, ys):
        if yi is not None:
            pairs[xi].append(yi)
    pts = sorted((xi, mean(v)) for xi, v in pairs.items())
    if not pts or not pts[0][0] - eps <= x <= pts[-1][0] + eps:
        return None
    x = min(max(x, pts[0][0]), pts[-1][0])
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return pts[0][1]  # a single point, at x


def method_keys(rows: Sequence[Row]) -> list[tuple[str, str]]:
    """(method, optimizer) pairs present, dense excluded, in report order."""
    keys = {(r["method"], r["optimizer"]) for r in rows if r["method"] != "dense"}
    return sorted(keys, key=lambda k: (_method_rank(k[0]), k[1] or ""))


def matched_table(rows: Sequence[Row], points: Sequence[float] = (0.5, 0.8),
                  x_key: str = "units_remaining") -> list[dict]:
    """Each method/optimizer at matched fractions removed of ``x_key`` (units, or inference
    FLOPs with ``fwd_flops_remaining``): test_acc, params_remaining, train_flops and wall-clock
    speed-up over dense, linearly interpolated along the method's curve (seed means per knob);
    a value is None ("n/a") where the curve does not span the point.

    One dict per (point, method, optimizer) with keys units_removed (the point, whatever
    ``x_key``), method, optimizer, removed_min, removed_max (the span) and ``MATCHED_VALUES``.
    """
    rows = add_speedups(list(rows)) if rows and "speedup" not in rows[0] else list(rows)
    table = []
    for point in points:
        for method, optimizer in method_keys(rows):
            pts = curve(rows, method, optimizer, x_key)
            xs = [p[x_key] for p in pts]
            entry = {"units_removed": point, "method": method, "optimizer": optimizer,
                     "removed_min": 1 - max(xs) if xs else None,
                     "removed_max": 1 - min(xs) if xs else None}
            for key in MATCHED_VALUES:
                entry[key] = interpolate(xs, [p[key] for p in pts], 1 - point)
            table.append(entry)
    return table


def versus_best(table: Sequence[dict]) -> list[dict]:
    """For each point and optimizer of a ``matched_table``: every DemP form (method ``demp`` or
    ``demp[label]``) against the best other method there; ``diff`` = DemP minus best (points)."""
    out = []
    keys = sorted({(e["units_removed"], e["optimizer"]) for e in table}, key=lambda k: (k[1] or "", k[0]))
    for point, optimizer in keys:
        here = [e for e in table if (e["units_removed"], e["optimizer"]) == (point, optimizer)
                and e["test_acc"] is not None]
        others = [e for e in here if not e["method"].startswith("demp")]
        best = max(others, key=lambda e: e["test_acc"], default=None)
        for e in here:
            if e["method"].startswith("demp"):
                out.append({"point": point, "optimizer": optimizer, "method": e["method"],
                            "test_acc": e["test_acc"], "best": best["method"] if best else None,
                            "best_acc": best["test_acc"] if best else None,
                            "diff": 100 * (e["test_acc"] - best["test_acc"]) if best else None})
    return out


# ----------------------------------------------------------------------------- markdown

def format_summary(summary: dict) -> str:
    """The end-of-run table: accuracy, units, parameters, FLOPs before/after, and wall time."""
    def row(name: str, before: str, after: str, ratio: str = "") -> str:
        return f"{name:<24}{before:>14}{after:>14}{ratio:>17}"

    def flops(n: float) -> str:
        return f"{n / 1e6:.2f} M" if n < 1e9 else f"{n / 1e9:.2f} G"

    s = summary
    knob = f", {s['knob_name']} {s['knob']}" if s.get("knob_name") else (f", knob {s['knob']}" if s.get("knob") is not None else "")
    lines = [f"{s['method']} on {s['dataset']}: {s['model']} (width {s['width']}), {s['optimizer']} "
             f"lr {s['lr']}, {s['epochs']} epochs / {s['steps']} steps{knob}",
             row("", "initial", "final", "final/initial"),
             row("test accuracy", "-", f"{100 * s['test_acc']:.2f}%", f"(best {100 * s['best_acc']:.2f}%)"),
             row("units", f"{s['units_initial']:,}", f"{s['units_final']:,}", f"{100 * s['units_remaining']:.1f}%"),
             row("parameters", f"{s['params_initial']:,}", f"{s['params_final']:,}",
                 f"{100 * s['params_remaining']:.1f}%"),
             row("forward FLOPs/example", flops(s["fwd_flops_initial"]), flops(s["fwd_flops_final"]),
                 f"{100 * s['fwd_flops_remaining']:.1f}%"),
             f"training FLOPs {s['train_flops'] / 1e12:.3f} T; {s['prune_events']} removal events",
             f"wall time {s['wall_s']:.1f} s training (dead checks and pruning included) "
             f"+ {s['eval_s']:.1f} s evaluation"]
    if s.get("target") is not None:
        what = "units" if s["measure"] == "units" else "forward FLOPs"
        state = ("met" if s.get("met") else "given up by the controller" if s.get("gave_up")
                 else "not met" if "met" in s else "")
        lines.append(f"budget: remove {100 * s['target']:.1f}% of {what}; reached {100 * s['reached']:.1f}%"
                     + (f" ({state})" if state else ""))
    if s.get("speed"):
        sp = s["speed"]
        lines.append(f"training format: {sp['format']} ({sp['how']})")
    return "\n".join(lines)


def _pct(v: Optional[float], digits: int = 1) -> str:
    return "n/a" if v is None else f"{100 * v:.{digits}f}"


_PREFIXES = ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def _si_scale(v: float) -> tuple[float, str]:
    """The SI prefix for ``v``: (1e9, "G") for 3.2e9."""
    return next(((s, p) for s, p in _PREFIXES if abs(v) >= s), (1.0, ""))


def _si(v: Optional[float]) -> str:
    """A count with an SI prefix (1.23 G); n/a for None."""
    if v is None:
        return "n/a"
    scale, prefix = _si_scale(v)
    return f"{v / scale:.3g} {prefix}".rstrip()


def _knob(v: Any) -> str:
    return "-" if v is None else f"{v:g}" if isinstance(v, (int, float)) else str(v)


def _speed(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


def _md_table(header: Sequence[str], lines: Iterable[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return out


def markdown_report(rows: Sequence[Row], title: str, images: Sequence[Path], out: Path,
                    failed: Optional[dict[str, str]] = None, points: Sequence[float] = (0.5, 0.8)) -> str:
    """report.md: dense reference, the matched-units comparison, every run, failures, the plots."""
    rows = add_speedups(list(rows))
    lines = [f"# {title}", "", f"{len(rows)} runs. Accuracy: final test accuracy of the pruned "
             "network (%); remaining: fraction of the dense network's units/parameters (%); "
             "train FLOPs: forward+backward FLOPs summed over steps; speed-up: dense wall-clock "
             "time / run wall-clock time (same optimizer and seed where available).", ""]
    dense = [r for r in rows if r["method"] == "dense"]
    if dense:
        lines += ["## Dense reference", ""]
        lines += _md_table(["optimizer", "seeds", "test acc", "train FLOPs", "wall s"], [
            [opt, str(len(g)), _pct(_mean_or_none(r["test_acc"] for r in g), 2),
             _si(_mean_or_none(r["train_flops"] for r in g)),
             f"{_mean_or_none(r['wall_s'] for r in g) or 0:.0f}"]
            for opt in sorted({r["optimizer"] for r in dense})
            for g in [[r for r in dense if r["optimizer"] == opt]]])
        lines.append("")
    table = matched_table(rows, points)
    if table:
        lines += ["## At matched units removed", "",
                  "Linear interpolation along each method's curve (seed means per knob); n/a where "
                  "the curve does not reach the point.", ""]
        lines += _md_table(
            ["units removed", "method", "optimizer", "test acc", "params remaining",
             "train FLOPs", "speed-up", "curve spans (removed)"],
            [[f"{100 * e['units_removed']:.0f}%", e["method"], e["optimizer"], _pct(e["test_acc"], 2),
              _pct(e["params_remaining"]), _si(e["train_flops"]), _speed(e["speedup"]),
              f"{_pct(e['removed_min'], 0)}-{_pct(e['removed_max'], 0)}%"] for e in table])
        lines.append("")
    flops_table = [e for e in matched_table(rows, FLOPS_POINTS, "fwd_flops_remaining") if e["test_acc"] is not None]
    if flops_table:
        lines += ["## At matched inference FLOPs", "",
                  "The same interpolation along the fraction of forward FLOPs removed.", ""]
        lines += _md_table(
            ["FLOPs removed", "method", "optimizer", "test acc", "params remaining", "train FLOPs", "speed-up"],
            [[f"{100 * e['units_removed']:.0f}%", e["method"], e["optimizer"], _pct(e["test_acc"], 2),
              _pct(e["params_remaining"]), _si(e["train_flops"]), _speed(e["speedup"])] for e in flops_table])
        lines.append("")
    headline = versus_best(table) + versus_best(flops_table)
    if headline:
        lines += ["## DemP minus the best other method", "",
                  "At each matched point above (units, then inference FLOPs removed): DemP's accuracy, "
                  "the best other method's, and the difference in points.", ""]
        units_rows = len(versus_best(table))
        lines += _md_table(
            ["measure", "removed", "optimizer", "DemP form", "DemP acc", "best other", "its acc", "difference"],
            [["units" if i < units_rows else "inference FLOPs", f"{100 * h['point']:.0f}%", h["optimizer"],
              h["method"], _pct(h["test_acc"], 2), h["best"] or "n/a", _pct(h["best_acc"], 2),
              "n/a" if h["diff"] is None else f"{h['diff']:+.2f}"] for i, h in enumerate(headline)])
        lines.append("")
    lines += ["## Runs", ""]
    lines += _md_table(
        ["run", "method", "optimizer", "knob", "seed", "test acc", "best acc", "units rem.",
         "params rem.", "inference FLOPs", "train FLOPs", "wall s", "speed-up"],
        [[r["run"], r["method"], r["optimizer"] or "", _knob(r["knob"]), _knob(r["seed"]),
          _pct(r["test_acc"], 2), _pct(r["best_acc"], 2), _pct(r["units_remaining"]),
          _pct(r["params_remaining"]), _si(r["fwd_flops_final"]), _si(r["train_flops"]),
          "n/a" if r["wall_s"] is None else f"{r['wall_s']:.0f}", _speed(r["speedup"])]
         for r in rows])
    if failed:
        lines += ["", "## Failed runs (see error.txt in each folder)", ""]
        lines += _md_table(["run", "error"], [[name, message.replace("|", "/")]
                                              for name, message in failed.items()])
    lines += ["", "## Plots", ""]
    lines += [f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in images if p.parent == out]
    per_run = [p for p in images if p.parent != out]
    if per_run:
        lines += ["", "Per run: " + ", ".join(f"[{p.stem}]({p.relative_to(out).as_posix()})"
                                              for p in per_run)]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- plots

def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _style(method: str) -> dict:
    """A fixed colour and marker per method, so every plot reads the same."""
    i = _method_rank(method)[0]
    return {"color": f"C{i % 10}", "marker": _MARKERS[i % len(_MARKERS)]}


TRADEOFFS = {  # file stem: (row key, x label, x as percent)
    "acc_vs_units": ("units_remaining", "units remaining (% of dense)", True),
    "acc_vs_params": ("params_remaining", "parameters remaining (% of dense)", True),
    "acc_vs_fwd_flops": ("fwd_flops_remaining", "inference FLOPs remaining (% of dense)", True),
    "acc_vs_train_flops": ("train_flops", "training compute ({}FLOPs, forward+backward, total)", False),
    "acc_vs_wall": ("wall_s", "training time (s, wall-clock; compare runs made on the same quiet machine)", False),
}


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
        top, prefix = _si_scale(max((r[x_key] for r in rows if r.get(x_key)), default=1.0))
        scale, x_label = 1.0 / top, x_label.format(prefix)
    else:
        scale = 1.0
    handles: dict[str, Any] = {}
    for ax, opt in zip(axes[0], optimizers):
        mine = [r for r in rows if r.get("optimizer") == opt and r.get(x_key) is not None
                and r.get("test_acc") is not None]
        dense = [r for r in mine if r["method"] == "dense"]
        if dense:
            acc = 100 * mean(r["test_acc"] for r in dense)
            ax.axhline(acc, color="black", linestyle="--", linewidth=1)
            handles["dense"] = ax.scatter([scale * mean(r[x_key] for r in dense)], [acc],
                                          color="black", marker="*", s=120, zorder=3,
                                          label="dense (dashed: its accuracy)")
        for method, o in method_keys(mine):
            style = _style(method)
            ax.scatter([scale * r[x_key] for r in mine if r["method"] == method],
                       [100 * r["test_acc"] for r in mine if r["method"] == method],
                       color=style["color"], marker=style["marker"], s=14, alpha=0.35)
            pts = [p for p in curve(mine, method, o) if p[x_key] is not None]
            pts.sort(key=lambda p: p[x_key])
            handles[method], = ax.plot([scale * p[x_key] for p in pts], [100 * p["test_acc"] for p in pts],
                                       label=method, linewidth=1.5, markersize=6, **style)
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
    fig.suptitle(f"{run.name}: final test accuracy {_pct(run.summary.get('test_acc'), 2)}%, "
                 f"units remaining {_pct(run.summary.get('units_remaining'))}%")
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
    dense = next((r for r in at if r.summary["method"] == "dense"), None)
    demp = [r for r in at if r.summary["method"].startswith("demp")]
    rivals = [r for r in at if not r.summary["method"].startswith(("dense", "demp"))
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
        label = "dense" if run is dense else (f"{s['method']} ({100 * (1 - s['units_remaining']):.0f}% of "
                                              f"units removed, {100 * s['test_acc']:.1f}%)")
        widths = [s["widths_final"].get(site, 0) for site in sites]
        ax.bar([v + (i - 1) * 0.28 for v in x], widths, width=0.28, label=label,
               color="lightgray" if run is dense else _style(s["method"].split("[")[0])["color"])
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


# ----------------------------------------------------------------------------- entry points

def report(paths: Sequence[str | Path], out: str | Path, title: str = "DemP report",
           plot_runs: str = "*") -> dict[str, Path]:
    """Write summary.csv, the trade-off plots, per-run plots (run names matching the glob
    ``plot_runs``; "" for none) and report.md to ``out``; return the files by name."""
    runs = load_runs(paths)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = sorted((r.row() for r in runs), key=row_key)
    files = {"summary.csv": out / "summary.csv"}
    write_csv(rows, files["summary.csv"])
    images = []
    for stem, (key, label, percent) in TRADEOFFS.items():
        images.append(plot_tradeoff(rows, key, label, percent, out / f"{stem}.png",
                                    f"{title}: test accuracy vs {label.split(' (')[0]}"))
    widths = plot_widths(runs, out / "widths_at_0.8.png")
    if widths:
        images.append(widths)
    selected = [r for r in runs if plot_runs and fnmatch.fnmatch(r.name, plot_runs)]
    if selected:
        (out / "run_plots").mkdir(exist_ok=True)
    for run in sorted(selected, key=lambda r: row_key(r.row())):
        images.append(plot_run_curves(run, out / "run_plots" / f"{run.name}_curves.png"))
        live = plot_live_units(run, out / "run_plots" / f"{run.name}_live_units.png")
        if live:
            images.append(live)
    files.update({p.relative_to(out).as_posix(): p for p in images})
    files["report.md"] = out / "report.md"
    files["report.md"].write_text(markdown_report(rows, title, images, out, find_failed(paths)))
    return files


def add_report_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``demp report``."""
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="run folders, sweep folders holding run folders, or study folders")
    parser.add_argument("--out", default=None,
                        help="output folder (default: results/NAME with --benchmark, else the "
                             "single folder given, else results/report)")
    parser.add_argument("--benchmark", default=None, metavar="NAME",
                        help="benchmark name: title of the report, output in results/NAME")
    parser.add_argument("--plot-runs", default="*", metavar="GLOB",
                        help="per-run plots for run folders whose name matches GLOB "
                             "(default: every run; '' for none)")


def report_out_dir(runs: Sequence[str], out: Optional[str], benchmark: Optional[str]) -> Path:
    """Where ``demp report`` writes: --out, else results/NAME, else the single folder given."""
    if out:
        return Path(out)
    if benchmark:
        return Path("results") / benchmark
    return Path(runs[0]) if len(runs) == 1 else Path("results") / "report"


def report_main(args: argparse.Namespace) -> int:
    """``demp report``: aggregate runs and print where the files went."""
    from demp.experiments.study_report import is_study, study_report
    studies = [Path(p) for p in args.run_dirs if is_study(Path(p))]
    if studies:  # death studies have their own report, one per study folder
        if len(studies) != len(args.run_dirs):
            raise DempError("give either study folders (holding study.json) or run/sweep folders, not both")
        given = getattr(args, "out", None)
        for folder in studies:
            out = Path(given) / folder.name if given and len(studies) > 1 else given
            files = study_report(folder, out)
            print(f"study {folder} -> {files['report.md']}, {len(files) - 2} plots")
        return 0
    benchmark = getattr(args, "benchmark", None)
    out = report_out_dir(args.run_dirs, getattr(args, "out", None), benchmark)
    files = report(args.run_dirs, out, title=benchmark or "DemP report",
                   plot_runs=getattr(args, "plot_runs", "*"))
    rows = len(read_csv(files["summary.csv"]))
    print(f"{rows} runs -> {files['summary.csv']}, {files['report.md']}, "
          f"{len(files) - 2} plots in {out}")
    return 0
