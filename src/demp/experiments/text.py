"""Reports as text: the end-of-run table, report.md of runs and of a death study.

``format_summary`` is the table ``demp train`` prints; ``markdown_report`` the report.md of a
set of runs and ``study_markdown`` that of a death study; the number formats are shared with
the plots.  Methods are shown by ``Variant.name`` (``demp[label]`` for a variant), accuracies
and fractions as percentages.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from demp.experiments.results import (DENSE, FLOPS_POINTS, SPEEDUP_SLACK, Group, Row, Stat, add_speedups,
                                      matched_table, mean_or_none, per_point, split_groups, stat, variant, versus_best,
                                      versus_each_demp_run)

_PREFIXES = ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


# ----------------------------------------------------------------------------- number formats

def pct(v: Optional[float], digits: int = 1) -> str:
    """A fraction as a percentage without the sign (80.0 for 0.8); n/a for None."""
    return "n/a" if v is None else f"{100 * v:.{digits}f}"


def si_scale(v: float) -> tuple[float, str]:
    """The SI prefix for ``v``: (1e9, "G") for 3.2e9."""
    return next(((s, p) for s, p in _PREFIXES if abs(v) >= s), (1.0, ""))


def si(v: Optional[float]) -> str:
    """A count with an SI prefix (1.23 G); n/a for None."""
    if v is None:
        return "n/a"
    scale, prefix = si_scale(v)
    return f"{v / scale:.3g} {prefix}".rstrip()


def _knob(v: Any) -> str:
    """A knob or seed cell: short numbers, - for none."""
    return "-" if v is None else f"{v:g}" if isinstance(v, (int, float)) else str(v)


def _speed(v: Optional[float]) -> str:
    """A ratio cell, a speed-up or a FLOPs ratio (1.25x); n/a for None."""
    return "n/a" if v is None else f"{v:.2f}x"


def md_table(header: Sequence[str], lines: Iterable[Sequence[str]]) -> list[str]:
    """A markdown table's lines: header, rule, one line per row."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return out


# ----------------------------------------------------------------------------- one run

