"""Reports as text: the end-of-run table, report.md of runs and of a death study.

``format_summary`` is the table ``demp train`` prints; ``markdown_report`` the report.md of a
set of runs and ``study_markdown`` that of a death study; the number formats are shared with
the plots.  Methods are shown by ``Variant.name`` (``demp[label]`` for a variant), accuracies
and fractions as percentages.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from demp.experiments.results import (DENSE, FLOPS_POINTS, Row, add_speedups, matched_table, mean_or_none, variant,
                                      versus_best, versus_each_demp_run)

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
    """A speed-up cell (1.25x); n/a for None."""
    return "n/a" if v is None else f"{v:.2f}x"


def md_table(header: Sequence[str], lines: Iterable[Sequence[str]]) -> list[str]:
    """A markdown table's lines: header, rule, one line per row."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return out


# ----------------------------------------------------------------------------- one run

def format_summary(summary: dict) -> str:
    """The end-of-run table: accuracy, units, parameters, FLOPs before/after, and wall time."""
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

def _dense_section(rows: Sequence[Row]) -> list[str]:
    """The dense reference per optimizer (nothing without dense runs)."""
    dense = [r for r in rows if variant(r) == DENSE]
    if not dense:
        return []
    return ["## Dense reference", "", *md_table(["optimizer", "seeds", "test acc", "train FLOPs", "wall s"], [
        [opt, str(len(g)), pct(mean_or_none(r["test_acc"] for r in g), 2),
         si(mean_or_none(r["train_flops"] for r in g)),
         f"{mean_or_none(r['wall_s'] for r in g) or 0:.0f}"]
        for opt in sorted({r["optimizer"] for r in dense})
        for g in [[r for r in dense if r["optimizer"] == opt]]]), ""]


def _matched_sections(table: Sequence[dict], flops_table: Sequence[dict]) -> list[str]:
    """The comparisons at matched units and inference FLOPs removed."""
    lines = []
    if table:
        lines += ["## At matched units removed", "",
                  "Linear interpolation along each method's curve (seed means per knob); n/a where "
                  "the curve does not reach the point.", ""]
        lines += md_table(
            ["units removed", "method", "optimizer", "test acc", "params remaining",
             "train FLOPs", "speed-up", "curve spans (removed)"],
            [[f"{100 * e['units_removed']:.0f}%", variant(e).name, e["optimizer"], pct(e["test_acc"], 2),
              pct(e["params_remaining"]), si(e["train_flops"]), _speed(e["speedup"]),
              f"{pct(e['removed_min'], 0)}-{pct(e['removed_max'], 0)}%"] for e in table])
        lines.append("")
    if flops_table:
        lines += ["## At matched inference FLOPs", "",
                  "The same interpolation along the fraction of forward FLOPs removed.", ""]
        lines += md_table(
            ["FLOPs removed", "method", "optimizer", "test acc", "params remaining", "train FLOPs", "speed-up"],
            [[f"{100 * e['units_removed']:.0f}%", variant(e).name, e["optimizer"], pct(e["test_acc"], 2),
              pct(e["params_remaining"]), si(e["train_flops"]), _speed(e["speedup"])] for e in flops_table])
        lines.append("")
    return lines


def _headline_section(table: Sequence[dict], flops_table: Sequence[dict]) -> list[str]:
    """DemP minus the best other method at each matched point (nothing without DemP)."""
    units, flops = versus_best(table), versus_best(flops_table)
    if not units + flops:
        return []
    lines = ["## DemP minus the best other method", "",
             "At each matched point above (units, then inference FLOPs removed): DemP's accuracy, "
             "the best other method's, and the difference in points.", ""]
    lines += md_table(
        ["measure", "removed", "optimizer", "DemP form", "DemP acc", "best other", "its acc", "difference"],
        [["units" if i < len(units) else "inference FLOPs", f"{100 * h['point']:.0f}%", h["optimizer"],
          h["method"], pct(h["test_acc"], 2), h["best"] or "n/a", pct(h["best_acc"], 2),
          "n/a" if h["diff"] is None else f"{h['diff']:+.2f}"] for i, h in enumerate(units + flops)])
    return lines + [""]


