"""Training-step speed with and without torch.compile on this machine, as JSON.

The main job's model (small_cnn width 0.75, Fashion-MNIST-size batch 128, AdamW): eager
against inductor-compiled forward and backward.  Both are timed in alternating blocks in one
process, so a busy machine slows them alike; ``speedup`` is eager / compiled (> 1 = faster).
``compile_s`` is what each recompilation after a removal event costs (measured once, cold).
Measured (AVX-512 CPU shared with other jobs, 2 threads, torch 2.13): eager 211 ms, compiled
143 ms per step (1.48x); compiling cold took 71 s, so compile pays off only for long runs
with few removal events.
Usage: python benchmarks/bench_compile.py [--rounds 5] [--per-round 10] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from bench_overhead import interleaved, step_fn  # noqa: E402
from demp.app.models import create_model  # noqa: E402


def make_step(compiled: bool):
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=10, in_channels=1, width=0.75, image_size=28)
    forward = torch.compile(model) if compiled else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=5e-4)
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    return lambda: step_fn(model, opt, x, y, forward=forward)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-round", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps = {"eager": make_step(False), "compiled": make_step(True)}
    t0 = time.perf_counter()
    steps["compiled"]()            # compiles forward and backward
    compile_s = time.perf_counter() - t0
    for fn in steps.values():      # warm-up
        fn(), fn()
    t = interleaved(steps, args.rounds, args.per_round)
    print(json.dumps({"cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": args.threads,
                      "torch": torch.__version__, "step_ms": {k: round(1e3 * v, 2) for k, v in t.items()},
                      "speedup": round(t["eager"] / t["compiled"], 3), "compile_s": round(compile_s, 1)}, indent=1))


if __name__ == "__main__":
    main()