def format_summary(summary: dict) -> str:
    """The end-of-run table: accuracy (text: and bits per byte), units, parameters, FLOPs before/after,
    and wall time."""
    def row(name: str, before: str, after: str, ratio: str = "") -> str:
        return f"{name:<24}{before:>14}{after:>14}{ratio:>17}"

    def flops(n: float) -> str:
        return f"{n / 1e6:.2f} M" if n < 1e9 else f"{n / 1e9:.2f} G"

    s = summary
    knob = f", {s['knob_name']} {s['knob']}" if s.get("knob_name") else (f", knob {s['knob']}" if s.get("knob") is not None else "")
    lines = [f"{variant(s).name} on {s['dataset']}: {s['model']} (width {s['width']}), {s['optimizer']} "
             f"lr {s['lr']}, {s['epochs']} epochs / {s['steps']} steps{knob}",
             row("", "initial", "final", "final/initial"),
             row("test accuracy", "-", f"{100 * s['test_acc']:.2f}%", f"(best {100 * s['best_acc']:.2f}%)"),
             *([row("validation bits/byte", "-", f"{s['test_bpb']:.4f}", f"(best {s['best_bpb']:.4f})")]
               if s.get("test_bpb") is not None else []),
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
        state = ("met" if s.get("met") else "stopped by a collapse" if s.get("stopped")
                 else "given up by the controller" if s.get("gave_up") else "not met" if "met" in s else "")
        dead = f", {100 * s['dead']:.1f}% dead" if s.get("dead") is not None else ""
        lines.append(f"budget: remove {100 * s['target']:.1f}% of {what}; reached {100 * s['reached']:.1f}%{dead}"
                     + (f" ({state})" if state else ""))
        if s.get("overshoot"):
            lines.append(f"  deaths overshot the budget by {100 * s['overshoot']:.1f}% of {what} (beyond its tolerance)")
        lines += [f"  shortfall: {cause}" for cause in s.get("causes") or ()]
    if s.get("collapsed"):
        c = s["collapsed"]
        lines.append(f"COLLAPSED at step {c['step']}: {c['signal']} {c['before']:.4g} -> {c['after']:.4g}; "
                     f"likely cause: {c['cause']}")
    if s.get("widths_from"):
        w = s["widths_from"]
        lines.append(f"widths from {w['path']} ({variant(w).name}, {w.get('knob_name') or 'knob'} {w.get('knob')}, "
                     f"seed {w.get('seed')}; test accuracy {100 * w['test_acc']:.2f}%), trained from scratch; "
                     "'initial' is the full-width network")
    if s.get("sparse"):
        sp = s["sparse"]
        lines.append(f"sparse: {sp['method']} to density {sp['density']:g} ({sp['distribution']}); non-zero parameters "
                     f"{s['nonzero_params_final']:,} ({100 * s['nonzero_params_remaining']:.1f}% of the dense network's), "
                     f"sparse forward FLOPs {100 * s['sparse_fwd_flops_remaining']:.1f}%")
    if s.get("speed"):
        sp = s["speed"]
        lines.append(f"training format: {sp['format']} ({sp['how']})")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- runs

SPREAD_NOTE = ("n: seeds; spread: min-max of the seed values at 2 seeds, ± their standard deviation at 3 "
               "or more (- at 1); between two knob points, interpolated, n the smaller of the two")


def spread(s: Optional[Stat], digits: int = 2) -> str:
    """A Stat's spread as a percentage: min-max at 2 seeds, ± sd at 3 or more, - at 1; n/a for None."""
    if s is None:
        return "n/a"
    if s.spread == "range":
        return f"{pct(s.lo, digits)}-{pct(s.hi, digits)}"
    return f"± {pct(s.sd, digits)} sd" if s.spread == "sd" else "-"


def _n(s: Optional[Stat]) -> str:
    """A Stat's n; n/a for None."""
    return "n/a" if s is None else str(s.n)


def _removed(s: Optional[Stat]) -> str:
    """The fraction removed (1 - a remaining Stat) as a percentage with its spread in brackets."""
    if s is None:
        return "n/a"
    removed = Stat(1 - s.mean, 1 - s.hi, 1 - s.lo, s.sd, s.n)
    same = pct(removed.lo) == pct(removed.hi)     # every seed removed the same (a budget met)
    return pct(removed.mean) + ("" if removed.spread is None or same else f" ({spread(removed, 1)})")


def _speed_cell(v: Optional[float], note: Optional[str], flops_ratio: Optional[float]) -> str:
    """A speed-up cell: the paired speed-up (1.25x), else why there is none, else n/a.  A
    speed-up above what the training-FLOPs ratio allows is never shown as one, whatever the table."""
    if v is not None and flops_ratio is not None and v > SPEEDUP_SLACK * flops_ratio:
        return f"flagged: {v:.2f}x exceeds the training-FLOPs ratio {flops_ratio:.2f}x"
    return _speed(v) if v is not None else note or "n/a"


def _dense_section(rows: Sequence[Row]) -> list[str]:
    """The dense reference per optimizer (nothing without dense runs)."""
    dense = [r for r in rows if variant(r) == DENSE]
    if not dense:
        return []
    return ["### Dense reference", "", *md_table(["optimizer", "n", "test acc", "spread", "train FLOPs", "wall s"], [
        [opt, _n(acc), pct(acc.mean, 2), spread(acc), si(mean_or_none(r["train_flops"] for r in g)),
         f"{mean_or_none(r['wall_s'] for r in g) or 0:.0f}"]
        for opt in sorted({r["optimizer"] for r in dense})
        for g in [[r for r in dense if r["optimizer"] == opt]]
        for acc in [stat(r["test_acc"] for r in g)]]), ""]


def _points_section(rows: Sequence[Row]) -> list[str]:
    """Every (method, optimizer, knob) point: seed means with spreads and n."""
    points = per_point(rows)
    lines = ["### Per point (mean over seeds)", "",
             f"One line per method, optimizer and knob ({SPREAD_NOTE}).  Units and inference FLOPs removed "
             "carry their spread in brackets where the seeds differ.", ""]
    lines += md_table(
        ["method", "optimizer", "knob", "n", "test acc", "spread", "units removed", "inference FLOPs removed",
         "params remaining", "train FLOPs", "FLOPs ratio", "speed-up"],
        [[variant(p).name, p["optimizer"] or "", _knob(p["knob"]), _n(p["stats"]["test_acc"]),
          pct(p["test_acc"], 2), spread(p["stats"]["test_acc"]), _removed(p["stats"]["units_remaining"]),
          _removed(p["stats"]["fwd_flops_remaining"]), pct(p["params_remaining"]), si(p["train_flops"]),
          _speed(p["flops_ratio"]), _speed_cell(p["speedup"], p["speedup_note"], p["flops_ratio"])] for p in points])
    return lines + [""]


def _matched_sections(table: Sequence[dict], flops_table: Sequence[dict]) -> list[str]:
    """The comparisons at matched units and inference FLOPs removed."""
    lines = []
    for entries, what, intro, spans in (
            (table, "units removed", "Linear interpolation along each method's curve (seed means per knob); "
             "n/a where the curve does not reach the point.", True),
            (flops_table, "FLOPs removed", "The same interpolation along the fraction of forward FLOPs removed.",
             False)):
        if not entries:
            continue
        lines += [f"### At matched {'units removed' if spans else 'inference FLOPs'}", "",
                  f"{intro} Test accuracy's spread and n as in the per-point table.", ""]
        lines += md_table(
            [what, "method", "optimizer", "test acc", "spread", "n", "params remaining", "train FLOPs",
             "FLOPs ratio", "speed-up", *(["curve spans (removed)"] if spans else [])],
            [[f"{100 * e['units_removed']:.0f}%", variant(e).name, e["optimizer"], pct(e["test_acc"], 2),
              spread(e["stat"]), _n(e["stat"]), pct(e["params_remaining"]), si(e["train_flops"]),
              _speed(e["flops_ratio"]), _speed_cell(e["speedup"], e["speedup_note"], e["flops_ratio"]),
              *([f"{pct(e['removed_min'], 0)}-{pct(e['removed_max'], 0)}%"] if spans else [])] for e in entries])
        lines.append("")
    return lines


_VERSUS = ["DemP acc", "spread", "n", "best other", "its acc", "its spread", "its n", "difference"]


def _versus_cells(h: dict) -> list[str]:
    """DemP's accuracy, spread and n, the best other method's, and the difference (points)."""
    return [pct(h["test_acc"], 2), spread(h["stat"]), _n(h["stat"]), h["best"] or "n/a", pct(h["best_acc"], 2),
            spread(h["best_stat"]), _n(h["best_stat"]), "n/a" if h["diff"] is None else f"{h['diff']:+.2f}"]


def _headline_section(table: Sequence[dict], flops_table: Sequence[dict]) -> list[str]:
    """DemP minus the best other method at each matched point (nothing without DemP)."""
    units, flops = versus_best(table), versus_best(flops_table)
    if not units + flops:
        return []
    lines = ["### DemP minus the best other method", "",
             "At each matched point above (units, then inference FLOPs removed): DemP's accuracy, "
             "the best other method's, each with its spread and n, and the difference of the means in points.", ""]
    lines += md_table(
        ["measure", "removed", "optimizer", "DemP form", *_VERSUS],
        [["units" if i < len(units) else "inference FLOPs", f"{100 * h['point']:.0f}%", h["optimizer"],
          h["method"], *_versus_cells(h)] for i, h in enumerate(units + flops)])
    return lines + [""]


def _own_points_section(rows: Sequence[Row]) -> list[str]:
    """Each DemP point against the other methods at its own units and FLOPs removed."""
    found = [(label, h) for label, key in (("units", "units_remaining"), ("inference FLOPs", "fwd_flops_remaining"))
             for h in versus_each_demp_run(rows, key)]
    if not found:
        return []
    lines = ["### Each DemP point against the others at its own point", "",
             "Every other method interpolated along its curve at the fraction DemP removed (n/a where "
             "no other curve spans it); spreads and n as above.", ""]
    lines += md_table(
        ["measure", "DemP form", "optimizer", "knob", "removed", *_VERSUS],
        [[label, h["method"], h["optimizer"], _knob(h["knob"]), pct(h["removed"]), *_versus_cells(h)]
         for label, h in found])
    return lines + [""]


def _flagged_section(rows: Sequence[Row]) -> list[str]:
    """Paired speed-ups above what the training-FLOPs ratio allows: a timing to check, not a result."""
    flagged = [r for r in rows if r.get("speedup_flagged") is not None]
    if not flagged:
        return []
    lines = ["### Flagged timings", "",
             f"Paired wall-clock speed-ups above {SPEEDUP_SLACK:g} x the training-FLOPs ratio: no run can save "
             "more time than the compute it saves, so these timings are suspect and are not reported as speed-ups.", ""]
    lines += md_table(["run", "timing group", "measured", "note"],
                      [[r["run"], r["timing_group"], _speed(r["speedup_flagged"]), r["speedup_note"]] for r in flagged])
    return lines + [""]


def _bpb(value: Optional[float]) -> str:
    """Bits per byte to 3 decimals, n/a when missing."""
    return "n/a" if value is None else f"{value:.3f}"


def _runs_section(rows: Sequence[Row]) -> list[str]:
    """Every run of a group, one line each (text runs add validation bits per byte)."""
    bpb = any(r.get("test_bpb") is not None for r in rows)
    lines = ["### Runs", ""]
    lines += md_table(
        ["run", "method", "optimizer", "knob", "seed", "test acc", "best acc",
         *(["val bits/byte", "best bits/byte"] if bpb else []), "units rem.",
         "params rem.", "inference FLOPs", "train FLOPs", "FLOPs ratio", "wall s", "speed-up"],
        [[r["run"], variant(r).name, r["optimizer"] or "", _knob(r["knob"]), _knob(r["seed"]),
          pct(r["test_acc"], 2), pct(r["best_acc"], 2),
          *([_bpb(r.get("test_bpb")), _bpb(r.get("best_bpb"))] if bpb else []), pct(r["units_remaining"]),
          pct(r["params_remaining"]), si(r["fwd_flops_final"]), si(r["train_flops"]), _speed(r["flops_ratio"]),
          "n/a" if r["wall_s"] is None else f"{r['wall_s']:.0f}",
          _speed_cell(r["speedup"], r["speedup_note"], r["flops_ratio"])]
         for r in rows])
    return lines + [""]


def _plots(images: Sequence[Path], out: Path) -> list[str]:
    """Links to a group's plots: the figures inline, the per-run plots as one line of links."""
    lines = [f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in images if p.parent == out]
    per_run = [p for p in images if p.parent != out]
    if per_run:
        lines += ["", "Per run: " + ", ".join(f"[{p.stem}]({p.relative_to(out).as_posix()})" for p in per_run)]
    return lines


def group_markdown(group: Group, rows: Sequence[Row], images: Sequence[Path], out: Path,
                   points: Sequence[float] = (0.5, 0.8), flops_points: Sequence[float] = FLOPS_POINTS) -> list[str]:
    """The report.md part of one dataset/model group (rows from ``add_speedups``)."""
    table = matched_table(rows, points)
    flops_table = [e for e in matched_table(rows, flops_points, "fwd_flops_remaining") if e["test_acc"] is not None]
    lines = [f"## {group.name}", "", f"{len(rows)} runs.", ""]
    lines += (_dense_section(rows) + _points_section(rows) + _matched_sections(table, flops_table)
              + _headline_section(table, flops_table) + _own_points_section(rows) + _flagged_section(rows)
              + _runs_section(rows))
    return lines + (["### Plots", "", *_plots(images, out), ""] if images else [])


def markdown_report(rows: Sequence[Row], title: str, images: Mapping[Group, Sequence[Path]], out: Path,
                    failed: Optional[dict[str, str]] = None, points: Sequence[float] = (0.5, 0.8),
                    flops_points: Sequence[float] = FLOPS_POINTS) -> str:
    """report.md: per dataset/model group, the dense reference, the points with their spreads,
    the matched comparisons, every run and the group's plots; then failed runs."""
    groups = split_groups(add_speedups(rows))
    lines = [f"# {title}", "", f"{len(rows)} runs in {len(groups)} group{'s' if len(groups) > 1 else ''} "
             "(dataset / model, width); runs are compared only within their group.  Accuracy: final test "
             "accuracy of the pruned network (%); remaining: fraction of the dense network's units/parameters (%); "
             "train FLOPs: forward+backward FLOPs summed over steps; FLOPs ratio: dense training FLOPs / the run's "
             "(the cost comparison); speed-up: dense wall-clock time / the run's, given only for runs timed as a "
             "pair (back to back on one machine in one process, marked in their summaries, as "
             "benchmarks/bench_speedup.py makes them) and never above what the FLOPs ratio allows; elsewhere the "
             "column says why there is none.", ""]
    for group, mine in groups.items():
        lines += group_markdown(group, mine, images.get(group, ()), out, points, flops_points)
    if failed:
        lines += ["## Failed runs (see error.txt in each folder)", ""]
        lines += md_table(["run", "error"], [[name, message.replace("|", "/")]
                                             for name, message in failed.items()])
    return "\n".join(lines).rstrip("\n") + "\n"


# ----------------------------------------------------------------------------- death studies

def _fraction(value: Any) -> str:
    """A study cell: fractions as percentages, - for none, anything else as is."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{100 * value:.1f}"
    return str(value)


def study_markdown(plan: dict, rows: Sequence[dict], images: Sequence[Path], out: Path,
                   failed: dict[str, str]) -> str:
    """report.md of a death study: the study's numbers, one line per run, then the plots."""
    quasi = [k for k in rows[0] if k.startswith("quasi_")]
    header = ["dataset", "model", "panel", "series", plan["vary"], "seed", "dead %", "ever dead %",
              *[f"quasi-dead <= {k.split('_')[1]} %" for k in quasi], "min overlap %", "revived",
              "dead by site", "test acc %"]
    lines = [f"# Death study: {plan['name']}", "",
             f"Varied: `{plan['vary']}`.  Units are counted dead on the probe (eval mode, BatchNorm "
             "statistics re-estimated as DemP's dead check does), never removed.  *ever dead*: dead at "
             "some check; *min overlap*: the lowest fraction, over checks, of the units dead at the "
             "previous check that are still dead; *revived*: units that came back to life, summed over "
             "checks.", ""]
    lines += md_table(header, [[r["dataset"] or "-", r["model"] or "-", r["panel"], r["series"], r["value"], str(r["seed"]), _fraction(r["dead_frac"]),
                                _fraction(r["ever_dead_frac"]), *[_fraction(r[k]) for k in quasi],
                                _fraction(r["min_overlap"]), str(r["revived"]), r["dead_by_site"],
                                _fraction(r["test_acc"])] for r in rows])
    if failed:
        lines += ["", "Failed runs: " + ", ".join(f"{n} ({m})" for n, m in sorted(failed.items()))]
    lines += [""] + [f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in images]
    return "\n".join(lines) + "\n"
