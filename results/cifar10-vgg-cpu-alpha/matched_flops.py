"""Cost-aware DemP (this folder's runs) against the 6-epoch baselines (results/cifar10-vgg-cpu,
AdamW, both seeds) at the fraction of forward FLOPs each DemP run removed: every baseline is
interpolated along its curve there (as `demp report` does); prints the ranking and DemP minus best.
Usage: python results/cifar10-vgg-cpu-alpha/matched_flops.py   (from the repository root)
"""
from pathlib import Path

from demp.experiments.results import matched_table, read_csv

HERE = Path(__file__).parent
RUNS = (("demp[a05]", 0.5), ("demp[a05-r1]", 0.75), ("demp[a1-r1]", 0.75))

baselines = [r for r in read_csv(HERE.parent / "cifar10-vgg-cpu" / "summary.csv") if r["optimizer"] == "adamw"]
alpha = read_csv(HERE / "summary.csv")
for label, knob in RUNS:
    run = next(r for r in alpha if r["method"] == label and r["knob"] == knob)
    removed = 1 - run["fwd_flops_remaining"]
    table = matched_table(baselines, [removed], "fwd_flops_remaining")
    ranked = sorted((e for e in table if not e["method"].startswith("demp") and e["test_acc"] is not None),
                    key=lambda e: -e["test_acc"])
    print(f"{label} at {100 * removed:.1f}% of FLOPs removed: {100 * run['test_acc']:.2f}%; "
          + ", ".join(f"{e['method']} {100 * e['test_acc']:.2f}%" for e in ranked)
          + f"; DemP minus best {100 * (run['test_acc'] - ranked[0]['test_acc']):+.2f}")
