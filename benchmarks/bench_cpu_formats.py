"""Training-step speed of memory format and mixed precision on this machine, as JSON ratios.

VGG-16-BN width 0.25, CIFAR-size batch 128, AdamW: default (NCHW, float32), channels-last,
bfloat16 autocast, and both.  The four settings are timed in alternating blocks in one
process, so a busy machine slows them alike; ratios are default / setting (> 1 = faster).
Also checks that a dead check gives the same dead set in float32 after bf16 training steps
(the check itself never runs under autocast).
Usage: python benchmarks/bench_cpu_formats.py [--rounds 5] [--per-round 4] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from bench_overhead import interleaved, step_fn  # noqa: E402
from demp.app.models import create_model  # noqa: E402

SETTINGS = {"default": (False, None), "channels_last": (True, None),
            "bf16": (False, torch.bfloat16), "channels_last_bf16": (True, torch.bfloat16)}


def make_step(channels_last: bool, dtype):
    torch.manual_seed(0)
    model = create_model("vgg16_bn", num_classes=10, in_channels=3, width=0.25, image_size=32)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=5e-4)
    x = torch.randn(128, 3, 32, 32)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,))
    return lambda: step_fn(model, opt, x, y, dtype=dtype)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-round", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps = {name: make_step(*s) for name, s in SETTINGS.items()}
    for fn in steps.values():  # warm-up (oneDNN kernel selection)
        fn(), fn()
    t = interleaved(steps, args.rounds, args.per_round)
    print(json.dumps({"cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": args.threads,
                      "step_ms": {k: round(1e3 * v, 1) for k, v in t.items()},
                      "speedup_vs_default": {k: round(t["default"] / v, 3) for k, v in t.items()}}, indent=1))


if __name__ == "__main__":
    main()
