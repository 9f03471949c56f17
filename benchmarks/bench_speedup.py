"""Wall-clock speed-up of DemP over dense training, next to the training-FLOPs ratio, as JSON.

Runs dense and DemP at units targets 0.5 and 0.8 one after another in one process, on the CPU
benchmark (configs/cpu/vgg16_cifar10_adamw.yaml: VGG-16-BN w0.25, CIFAR-10, channels-last +
bf16), and prints, per target: speedup = dense wall / DemP wall (training time, dead checks and
removals included, evaluation excluded), flops_ratio = dense training FLOPs / DemP training
FLOPs, and efficiency = speedup / flops_ratio (1.0: every FLOP saved is time saved; goal >= 0.8).
Wall-clock figures need a quiet machine; run nothing else meanwhile.
Usage: python benchmarks/bench_speedup.py [--epochs 6] [--subset N] [--targets 0.5 0.8] [--out DIR]
       (DEMP_DATA must point at CIFAR-10, as for `demp train`)
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from demp.app.config import load_config  # noqa: E402
from demp.app.training import train  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cpu" / "vgg16_cifar10_adamw.yaml"


def run(overrides: list[str], out: Path) -> dict:
    """One training run of the benchmark config with ``overrides``; its summary."""
    return train(load_config(str(CONFIG), overrides), str(out), progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--subset", type=int, default=None, help="first N training images (default: all)")
    ap.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.8])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="folder for the run folders (default: a temporary one)")
    args = ap.parse_args()
    common = [f"train.epochs={args.epochs}", f"threads={args.threads}"]
    if args.subset:
        common.append(f"data.subset={args.subset}")
    out = Path(args.out or tempfile.mkdtemp(prefix="demp-speedup-"))
    dense = run(common + ["method.name=dense"], out / "dense")
    result: dict = {"config": str(CONFIG.name), "epochs": args.epochs, "subset": args.subset,
                    "dense": {"wall_s": round(dense["wall_s"], 1), "test_acc": dense["test_acc"]}}
    for target in args.targets:
        s = run(common + [f"method.target={target}"], out / f"demp-{target:g}")
        speedup, flops = dense["wall_s"] / s["wall_s"], dense["train_flops"] / s["train_flops"]
        result[f"demp_{target:g}"] = {
            "units_removed": round(1 - s["units_remaining"], 4), "test_acc": s["test_acc"],
            "wall_s": round(s["wall_s"], 1), "speedup": round(speedup, 3), "flops_ratio": round(flops, 3),
            "efficiency": round(speedup / flops, 3)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
