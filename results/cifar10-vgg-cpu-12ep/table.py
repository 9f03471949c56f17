"""The runs of this comparison as one markdown table (the README's), from summary.csv.
Usage: python results/cifar10-vgg-cpu-12ep/table.py   (from the repository root)
"""
from pathlib import Path

from demp.experiments.results import read_csv

ORDER = ["dense", "demp", "demp[flops]", "demp[flops-early]", "snap", "slimming", "earlycrop", "cropit", "earlysnap"]

rows = read_csv(Path(__file__).parent / "summary.csv")
rows.sort(key=lambda r: (r["optimizer"], ORDER.index(r["method"]), r["knob"] or 0, r["seed"]))
print("| method | optimizer | knob | seed | test acc | units removed | forward FLOPs kept | params kept | training FLOPs |")
print("|---|---|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['method']} | {r['optimizer']} | {r['knob'] if r['knob'] is not None else '-'} | {r['seed']} "
          f"| {100 * r['test_acc']:.2f}% | {100 * (1 - r['units_remaining']):.1f}% "
          f"| {100 * r['fwd_flops_remaining']:.1f}% | {100 * r['params_remaining']:.1f}% | {r['train_flops'] / 1e12:.1f} T |")
