"""Finished runs as data: loading run folders and death studies, and the reports' analyses.

No plotting and no text here (``demp.experiments.render`` and ``demp.experiments.text``).

A run folder is one written by ``demp train``: ``summary.json`` (required), ``metrics.jsonl``
and ``config.yaml``.  A run's rows carry its method and its variant's ``label`` (an ablation's
name, or None) as two fields; reports group runs by both (``Variant``) and show them as
``demp[label]``.  Summaries written before the ``label`` field are read by ``legacy_summary``.

Accuracies in summaries are fractions in [0, 1].  Runs on text also carry ``test_bpb`` and
``best_bpb``, validation bits per byte (lower is better; best is the lowest).
"""
from __future__ import annotations

import csv
import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean
from typing import Any, Iterable, Mapping, NamedTuple, Optional, Sequence

from demp.app.rundir import ERROR_NAME, METRICS_NAME, SUMMARY_NAME
from demp.errors import DempError
from demp.experiments.spec import PLAN_NAME, StudyRun

COLUMNS = ("method", "optimizer", "knob", "target", "seed", "test_acc", "best_acc", "units_remaining",
           "params_remaining", "fwd_flops_final", "fwd_flops_remaining", "train_flops", "wall_s",
           "nonzero_params_remaining", "sparse_fwd_flops_remaining", "test_bpb", "best_bpb")
NUMERIC_COLUMNS = tuple(c for c in COLUMNS if c not in ("method", "optimizer", "knob", "target", "seed"))
"""The columns a curve averages over seeds (every figure a plot or a table may use)."""
METHOD_ORDER = ("dense", "demp", "snap", "cropit", "earlysnap", "earlycrop", "slimming",
                "magnitude", "random")
MATCHED_VALUES = ("test_acc", "params_remaining", "train_flops", "speedup")
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
        """The summary.csv row of this run, plus its label and folder name."""
        return {**{c: self.summary.get(c) for c in COLUMNS}, "label": self.summary.get("label"), "run": self.name}


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


def add_speedups(rows: list[Row]) -> list[Row]:
    """Rows with ``speedup`` = dense wall_s / run wall_s (dense of the same optimizer and seed,
    else the mean dense time of that optimizer; None without a dense run)."""
    dense: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        if variant(r) == DENSE and r.get("wall_s"):
            dense[(r["optimizer"], r["seed"])].append(r["wall_s"])
            dense[(r["optimizer"], None)].append(r["wall_s"])
    out = []
    for r in rows:
        ref = dense.get((r["optimizer"], r["seed"])) or dense.get((r["optimizer"], None))
        out.append({**r, "speedup": mean(ref) / r["wall_s"] if ref and r.get("wall_s") else None})
    return out


