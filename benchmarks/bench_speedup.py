"""Wall-clock speed-ups of DemP over dense training and over SNAP, next to training-FLOPs ratios, as JSON.

Runs the chosen methods one after another in one process on a benchmark config (``--config``,
default configs/cpu/vgg16_cifar10_adamw.yaml: VGG-16-BN w0.25, CIFAR-10; the transformers:
configs/cpu/vit_cifar10_adamw.yaml and configs/cpu/relu_lm_adamw.yaml, where the FFN carries most
of each block's FLOPs), all in the training format the first run measured as fastest here, and prints for each run: wall time (training, dead checks and
removals included, evaluation excluded), test accuracy, forward FLOPs kept, and against dense and
SNAP: speedup = their wall / this wall, flops_ratio = their training FLOPs / this run's, and
efficiency = speedup / flops_ratio (1.0: every FLOP saved is time saved).
Wall-clock figures need a quiet machine; run nothing else meanwhile.
Each run's summary.json is marked as paired (``"timing": {"paired": true, "group": ..., "cpu": ...}``,
one group per invocation), so ``demp report OUT`` of the run folders (``--out``) shows these
speed-ups; reports show none for runs timed separately.
Runs (``--runs``): dense; snap-0.8 (SNAP at 80% of units); demp-flops-0.75 (DemP, FLOPs-weighted
penalty with cost_power 0.5, 75% of forward FLOPs removed, checks within 3% of the time);
demp-flops-0.75-r8 (the same with widths kept at multiples of 8); demp-0.5, demp-0.8 (units budgets).
Usage: python benchmarks/bench_speedup.py [--config FILE] [--epochs 6] [--subset N] [--runs dense snap-0.8 demp-0.8]
       (DEMP_DATA must point at CIFAR-10, as for `demp train`; the LM needs no data set)
The transformer runs of the results folders:
       python benchmarks/bench_speedup.py --config configs/cpu/relu_lm_adamw.yaml --epochs 30 --runs dense snap-0.8 demp-0.8 demp-0.5
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from demp.app.config import load_config  # noqa: E402
from demp.app.training import train  # noqa: E402
from demp.experiments.results import mark_paired  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cpu" / "vgg16_cifar10_adamw.yaml"
FLOPS = ["method.target_units=null", "method.target_flops=0.75", "method.penalty_weights=flops",
         "method.cost_power=0.5", "method.check_share=0.03"]
RUNS = {
    "dense": ["method.name=dense"],
    "snap-0.8": ["method.name=snap", "method.target=0.8"],
    "demp-flops-0.75": FLOPS,
    "demp-flops-0.75-r8": FLOPS + ["method.round_to=8"],
    "demp-0.5": ["method.target=0.5"],
    "demp-0.8": ["method.target=0.8"],
}
"""Named runs: overrides of the benchmark config."""


def run(config: Path, overrides: list[str], out: Path, group: str, threads: int) -> dict:
    """One training run of ``config`` with ``overrides``, marked as timed in the paired ``group``;
    its summary."""
    train(load_config(str(config), overrides), str(out), progress=False)
    return mark_paired(out, group, threads=threads, script="benchmarks/bench_speedup.py")


def ratios(run_: dict, ref: dict) -> dict:
    """Speed-up, training-FLOPs ratio and efficiency of ``run_`` against ``ref``."""
    speedup, flops = ref["wall_s"] / run_["wall_s"], ref["train_flops"] / run_["train_flops"]
    return {"speedup": round(speedup, 3), "flops_ratio": round(flops, 3), "efficiency": round(speedup / flops, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=CONFIG, help="the benchmark's training config")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--subset", type=int, default=None, help="first N training images (default: all)")
    ap.add_argument("--runs", nargs="+", default=["dense", "snap-0.8", "demp-flops-0.75", "demp-flops-0.75-r8"],
                    choices=sorted(RUNS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="folder for the run folders (default: a temporary one)")
    args = ap.parse_args()
    common = [f"train.epochs={args.epochs}", f"threads={args.threads}"]
    if args.subset:
        common.append(f"data.subset={args.subset}")
    out = Path(args.out or tempfile.mkdtemp(prefix="demp-speedup-"))
    group = f"bench_speedup-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    summaries: dict[str, dict] = {}
    for name in args.runs:
        summaries[name] = run(args.config, common + RUNS[name], out / name, group, args.threads)
        if len(summaries) == 1:    # every later run in the format the first one measured
            speed = summaries[name]["speed"]
            common += [f"train.channels_last={'on' if speed['channels_last'] else 'off'}",
                       f"train.autocast={speed['autocast']}"]
    result: dict = {"config": args.config.name, "epochs": args.epochs, "subset": args.subset, "runs": str(out),
                    "timing": summaries[args.runs[0]]["timing"],
                    "format": summaries[args.runs[0]]["speed"]}
    for name, s in summaries.items():
        entry = {"test_acc": s["test_acc"], "wall_s": round(s["wall_s"], 1), "units_removed": round(1 - s["units_remaining"], 4),
                 "fwd_flops_kept": round(s["fwd_flops_remaining"], 4), "train_flops": s["train_flops"]}
        for ref in ("dense", "snap-0.8"):
            if ref in summaries and ref != name:
                entry[f"vs_{ref}"] = ratios(s, summaries[ref])
        result[name] = entry
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
