"""The runs of this comparison as one markdown table, from summary.csv: one row per run, or with
--means one row per method, optimizer and knob (seed means, the range over seeds, n seeds).
Usage (from the repository root):
    python results/cifar10-vgg-cpu-12ep/table.py
    python results/cifar10-vgg-cpu-12ep/table.py --means --optimizer adamw --knob 0.5 0.8
"""
import argparse
from pathlib import Path
from statistics import mean

from demp.experiments.results import read_csv

ORDER = ["dense", "demp", "demp[flops]", "demp[flops-early]", "snap", "slimming", "earlycrop", "cropit", "earlysnap"]
COSTS = "| units removed | forward FLOPs kept | params kept | training FLOPs |"


def costs(rows: list[dict]) -> str:
    """The cost columns, as seed means."""
    def avg(key: str) -> float:
        return mean(r[key] for r in rows)
    return (f"| {100 * (1 - avg('units_remaining')):.1f}% | {100 * avg('fwd_flops_remaining'):.1f}% "
            f"| {100 * avg('params_remaining'):.1f}% | {avg('train_flops') / 1e12:.1f} T |")


def knob(r: dict) -> str:
    return "-" if r["knob"] is None else f"{r['knob']:g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--means", action="store_true", help="one row per method, optimizer and knob")
    parser.add_argument("--optimizer", help="only this optimizer's runs")
    parser.add_argument("--knob", type=float, nargs="+", help="only these knob values (dense always)")
    args = parser.parse_args()
    rows = read_csv(Path(__file__).parent / "summary.csv")
    rows = [r for r in rows if (args.optimizer in (None, r["optimizer"]))
            and (args.knob is None or r["knob"] is None or r["knob"] in args.knob)]
    rows.sort(key=lambda r: (r["optimizer"], ORDER.index(r["method"]), r["knob"] or 0, r["seed"]))
    if not args.means:
        print(f"| method | optimizer | knob | seed | test acc {COSTS}")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['method']} | {r['optimizer']} | {knob(r)} | {r['seed']} | {100 * r['test_acc']:.2f}% {costs([r])}")
        return
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["optimizer"], r["knob"]), []).append(r)
    print(f"| method | optimizer | knob | seeds | test acc (mean) | range over seeds {COSTS}")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (method, optimizer, _), group in groups.items():
        accs = [100 * r["test_acc"] for r in group]
        spread = f"{min(accs):.2f}-{max(accs):.2f}" if len(accs) > 1 else "-"
        print(f"| {method} | {optimizer} | {knob(group[0])} | {len(group)} | {mean(accs):.2f}% | {spread} {costs(group)}")


if __name__ == "__main__":
    main()
