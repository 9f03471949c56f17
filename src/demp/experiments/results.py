"""Finished runs as data: loading run folders and death studies, and the reports' analyses.

No plotting and no text here (``demp.experiments.render`` and ``demp.experiments.text``).

A run folder is one written by ``demp train``: ``summary.json`` (required), ``metrics.jsonl``
and ``config.yaml``.  A run's rows carry its method and its variant's ``label`` (an ablation's
name, or None) as two fields; reports group runs by both (``Variant``) and show them as
``demp[label]``.  Summaries written before the ``label`` field are read by ``legacy_summary``.

Runs are compared only within a ``Group`` (dataset, model, width): every analysis here takes the
rows of one group (``split_groups``).  A value averaged over seeds comes with its spread
(``Stat``: min-max at two seeds, the standard deviation at three or more) and its n.  A
wall-clock speed-up exists only between paired runs: timed back to back on one machine in one
process and marked so in their summaries (``PAIRED_KEY``, written by ``mark_paired``); a
paired speed-up above what the training-FLOPs ratio allows is flagged, not reported.

Accuracies in summaries are fractions in [0, 1].  Runs on text also carry ``test_bpb`` and
``best_bpb``, validation bits per byte (lower is better; best is the lowest).
"""
from __future__ import annotations

import csv
import io
import json
import math
import platform
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, stdev
from typing import Any, Iterable, Mapping, NamedTuple, Optional, Sequence

from demp.app.rundir import ERROR_NAME, METRICS_NAME, SUMMARY_NAME
from demp.core.atomic import atomic_write_json, atomic_write_text
from demp.errors import DempError
from demp.experiments.spec import PLAN_NAME, StudyRun

GROUP_COLUMNS = ("dataset", "model", "width")
COLUMNS = ("run", *GROUP_COLUMNS, "method", "optimizer", "knob", "target", "seed", "test_acc", "best_acc",
           "units_remaining", "params_remaining", "fwd_flops_final", "fwd_flops_remaining", "train_flops", "wall_s",
           "nonzero_params_remaining", "sparse_fwd_flops_remaining", "test_bpb", "best_bpb", "timing_group")
NUMERIC_COLUMNS = tuple(c for c in COLUMNS if c not in ("run", *GROUP_COLUMNS, "method", "optimizer", "knob",
                                                        "target", "seed", "timing_group"))
"""The columns a curve averages over seeds (every figure a plot or a table may use)."""
METHOD_ORDER = ("dense", "demp", "snap", "cropit", "earlysnap", "earlycrop", "slimming",
                "magnitude", "random")
MATCHED_VALUES = ("test_acc", "params_remaining", "train_flops", "flops_ratio", "speedup")
PAIRED_KEY = "timing"
"""The summary.json field marking a paired timing: {"paired": true, "group": ID, "cpu": ...}."""
SPEEDUP_SLACK = 1.1
"""A paired speed-up above the training-FLOPs ratio times this is flagged, not reported."""
UNPAIRED = "not paired: runs timed separately"
FLOPS_POINTS = (0.5, 0.75)   # fractions of inference FLOPs removed for the matched-FLOPs table

Row = dict[str, Any]


# ----------------------------------------------------------------------------- methods and variants

class Variant(NamedTuple):
    """A method as reports group it: its name and its variant's label ("" for the method itself)."""
    method: str
    label: str = ""

    @property
    def name(self) -> str:
        """How reports show it: ``demp``, or ``demp[label]`` for a variant (built, never parsed)."""
        return f"{self.method}[{self.label}]" if self.label else self.method


DENSE = Variant("dense")
"""The dense reference: method dense without a label (a labelled dense run is compared like a method)."""


def variant(entry: Mapping[str, Any]) -> Variant:
    """The method and label of a summary, a row or a matched-table entry."""
    return Variant(entry.get("method") or "", entry.get("label") or "")


class Group(NamedTuple):
    """Runs that may be compared: the same dataset, model and width (None where not recorded)."""
    dataset: Optional[str]
    model: Optional[str]
    width: Optional[float]

    @property
    def name(self) -> str:
        """How reports head the group: ``cifar10 / vgg16_bn, width 0.25``."""
        width = "" if self.width is None else f", width {self.width:g}"
        return f"{self.dataset or 'dataset not recorded'} / {self.model or 'model not recorded'}{width}"

    @property
    def slug(self) -> str:
        """The group in file names: ``cifar10-vgg16_bn-w0.25``."""
        width = "" if self.width is None else f"-w{self.width:g}"
        return f"{self.dataset or 'dataset'}-{self.model or 'model'}{width}".replace("/", "_")


