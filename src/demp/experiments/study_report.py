"""The report of a death study (``demp study``, or ``demp report STUDY_DIR``).

From ``study.json`` and each finished run's ``metrics.jsonl`` (the ``deaths`` records of the
count method) it writes to the study folder (or ``out``):

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
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from demp.app.rundir import METRICS_NAME, SUMMARY_NAME
from demp.errors import DempError
from demp.experiments.reporting import _md_table, _pyplot, find_failed, read_jsonl

PLAN_NAME = "study.json"   # written by demp.experiments.study


@dataclass
class StudyRun:
    """One run of a study and what distinguishes it (planned by demp.experiments.study)."""
    name: str
    panel: str
    series: str
    value: str
    x: Optional[float]
    seed: int


@dataclass
class StudyResult(StudyRun):
    """One finished study run: what it varies and its dead-unit counts over training."""
    total_steps: int
    test_acc: float
    checks: list[dict] = field(default_factory=list)   # the count method's records, by step

    @property
    def final(self) -> dict:
        return self.checks[-1]

    def dead_fraction(self, check: dict) -> float:
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
        summary = json.loads((run_dir / SUMMARY_NAME).read_text())
        checks = death_checks(read_jsonl(run_dir / METRICS_NAME))
        if not checks:
            raise DempError(f"{run_dir} has no dead-unit counts in metrics.jsonl: was it trained with "
                            "method count (demp study)?")
        results.append(StudyResult(**run, total_steps=int(summary["steps"]),
                                   test_acc=float(summary["test_acc"]), checks=checks))
    if not results:
        raise DempError(f"no finished run in study folder {folder}")
    return plan, results


def _log_axis(xs: Sequence[Optional[float]]) -> Optional[str]:
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
    return " / ".join(p for p in parts if p) or "all runs"


def _colors(values: Sequence[str]) -> dict[str, Any]:
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
    axis = _log_axis([r.x for r in results])
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


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{100 * value:.1f}"
    return str(value)


def markdown(plan: dict, rows: Sequence[dict], images: Sequence[Path], out: Path,
             failed: dict[str, str]) -> str:
    """report.md: the study's numbers, one line per run, then the plots."""
    quasi = [k for k in rows[0] if k.startswith("quasi_")]
    header = ["panel", "series", plan["vary"], "seed", "dead %", "ever dead %",
              *[f"quasi-dead <= {k.split('_')[1]} %" for k in quasi], "min overlap %", "revived",
              "dead by site", "test acc %"]
    lines = [f"# Death study: {plan['name']}", "",
             f"Varied: `{plan['vary']}`.  Units are counted dead on the probe (eval mode, BatchNorm "
             "statistics re-estimated as DemP's dead check does), never removed.  *ever dead*: dead at "
             "some check; *min overlap*: the lowest fraction, over checks, of the units dead at the "
             "previous check that are still dead; *revived*: units that came back to life, summed over "
             "checks.", ""]
    lines += _md_table(header, [[r["panel"], r["series"], r["value"], str(r["seed"]), _fmt(r["dead_frac"]),
                                 _fmt(r["ever_dead_frac"]), *[_fmt(r[k]) for k in quasi],
                                 _fmt(r["min_overlap"]), str(r["revived"]), r["dead_by_site"],
                                 _fmt(r["test_acc"])] for r in rows])
    if failed:
        lines += ["", "Failed runs: " + ", ".join(f"{n} ({m})" for n, m in sorted(failed.items()))]
    lines += [""] + [f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in images]
    return "\n".join(lines) + "\n"


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
    files["report.md"].write_text(markdown(plan, rows, images, out, find_failed([folder])))
    return files

