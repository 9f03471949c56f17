"""Speed of DemP's machinery relative to plain training, as JSON ratios (figures: docs/speed.md).

- step_overhead: a training step with DemonPruner (penalty + noise + schedule, no removal)
  over a plain step, VGG-16-BN width 0.25, CIFAR-size batch 128.  Target <= 1.03.  Also
  with noise every 4 steps (sigma * 2, the same random-walk variance).
- dead_check_in_steps: one dead check on 1,536 CIFAR-size images, in training steps.  < 10.
  cpu_config_check_in_steps: the CPU configs' check (BatchNorm re-estimated on 4 batches of
  128, then 1,024 probe images); with prune_every P the checks cost about this / P of training.
- removal_in_steps: one removal event on ResNet-18 (30% of units planted dead), in ResNet-18
  training steps.  < 10.
- pruned_vs_fresh: step time of a pruned VGG over the same architecture built fresh at the
  pruned widths.  Target within 1.05.

Plain and DemP steps are timed in alternating blocks in one process; medians are reported.
Steps use the CPU configs' channels-last + bf16 autocast unless --plain-format.
Usage: python benchmarks/bench_overhead.py [--quick] [--resnet-width 1.0] [--plain-format]
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import demp
from demp.app.models import create_model
from demp.core.batchnorm import recalibrated
from demp.app.models.vgg import VGG


def step_fn(model: nn.Module, opt: torch.optim.Optimizer, x, y, pruner=None, *,
            dtype: torch.dtype | None = None, forward=None) -> None:
    """One training step (autocast to ``dtype`` if given; ``forward`` e.g. a compiled model),
    with DemP's two calls when a pruner is given.  Shared by the benchmarks."""
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        loss = F.cross_entropy((forward or model)(x), y)
    if pruner is not None:
        loss = loss + pruner.penalty()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if pruner is not None:
        pruner.step()


def timed(fn, n: int) -> float:
    """Median seconds of ``fn`` over ``n`` calls."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def interleaved(fns: dict, rounds: int, per_round: int) -> dict[str, float]:
    """Median per-call time of each function, measured in alternating blocks."""
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            samples[k].append(timed(fn, per_round))
    return {k: statistics.median(v) for k, v in samples.items()}


@torch.no_grad()
def plant_dead(model: nn.Module, fraction: float, seed: int = 0) -> None:
    """Kill a fraction of every BatchNorm's units (gamma 0, beta -1)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            idx = torch.randperm(m.num_features, generator=g)[: int(m.num_features * fraction)]
            m.weight[idx] = 0
            m.bias[idx] = -1


def vgg_widths(model: VGG) -> tuple[list[list[int]], list[int]]:
    """Conv block widths and hidden widths of a (possibly pruned) VGG."""
    blocks, cur = [], []
    for layer in model.features:
        if isinstance(layer, nn.MaxPool2d):
            blocks.append(cur)
            cur = []
        else:
            cur.append(next(m for m in layer.modules() if isinstance(m, nn.Conv2d)).out_channels)
    hidden = [next(m for m in b.modules() if isinstance(m, nn.Linear)).out_features for b in model.classifier]
    return blocks, hidden


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    ap.add_argument("--resnet-width", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--plain-format", action="store_true",
                    help="NCHW float32 steps instead of the CPU configs' channels-last + bf16 autocast")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    step = functools.partial(step_fn, dtype=None if args.plain_format else torch.bfloat16)
    fmt = torch.contiguous_format if args.plain_format else torch.channels_last
    rounds, per = (2, 2) if args.quick else (5, 4)
    x, y = torch.randn(128, 3, 32, 32).contiguous(memory_format=fmt), torch.randint(0, 10, (128,))
    probe = [torch.randn(512, 3, 32, 32) for _ in range(3)]
    out: dict[str, float | str] = {"device": "cpu", "threads": args.threads, "torch": torch.__version__,
                                   "format": "nchw-fp32" if args.plain_format else "channels_last-bf16"}

    # 1. per-step overhead (no removal event in the timed steps)
    plain = create_model("vgg16_bn", width=0.25).to(memory_format=fmt)
    popt = torch.optim.AdamW(plain.parameters(), lr=1e-3)
    step(plain, popt, x, y)
    fns = {"plain": lambda: step(plain, popt, x, y)}
    for k in (1, 4):
        model = create_model("vgg16_bn", width=0.25).to(memory_format=fmt)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        pruner = demp.DemonPruner(model, opt, x[:2], total_steps=10_000, probe=probe,
                                  reg_peak=1e-3, noise_peak=5e-5, prune_every=10_000, noise_every=k)
        step(model, opt, x, y, pruner)  # step 0 runs the first dead check; not timed
        fns[f"demp_k{k}"] = (lambda m, o, p: lambda: step(m, o, x, y, p))(model, opt, pruner)
    t = interleaved(fns, rounds, per)
    out["vgg_step_s"] = t["plain"]
    out["step_overhead"] = t["demp_k1"] / t["plain"]
    out["step_overhead_noise_every_4"] = t["demp_k4"] / t["plain"]

    # 2. dead check on 1,536 images, in training steps; with BatchNorm re-estimation on 4 batches first
    check = timed(lambda: demp.find_dead_units(plain, probe), max(2, rounds))
    calib = [torch.randn(128, 3, 32, 32) for _ in range(4)]

    def recalibrated_check() -> None:
        with recalibrated(plain, calib):
            demp.find_dead_units(plain, probe[:2])
    check_cpu = timed(recalibrated_check, max(2, rounds))
    out["dead_check_s"] = check
    out["dead_check_in_steps"] = check / t["plain"]
    out["cpu_config_check_in_steps"] = check_cpu / t["plain"]   # 4 calib batches + 1,024 probe images

    # 3. one removal event on ResNet-18
    resnet = create_model("resnet18", width=args.resnet_width)
    ropt = torch.optim.AdamW(resnet.parameters(), lr=1e-3)
    step(resnet, ropt, x, y)
    rstep = timed(lambda: step(resnet, ropt, x, y), max(2, per))
    plant_dead(resnet, 0.3)
    dead = demp.find_dead_units(resnet, [x])
    t0 = time.perf_counter()
    report = demp.remove_units(resnet, dead, x[:2], optimizer=ropt)
    removal = time.perf_counter() - t0
    out.update(resnet_width=args.resnet_width, resnet_step_s=rstep, removal_s=removal,
               removal_in_steps=removal / rstep,
               resnet_units_removed_frac=report.units_removed / report.units_before)

    # 4. pruned network vs the same widths built fresh
    pruned = create_model("vgg16_bn", width=0.25)
    plant_dead(pruned, 0.4, seed=1)
    demp.remove_units(pruned, demp.find_dead_units(pruned, [x]), x[:2])
    blocks, hidden = vgg_widths(pruned)
    fresh = VGG(3, blocks, hidden, 10, 32)
    assert [p.shape for p in fresh.parameters()] == [p.shape for p in pruned.parameters()]
    fopt = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    qopt = torch.optim.AdamW(pruned.parameters(), lr=1e-3)
    step(fresh, fopt, x, y)
    step(pruned, qopt, x, y)
    t2 = interleaved({"fresh": lambda: step(fresh, fopt, x, y),
                      "pruned": lambda: step(pruned, qopt, x, y)}, rounds, per)
    out["pruned_vs_fresh"] = t2["pruned"] / t2["fresh"]
    out["pruned_params_frac"] = demp.count_params(pruned) / demp.count_params(plain)
    out["pruned_vs_dense_step"] = t2["pruned"] / t["plain"]
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}, indent=1))


if __name__ == "__main__":
    main()