def group_of(row: Mapping[str, Any]) -> Group:
    """The group of a summary or a row."""
    return Group(row.get("dataset"), row.get("model"), row.get("width"))


def split_groups(rows: Iterable[Row]) -> dict[Group, list[Row]]:
    """Rows by group, groups sorted by name, each group's rows in their order."""
    groups: dict[Group, list[Row]] = defaultdict(list)
    for r in rows:
        groups[group_of(r)].append(r)
    return {g: groups[g] for g in sorted(groups, key=lambda g: g.name)}


def one_group(rows: Sequence[Row]) -> None:
    """Refuse rows of several groups: runs of different datasets or models are never compared."""
    groups = {group_of(r) for r in rows}
    if len(groups) > 1:
        raise DempError("rows of several datasets/models given to one comparison ("
                        + "; ".join(sorted(g.name for g in groups)) + "); split them with split_groups")


def method_rank(v: Variant) -> tuple[int, str]:
    """Report order: dense, then the paper's methods, then variants and other methods by name."""
    known = v.method in METHOD_ORDER and not v.label
    return (METHOD_ORDER.index(v.method) if known else len(METHOD_ORDER), v.name)


# ----------------------------------------------------------------------------- loading

def legacy_summary(summary: dict) -> dict:
    """A summary.json in today's form.  Runs made before the ``label`` field wrote a variant as
    one string, ``"method": "demp[paper]"``, and no ``label``; this is the one place that splits
    such a string (into method ``demp`` and label ``paper``), so reports read fields only."""
    method = summary.get("method")
    if "label" in summary or not isinstance(method, str) or not method.endswith("]") or "[" not in method:
        return summary
    name, label = method[:-1].split("[", 1)
    return {**summary, "method": name, "label": label}