def write_csv(rows: Sequence[Row], path: Path) -> None:
    """summary.csv with exactly ``COLUMNS`` (None as an empty cell); the method column names
    the variant as the reports do (``demp[label]``)."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for r in rows:
            cells = {**r, "method": variant(r).name}
            writer.writerow(["" if cells.get(c) is None else cells[c] for c in COLUMNS])


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


def mean_or_none(values: Iterable[Any]) -> Optional[float]:
    """The mean of the values that are not None; None when there is none."""
    values = [v for v in values if v is not None]
    return mean(values) if values else None


def curve(rows: Sequence[Row], method: Variant, optimizer: str, x_key: str = "units_remaining") -> list[Row]:
    """A method's curve for one optimizer: every value averaged over seeds per knob, sorted by
    ``x_key`` (rows need ``speedup``, see ``add_speedups``)."""
    by_knob: dict[Any, list[Row]] = defaultdict(list)
    for r in rows:
        if variant(r) == method and r["optimizer"] == optimizer:
            by_knob[r["knob"]].append(r)
    averaged = dict.fromkeys([*NUMERIC_COLUMNS, *MATCHED_VALUES])
    points = [{"knob": knob, "seeds": len(group), **{k: mean_or_none(r.get(k) for r in group) for k in averaged}}
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


def method_keys(rows: Sequence[Row]) -> list[tuple[Variant, str]]:
    """(method variant, optimizer) pairs present, the dense reference excluded, in report order."""
    keys = {(variant(r), r["optimizer"]) for r in rows if variant(r) != DENSE}
    return sorted(keys, key=lambda k: (method_rank(k[0]), k[1] or ""))


def matched_table(rows: Sequence[Row], points: Sequence[float] = (0.5, 0.8),
                  x_key: str = "units_remaining") -> list[dict]:
    """Each method/optimizer at matched fractions removed of ``x_key`` (units, or inference
    FLOPs with ``fwd_flops_remaining``): test_acc, params_remaining, train_flops and wall-clock
    speed-up over dense, linearly interpolated along the method's curve (seed means per knob);
    a value is None ("n/a") where the curve does not span the point.

    One dict per (point, method, optimizer) with keys units_removed (the point, whatever
    ``x_key``), method, label, optimizer, removed_min, removed_max (the span) and ``MATCHED_VALUES``.
    """
    rows = add_speedups(list(rows)) if rows and "speedup" not in rows[0] else list(rows)
    table = []
    for point in points:
        for method, optimizer in method_keys(rows):
            pts = curve(rows, method, optimizer, x_key)
            xs = [p[x_key] for p in pts]
            entry = {"units_removed": point, "method": method.method, "label": method.label or None,
                     "optimizer": optimizer, "removed_min": 1 - max(xs) if xs else None,
                     "removed_max": 1 - min(xs) if xs else None}
            for key in MATCHED_VALUES:
                entry[key] = interpolate(xs, [p[key] for p in pts], 1 - point)
            table.append(entry)
    return table


def versus_best(table: Sequence[dict]) -> list[dict]:
    """For each point and optimizer of a ``matched_table``: every DemP form (method ``demp``,
    any label) against the best other method there; ``diff`` = DemP minus best (points).
    ``method`` and ``best`` are the names the reports show."""
    out = []
    keys = sorted({(e["units_removed"], e["optimizer"]) for e in table}, key=lambda k: (k[1] or "", k[0]))
    for point, optimizer in keys:
        here = [e for e in table if (e["units_removed"], e["optimizer"]) == (point, optimizer)
                and e["test_acc"] is not None]
        others = [e for e in here if variant(e).method != "demp"]
        best = max(others, key=lambda e: e["test_acc"], default=None)
        for e in here:
            if variant(e).method == "demp":
                out.append({"point": point, "optimizer": optimizer, "method": variant(e).name,
                            "test_acc": e["test_acc"], "best": variant(best).name if best else None,
                            "best_acc": best["test_acc"] if best else None,
                            "diff": 100 * (e["test_acc"] - best["test_acc"]) if best else None})
    return out


def versus_each_demp_run(rows: Sequence[Row], x_key: str) -> list[dict]:
    """Each DemP point (seed means per form and knob) against every other method interpolated at
    that point's own fraction removed of ``x_key``: a budget lands within its tolerance, not on a
    round number.  ``diff`` = DemP minus the best other method (points)."""
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
                        "test_acc": p["test_acc"], "best": variant(best).name if best else None,
                        "best_acc": best["test_acc"] if best else None,
                        "diff": 100 * (p["test_acc"] - best["test_acc"]) if best else None})
    return out


# ----------------------------------------------------------------------------- death studies

@dataclass
class StudyResult(StudyRun):
    """One finished study run: what it varies and its dead-unit counts over training."""
    total_steps: int
    test_acc: float
    checks: list[dict] = field(default_factory=list)   # the count method's records, by step

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
        return {"run": self.name, "panel": self.panel, "series": self.series, "value": self.value,
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
        results.append(StudyResult(**run, total_steps=int(summary["steps"]),
                                   test_acc=float(summary["test_acc"]), checks=checks))
    if not results:
        raise DempError(f"no finished run in study folder {folder}")
    return plan, results
