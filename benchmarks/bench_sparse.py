"""What unstructured sparsity costs per training step, as JSON ratios.

VGG-16-BN width 0.25, CIFAR-size batch 128, AdamW, in the format the CPU configs measure as
fastest here (channels-last, bf16 autocast where native): a plain step against the same step
followed by ``Sparsifier.step()`` (masks applied to the weights and their Adam state; a RigL
drop-and-grow every ``--every`` steps, as in training).  Timed in alternating blocks in one
process, so a busy machine slows both alike; ratio = sparse / plain (1.0 = free).
Usage: python benchmarks/bench_sparse.py [--rounds 5] [--per-round 10] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from bench_overhead import interleaved, step_fn  # noqa: E402
from demp.app.models import create_model  # noqa: E402
from demp.app.speed import bf16_native  # noqa: E402
from demp.core.sparsity import Sparsifier  # noqa: E402


def setup(sparse: bool, every: int):
    """A model, optimizer and batch; with ``sparse``, a RigL sparsifier at density 0.2."""
    torch.manual_seed(0)
    model = create_model("vgg16_bn", num_classes=10, in_channels=3, width=0.25, image_size=32)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=5e-4)
    x = torch.randn(128, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,))
    sp = Sparsifier(model, opt, x[:2], total_steps=10_000, method="rigl", density=0.2, every=every) if sparse else None
    dtype = torch.bfloat16 if bf16_native() else None

    def step() -> None:
        step_fn(model, opt, x, y, dtype=dtype)
        if sp is not None:
            sp.step()
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-round", type=int, default=10)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    fns = {"plain": setup(False, args.every), "sparse": setup(True, args.every)}
    for fn in fns.values():
        fn(), fn()
    t = interleaved(fns, args.rounds, args.per_round)
    print(json.dumps({"cpu_capability": torch.backends.cpu.get_cpu_capability(), "bf16": bf16_native(),
                      "threads": args.threads, "step_ms": {k: round(1e3 * v, 1) for k, v in t.items()},
                      "sparse_over_plain": round(t["sparse"] / t["plain"], 3)}, indent=1))


if __name__ == "__main__":
    main()