def load_summary(run_dir: Path) -> dict:
    """A run folder's summary.json (older forms read by ``legacy_summary``)."""
    path = run_dir / SUMMARY_NAME
    try:
        return legacy_summary(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise DempError(f"{path} is not valid JSON: {e}") from None


@dataclass
class Run:
    """One finished run folder: its summary and its metric records."""
    path: Path
    name: str                       # folder name, qualified by its parent where two runs share it
    summary: dict
    metrics: list[dict] = field(default_factory=list)

    def row(self) -> Row:
        """The summary.csv row of this run, plus its label."""
        return {**{c: self.summary.get(c) for c in COLUMNS}, "label": self.summary.get("label"), "run": self.name,
                "timing_group": timing_group(self.summary)}


def timing_group(summary: Mapping[str, Any]) -> Optional[str]:
    """The paired-timing group of a summary (``PAIRED_KEY``); None for a run timed on its own."""
    timing = summary.get(PAIRED_KEY)
    if not isinstance(timing, dict) or timing.get("paired") is not True:
        return None
    if not timing.get("group"):
        raise DempError(f"a summary marked paired has no timing group: {timing}; mark runs with mark_paired")
    return str(timing["group"])


def machine() -> str:
    """The CPU (and GPU, where torch sees one) timings were made on, in one line."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    import torch
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}{gpu}"


def mark_paired(run_dir: str | Path, group: str, **details: Any) -> dict:
    """Mark a finished run as timed in the paired group ``group`` (runs made back to back on one
    machine in one process: their wall times compare); returns the summary written."""
    path = Path(run_dir) / SUMMARY_NAME
    summary = json.loads(path.read_text())
    summary[PAIRED_KEY] = {"paired": True, "group": group, "cpu": machine(), **details}
    atomic_write_json(path, summary)
    return summary


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders (holding summary.json) at or below each path, sorted and without repeats."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if not p.is_dir():
            raise DempError(f"{p} is not a folder: give run folders, a sweep folder holding them, or a summary.csv")
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
    metrics_file = path / METRICS_NAME
    return Run(path, path.name, load_summary(path), read_jsonl(metrics_file) if metrics_file.is_file() else [])


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

def row_key(row: Row) -> tuple:
    """Sort key: method (dense first, then the paper's order), optimizer, knob, seed."""
    knob = row.get("knob")
    return (method_rank(variant(row)), row.get("optimizer") or "",
            -math.inf if knob is None else knob, row.get("seed") or 0, row.get("run", ""))


def _ratio(reference: Sequence[Row], row: Row, key: str) -> Optional[float]:
    """The mean ``key`` of the reference rows over the row's (None where a value is missing)."""
    ref = mean_or_none(r.get(key) for r in reference)
    return ref / row[key] if ref and row.get(key) else None


def add_speedups(rows: Sequence[Row], slack: float = SPEEDUP_SLACK) -> list[Row]:
    """Rows with ``flops_ratio`` (dense training FLOPs / the run's, dense of its group and
    optimizer), and ``speedup`` (dense wall_s / the run's) where it was measured: only between
    runs of one paired timing group (``timing_group``), dense of the same optimizer.  Where there
    is none, ``speedup_note`` says why; a speed-up above ``slack`` x the paired FLOPs ratio is
    flagged there (and kept in ``speedup_flagged``), not reported."""
    dense: dict[tuple, list[Row]] = defaultdict(list)
    for r in rows:
        if variant(r) == DENSE:
            dense[(group_of(r), r["optimizer"])].append(r)
            dense[(group_of(r), r["optimizer"], r.get("timing_group"))].append(r)
    out = []
    for r in rows:
        cost = dense.get((group_of(r), r["optimizer"]), [])
        paired = dense.get((group_of(r), r["optimizer"], r.get("timing_group")), [])
        entry = {**r, "flops_ratio": _ratio(cost, r, "train_flops"), "speedup": None, "speedup_note": None,
                 "speedup_flagged": None}
        speedup, bound = _ratio(paired, r, "wall_s"), _ratio(paired, r, "train_flops")
        if not r.get("timing_group"):
            entry["speedup_note"] = UNPAIRED
        elif speedup is None:
            entry["speedup_note"] = "no dense run with its wall time in its timing group"
        elif bound is not None and speedup > slack * bound:
            entry["speedup_flagged"] = speedup
            entry["speedup_note"] = f"flagged: {speedup:.2f}x exceeds the training-FLOPs ratio {bound:.2f}x"
        else:
            entry["speedup"] = speedup
        out.append(entry)
    return out


def write_csv(rows: Sequence[Row], path: Path) -> None:
    """summary.csv with exactly ``COLUMNS`` (None as an empty cell), written atomically; the
    method column names the variant as the reports do (``demp[label]``)."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(COLUMNS)
    for r in rows:
        cells = {**r, "method": variant(r).name}
        writer.writerow(["" if cells.get(c) is None else cells[c] for c in COLUMNS])
    atomic_write_text(path, text.getvalue())


def read_csv(path: str | Path) -> list[Row]:
    """Rows of a summary.csv written by ``write_csv``, numbers parsed, empty cells None (the
    method column as written: the name the reports show)."""
    def value(text: str) -> Any:
        if text == "":
            return None
        try:
            n = float(text)
        except ValueError:
            return text
        return int(n) if n.is_integer() and "." not in text and "e" not in text else n
    with Path(path).open(newline="") as f:
        return [{k: value(v) for k, v in r.items()} for r in csv.DictReader(f)]


def rows_from_csv(path: str | Path) -> list[Row]:
    """The rows of a summary.csv as reports use them (the variant split into method and label,
    columns it lacks as None), to regenerate a report from the file alone."""
    rows = read_csv(path)
    if not rows:
        raise DempError(f"{path} has no rows: give a summary.csv written by `demp report`")
    missing = [c for c in ("method", "optimizer", "test_acc", "units_remaining") if c not in rows[0]]
    if missing:
        raise DempError(f"{path} is not a summary.csv of `demp report`: no column {', '.join(missing)}")
    return [{**dict.fromkeys(COLUMNS), "label": None, **legacy_summary(r),
             "run": r.get("run") or f"row{i + 2}"} for i, r in enumerate(rows)]


def mean_or_none(values: Iterable[Any]) -> Optional[float]:
    """The mean of the values that are not None; None when there is none."""
    values = [v for v in values if v is not None]
    return mean(values) if values else None


@dataclass(frozen=True)
class Stat:
    """A value over seeds: its mean, min, max, standard deviation (None below 2 seeds) and n."""
    mean: float
    lo: float
    hi: float
    sd: Optional[float]
    n: int

    @property
    def spread(self) -> Optional[str]:
        """The spread a report gives: "range" (min-max) at 2 seeds, "sd" at 3 or more, None at 1."""
        return None if self.n < 2 else "range" if self.n == 2 else "sd"


def stat(values: Iterable[Any]) -> Optional[Stat]:
    """The ``Stat`` of the values that are not None; None when there is none."""
    v = [x for x in values if x is not None]
    if not v:
        return None
    return Stat(mean(v), min(v), max(v), stdev(v) if len(v) > 1 else None, len(v))


def curve(rows: Sequence[Row], method: Variant, optimizer: str, x_key: str = "units_remaining") -> list[Row]:
    """A method's curve for one optimizer: every value averaged over seeds per knob, sorted by
    ``x_key``, with ``seeds`` (n) and ``stats`` (a ``Stat`` per value; rows need ``speedup``
    and ``flops_ratio``, see ``add_speedups``)."""
    by_knob: dict[Any, list[Row]] = defaultdict(list)
    for r in rows:
        if variant(r) == method and r["optimizer"] == optimizer:
            by_knob[r["knob"]].append(r)
    averaged = dict.fromkeys([*NUMERIC_COLUMNS, *MATCHED_VALUES])
    points = []
    for knob, group in by_knob.items():
        stats = {k: stat(r.get(k) for r in group) for k in averaged}
        points.append({"knob": knob, "seeds": len(group), "stats": stats,
                       **{k: s.mean if s else None for k, s in stats.items()}})
    return sorted((p for p in points if p[x_key] is not None), key=lambda p: p[x_key])


def _neighbours(xs: Sequence[float], x: float, eps: float = 1e-9) -> Optional[tuple[float, float, float]]:
    """The points x0 <= x <= x1 of the sorted distinct ``xs`` around x and x's weight between
    them (x0 == x1 at a point); None when x lies outside their span by more than ``eps`` (no
    extrapolation; eps absorbs 1 - 0.8 != 0.2)."""
    pts = sorted(set(xs))
    if not pts or not pts[0] - eps <= x <= pts[-1] + eps:
        return None
    at = next((p for p in pts if abs(p - x) <= eps), None)
    if at is not None:
        return at, at, 0.0
    for x0, x1 in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return x0, x1, (x - x0) / (x1 - x0)
    raise AssertionError("unreachable: x lies within the points' span")


def interpolate(xs: Sequence[float], ys: Sequence[Optional[float]], x: float,
                eps: float = 1e-9) -> Optional[float]:
    """Linear interpolation of y at x along the points sorted by x; None when x lies outside
    the points' span by more than ``eps``.  Points with y None are left out; equal xs average."""
    pairs: dict[float, list[float]] = defaultdict(list)
    for xi, yi in zip(xs, ys):
        if yi is not None:
            pairs[xi].append(yi)
    around = _neighbours(list(pairs), x, eps)
    if around is None:
        return None
    x0, x1, w = around
    y0, y1 = mean(pairs[x0]), mean(pairs[x1])
    return y0 + (y1 - y0) * w


def interpolate_stat(xs: Sequence[float], stats: Sequence[Optional[Stat]], x: float) -> Optional[Stat]:
    """A ``Stat`` at x along a curve: mean, min, max and sd interpolated linearly between the two
    points around x, n the smaller of their n (so the spread shown is the kind both points have)."""
    have = [(xi, s) for xi, s in zip(xs, stats) if s is not None]
    around = _neighbours([xi for xi, _ in have], x)
    if around is None:
        return None
    n = min(s.n for xi, s in have if xi in around[:2])
    xs_, ss = [xi for xi, _ in have], [s for _, s in have]
    return Stat(*(interpolate(xs_, [getattr(s, k) for s in ss], x) for k in ("mean", "lo", "hi")),
                interpolate(xs_, [s.sd for s in ss], x) if n > 1 else None, n)


def method_keys(rows: Sequence[Row]) -> list[tuple[Variant, str]]:
    """(method variant, optimizer) pairs present, the dense reference excluded, in report order."""
    keys = {(variant(r), r["optimizer"]) for r in rows if variant(r) != DENSE}
    return sorted(keys, key=lambda k: (method_rank(k[0]), k[1] or ""))


def speedup_note(rows: Sequence[Row]) -> Optional[str]:
    """Why rows (one method's, after ``add_speedups``) give no speed-up: None when one does."""
    if any(r.get("speedup") is not None for r in rows):
        return None
    notes = {"flagged: above the training-FLOPs ratio (see the runs)" if r.get("speedup_flagged") is not None
             else r.get("speedup_note") or UNPAIRED for r in rows}
    return "; ".join(sorted(notes)) or UNPAIRED


def matched_table(rows: Sequence[Row], points: Sequence[float] = (0.5, 0.8),
                  x_key: str = "units_remaining") -> list[dict]:
    """Each method/optimizer of one group at matched fractions removed of ``x_key`` (units, or
    inference FLOPs with ``fwd_flops_remaining``): ``MATCHED_VALUES`` linearly interpolated along
    the method's curve (seed means per knob); a value is None ("n/a") where the curve does not
    span the point.

    One dict per (point, method, optimizer) with keys units_removed (the point, whatever
    ``x_key``), method, label, optimizer, removed_min, removed_max (the span), ``MATCHED_VALUES``,
    ``stat`` (test accuracy's ``Stat`` there, see ``interpolate_stat``) and ``speedup_note``.
    """
    one_group(rows)
    rows = add_speedups(rows) if rows and "speedup_note" not in rows[0] else list(rows)
    table = []
    for point in points:
        for method, optimizer in method_keys(rows):
            pts = curve(rows, method, optimizer, x_key)
            xs = [p[x_key] for p in pts]
            entry = {"units_removed": point, "method": method.method, "label": method.label or None,
                     "optimizer": optimizer, "removed_min": 1 - max(xs) if xs else None,
                     "removed_max": 1 - min(xs) if xs else None,
                     "stat": interpolate_stat(xs, [p["stats"]["test_acc"] for p in pts], 1 - point),
                     "speedup_note": speedup_note([r for r in rows
                                                   if (variant(r), r["optimizer"]) == (method, optimizer)])}
            for key in MATCHED_VALUES:
                entry[key] = interpolate(xs, [p[key] for p in pts], 1 - point)
            table.append(entry)
    return table


def _against(e: Mapping[str, Any], best: Optional[Mapping[str, Any]], stat_: Optional[Stat]) -> dict:
    """The DemP-minus-best fields of one comparison: DemP's accuracy and ``Stat``, the best
    other method's, and ``diff`` (points)."""
    return {"test_acc": e["test_acc"], "stat": stat_, "best": variant(best).name if best else None,
            "best_acc": best["test_acc"] if best else None, "best_stat": best.get("stat") if best else None,
            "diff": 100 * (e["test_acc"] - best["test_acc"]) if best else None}


def versus_best(table: Sequence[dict]) -> list[dict]:
    """For each point and optimizer of a ``matched_table``: every DemP form (method ``demp``,
    any label) against the best other method there; ``diff`` = DemP minus best (points), with
    both ``Stat``s (``stat``, ``best_stat``).  ``method`` and ``best`` are the names the reports show."""
    out = []
    keys = sorted({(e["units_removed"], e["optimizer"]) for e in table}, key=lambda k: (k[1] or "", k[0]))
    for point, optimizer in keys:
        here = [e for e in table if (e["units_removed"], e["optimizer"]) == (point, optimizer)
                and e["test_acc"] is not None]
        others = [e for e in here if variant(e).method != "demp"]
        best = max(others, key=lambda e: e["test_acc"], default=None)
        out += [{"point": point, "optimizer": optimizer, "method": variant(e).name, **_against(e, best, e.get("stat"))}
                for e in here if variant(e).method == "demp"]
    return out


def versus_each_demp_run(rows: Sequence[Row], x_key: str) -> list[dict]:
    """Each DemP point (seed means per form and knob) against every other method interpolated at
    that point's own fraction removed of ``x_key``: a budget lands within its tolerance, not on a
    round number.  ``diff`` = DemP minus the best other method (points), with both ``Stat``s."""
    one_group(rows)
    others = [r for r in rows if variant(r).method != "demp"]
    out = []
    for method, optimizer in method_keys(rows):
        if method.method != "demp":
            continue
        for p in curve(rows, method, optimizer, x_key):
            removed = 1 - p[x_key]
            here = [e for e in matched_table(others, [removed], x_key)
                    if e["optimizer"] == optimizer and e["test_acc"] is not None]
            best = max(here, key=lambda e: e["test_acc"], default=None)
            out.append({"method": method.name, "optimizer": optimizer, "knob": p["knob"], "removed": removed,
                        **_against(p, best, p["stats"]["test_acc"])})
    return out


def per_point(rows: Sequence[Row]) -> list[dict]:
    """Every (method, optimizer, knob) point of one group, dense included, in report order: its
    ``Stat`` per value over seeds (``stats``) and why it has no speed-up (``speedup_note``)."""
    one_group(rows)
    rows = add_speedups(rows) if rows and "speedup_note" not in rows[0] else list(rows)
    keys = sorted({(variant(r), r["optimizer"]) for r in rows}, key=lambda k: (method_rank(k[0]), k[1] or ""))
    out = []
    for method, optimizer in keys:
        for p in sorted(curve(rows, method, optimizer), key=lambda p: -math.inf if p["knob"] is None else p["knob"]):
            mine = [r for r in rows if (variant(r), r["optimizer"], r["knob"]) == (method, optimizer, p["knob"])]
            out.append({**p, "method": method.method, "label": method.label or None, "optimizer": optimizer,
                        "speedup_note": speedup_note(mine)})
    return out


# ----------------------------------------------------------------------------- death studies

@dataclass
class StudyResult(StudyRun):
    """One finished study run: what it varies and its dead-unit counts over training."""
    total_steps: int
    test_acc: float
    checks: list[dict] = field(default_factory=list)   # the count method's records, by step
    dataset: Optional[str] = None
    model: Optional[str] = None

    @property
    def final(self) -> dict:
        """The last check's counts."""
        return self.checks[-1]

    def dead_fraction(self, check: dict) -> float:
        """The fraction of units dead at a check."""
        return check["dead"] / check["units"]

    def row(self) -> dict[str, Any]:
        """The numbers of this run for study.csv and report.md."""
        last = self.final
        overlaps = [c["overlap"] for c in self.checks if c["overlap"] is not None]
        return {"run": self.name, "dataset": self.dataset, "model": self.model, "panel": self.panel,
                "series": self.series, "value": self.value,
                "seed": self.seed, "units": last["units"], "dead": last["dead"],
                "dead_frac": self.dead_fraction(last), "ever_dead_frac": last["ever_dead"] / last["units"],
                **{f"quasi_{eps}_frac": n / last["units"] for eps, n in last["quasi"].items()},
                "min_overlap": min(overlaps) if overlaps else None,
                "revived": sum(c["revived"] for c in self.checks),
                "dead_by_site": "/".join(str(n) for n in last["sites"].values()),
                "test_acc": self.test_acc}


def is_study(folder: Path) -> bool:
    """A study folder: it holds the study's plan."""
    return (Path(folder) / PLAN_NAME).is_file()


def death_checks(metrics: Sequence[dict]) -> list[dict]:
    """The count method's records from metrics lines, once per check step, in step order."""
    by_step = {c["step"]: c for record in metrics for c in record.get("deaths", ())}
    return [by_step[s] for s in sorted(by_step)]


def load_study_results(folder: Path) -> tuple[dict, list[StudyResult]]:
    """The plan and every finished run of a study folder, in plan order."""
    folder = Path(folder)
    if not is_study(folder):
        raise DempError(f"{folder} is not a study folder (no {PLAN_NAME}); run `demp study STUDY.yaml` first")
    plan = json.loads((folder / PLAN_NAME).read_text())
    results = []
    for run in plan["runs"]:
        run_dir = folder / run["name"]
        if not (run_dir / SUMMARY_NAME).is_file():
            continue
        summary = load_summary(run_dir)
        checks = death_checks(read_jsonl(run_dir / METRICS_NAME))
        if not checks:
            raise DempError(f"{run_dir} has no dead-unit counts in metrics.jsonl: was it trained with "
                            "method count (demp study)?")
        results.append(StudyResult(**run, total_steps=int(summary["steps"]), test_acc=float(summary["test_acc"]),
                                   checks=checks, dataset=summary.get("dataset"), model=summary.get("model")))
    if not results:
        raise DempError(f"no finished run in study folder {folder}")
    return plan, results