def _own_points_section(rows: Sequence[Row]) -> list[str]:
    """Each DemP point against the other methods at its own units and FLOPs removed."""
    found = [(label, h) for label, key in (("units", "units_remaining"), ("inference FLOPs", "fwd_flops_remaining"))
             for h in versus_each_demp_run(rows, key)]
    if not found:
        return []
    lines = ["## Each DemP point against the others at its own point", "",
             "Every other method interpolated along its curve at the fraction DemP removed (n/a where "
             "no other curve spans it).", ""]
    lines += md_table(
        ["measure", "DemP form", "optimizer", "knob", "removed", "DemP acc", "best other", "its acc", "difference"],
        [[label, h["method"], h["optimizer"], _knob(h["knob"]), pct(h["removed"]), pct(h["test_acc"], 2),
          h["best"] or "n/a", pct(h["best_acc"], 2), "n/a" if h["diff"] is None else f"{h['diff']:+.2f}"]
         for label, h in found])
    return lines + [""]


def markdown_report(rows: Sequence[Row], title: str, images: Sequence[Path], out: Path,
                    failed: Optional[dict[str, str]] = None, points: Sequence[float] = (0.5, 0.8)) -> str:
    """report.md: dense reference, the matched-units comparison, every run, failures, the plots."""
    rows = add_speedups(list(rows))
    table = matched_table(rows, points)
    flops_table = [e for e in matched_table(rows, FLOPS_POINTS, "fwd_flops_remaining") if e["test_acc"] is not None]
    lines = [f"# {title}", "", f"{len(rows)} runs. Accuracy: final test accuracy of the pruned "
             "network (%); remaining: fraction of the dense network's units/parameters (%); "
             "train FLOPs: forward+backward FLOPs summed over steps; speed-up: dense wall-clock "
             "time / run wall-clock time (same optimizer and seed where available).", ""]
    lines += (_dense_section(rows) + _matched_sections(table, flops_table) + _headline_section(table, flops_table)
              + _own_points_section(rows))
    lines += ["## Runs", ""]
    lines += md_table(
        ["run", "method", "optimizer", "knob", "seed", "test acc", "best acc", "units rem.",
         "params rem.", "inference FLOPs", "train FLOPs", "wall s", "speed-up"],
        [[r["run"], variant(r).name, r["optimizer"] or "", _knob(r["knob"]), _knob(r["seed"]),
          pct(r["test_acc"], 2), pct(r["best_acc"], 2), pct(r["units_remaining"]),
          pct(r["params_remaining"]), si(r["fwd_flops_final"]), si(r["train_flops"]),
          "n/a" if r["wall_s"] is None else f"{r['wall_s']:.0f}", _speed(r["speedup"])]
         for r in rows])
    if failed:
        lines += ["", "## Failed runs (see error.txt in each folder)", ""]
        lines += md_table(["run", "error"], [[name, message.replace("|", "/")]
                                             for name, message in failed.items()])
    lines += ["", "## Plots", ""]
    lines += [f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in images if p.parent == out]
    per_run = [p for p in images if p.parent != out]
    if per_run:
        lines += ["", "Per run: " + ", ".join(f"[{p.stem}]({p.relative_to(out).as_posix()})"
                                              for p in per_run)]
    return "\n".join(lines) + "\n"


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
    header = ["panel", "series", plan["vary"], "seed", "dead %", "ever dead %",
              *[f"quasi-dead <= {k.split('_')[1]} %" for k in quasi], "min overlap %", "revived",
              "dead by site", "test acc %"]
    lines = [f"# Death study: {plan['name']}", "",
             f"Varied: `{plan['vary']}`.  Units are counted dead on the probe (eval mode, BatchNorm "
             "statistics re-estimated as DemP's dead check does), never removed.  *ever dead*: dead at "
             "some check; *min overlap*: the lowest fraction, over checks, of the units dead at the "
             "previous check that are still dead; *revived*: units that came back to life, summed over "
             "checks.", ""]
    lines += md_table(header, [[r["panel"], r["series"], r["value"], str(r["seed"]), _fraction(r["dead_frac"]),
                                _fraction(r["ever_dead_frac"]), *[_fraction(r[k]) for k in quasi],
                                _fraction(r["min_overlap"]), str(r["revived"]), r["dead_by_site"],
                                _fraction(r["test_acc"])] for r in rows])
    if failed:
        lines += ["", "Failed runs: " + ", ".join(f"{n} ({m})" for n, m in sorted(failed.items()))]
    lines += [""] + [f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in images]
    return "\n".join(lines) + "\n"
