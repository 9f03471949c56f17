"""Does re-estimating BatchNorm statistics before evaluation change the ranking of methods?

For every finished run of a sweep folder: test accuracy with the trained running statistics
(what every report uses, `train.recalibrate_eval: false`) and with statistics re-estimated on
`data.calib_batches` augmented training batches first (`train.recalibrate_eval: true`), plus
per fraction of units removed the method order under each.  Prints JSON.
Usage: python benchmarks/eval_recalibrated.py runs/sweeps/cifar10_vgg [--batches 4] [--threads 2]
       (DEMP_DATA must point at CIFAR-10, as for `demp train`)
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from demp.app.config import load_config
from demp.app.export import load_run_model
from demp.app.measure import evaluate
from demp.app.run_data import load_run_data
from demp.app.training import Speed


def accuracies(run: Path, batches: int) -> tuple[float, float]:
    """(accuracy as trained, accuracy after re-estimating BatchNorm statistics) of one run."""
    cfg = load_config(str(run / "config.yaml"))
    device = torch.device("cpu")
    speed = Speed.choose(cfg, device)
    data = load_run_data(cfg, device)
    model = speed.model(load_run_model(run / "model.pt"))
    stored, _ = evaluate(model, data.test, speed.autocast)
    fresh, _ = evaluate(model, data.test, speed.autocast, data.score_batches(batches))
    return stored, fresh


def ranking(rows: list[dict], key: str, near: float) -> list[str]:
    """Runs within 3 points of ``near`` units removed, best first by ``key``."""
    close = [r for r in rows if abs(r["units_removed"] - near) <= 0.03]
    return [r["run"] for r in sorted(close, key=lambda r: -r[key])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir")
    ap.add_argument("--batches", type=int, default=4, help="calibration batches (the CPU configs' calib_batches)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for run in sorted(p.parent for p in Path(args.sweep_dir).glob("*/summary.json")):
        if not (run / "model.pt").is_file():
            continue
        summary = json.loads((run / "summary.json").read_text())
        stored, fresh = accuracies(run, args.batches)
        rows.append({"run": run.name, "units_removed": round(1 - summary["units_remaining"], 4),
                     "acc": round(stored, 4), "acc_recalibrated": round(fresh, 4)})
    result = {"runs": rows}
    for near in (0.5, 0.8):
        before, after = ranking(rows, "acc", near), ranking(rows, "acc_recalibrated", near)
        result[f"ranking_near_{near:g}"] = {"as_trained": before, "recalibrated": after,
                                             "same_order": before == after}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
