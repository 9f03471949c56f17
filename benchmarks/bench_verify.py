"""Cost of verified removal relative to a dead check, as JSON.

Times one dead check (the probe pass DemP runs before every removal) and one removal with
``verify=True`` and with ``verify=False`` on the same planted model; the verification cost is
their difference.  Usage: python benchmarks/bench_verify.py [--batches 12] [--batch 128]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

import demp
from demp.app.models import create_model


def planted(width: float) -> torch.nn.Module:
    """A zoo ResNet-18 with 30% of every BatchNorm's units killed."""
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, width=width).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                idx = torch.randperm(m.num_features)[: int(0.3 * m.num_features)]
                m.weight[idx], m.bias[idx] = 0, -1
    return model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    model = planted(args.width)
    probe = [torch.randn(args.batch, 3, 32, 32) for _ in range(args.batches)]
    example = probe[0][:8]
    check, timed = [], {True: [], False: []}
    for _ in range(args.repeats):
        t = time.perf_counter()
        dead = demp.find_dead_units(model, probe)
        check.append(time.perf_counter() - t)
        for verify in (True, False):
            m = copy.deepcopy(model)
            opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
            t = time.perf_counter()
            demp.remove_units(m, dead, example, opt, verify=verify)
            timed[verify].append(time.perf_counter() - t)
    check_s, on, off = statistics.median(check), statistics.median(timed[True]), statistics.median(timed[False])
    print(json.dumps({"dead_check_s": round(check_s, 4), "removal_verified_s": round(on, 4),
                      "removal_unverified_s": round(off, 4),
                      "verification_s": round(on - off, 4),
                      "verification_over_dead_check": round((on - off) / check_s, 4)}))


if __name__ == "__main__":
    main()
