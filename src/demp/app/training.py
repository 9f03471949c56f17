"""``demp train``: train a model on real data with a method (DemP, dense or a baseline).

Read top to bottom like nanoGPT's train.py: ``train`` seeds everything, loads the data,
builds the model, optimizer, LR schedule and method (or restores them from the run's
checkpoint), then loops over epochs and steps (loss + method penalty, optimizer step, method
hooks that may remove units, logging, checkpoints), and ends with the method's final
removal, the final test evaluation, the exported model and ``summary.json``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from demp.app import data as demp_data
from demp.app.checkpoint import (CHECKPOINT_NAME, atomic_write_json, atomic_write_text, load_checkpoint,
                         remove_stale_temps, save_checkpoint, set_rng_state)
from demp.app.config import Config, config_diff, config_from_dict, config_to_dict, flat_config
from demp.core.detection import list_sites, scan_units
from demp.core.utils import count_params, eval_mode
from demp.errors import DempError
from demp.app.export import architecture, build_pruned, save_pruned
from demp.core.flops import forward_flops, train_step_flops
from demp.app.methods import Method, MethodContext, create_method
from demp.app.models import create_model
from demp.core.schedules import make_schedule
from demp.core.surgery import RemovalReport

log = logging.getLogger("demp")

CONFIG_NAME, METRICS_NAME, SUMMARY_NAME, MODEL_NAME = "config.yaml", "metrics.jsonl", "summary.json", "model.pt"
EVAL_BATCH = 1024          # in-memory test sets
FOLDER_EVAL_BATCH = 256    # image folders (full-size images decoded by workers)
FLOPS_NOTE = "FLOPs = 2 x multiply-adds of matmuls/convs/attention (torch FlopCounterMode)"


# ----------------------------------------------------------------------------- environment

def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    """'auto' is CUDA when available, else CPU; 'cuda' without a GPU is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise DempError("device 'cuda' was asked for but torch sees no GPU; use device=cpu or auto")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def default_run_dir(cfg: Config) -> Path:
    """runs/<dataset>-<model>-<method>-<date-time>."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.data.name}-{cfg.model.name}-{cfg.method.name}-{stamp}"


# ----------------------------------------------------------------------------- data

class FolderLoader:
    """``BatchLoader``'s interface over an ``ImageFolderDataset`` decoded lazily by workers.

    The order of each epoch is drawn from (seed, epoch), so a resumed epoch yields the same
    remaining images; the random crops come from the workers' generators and are not
    replayed bit for bit.
    """

    def __init__(self, dataset: demp_data.ImageFolderDataset, batch_size: int, *, train: bool,
                 seed: int, device: torch.device):
        self.dataset, self.batch_size, self.train, self.seed, self.device = dataset, batch_size, train, seed, device
        self.workers = min(8, os.cpu_count() or 1)
        self.epoch, self.position = 0, 0

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.dataset)
        order = (torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch))
                 if self.train else torch.arange(n))
        rest = torch.utils.data.Subset(self.dataset, order[self.position * self.batch_size:].tolist())
        loader = torch.utils.data.DataLoader(
            rest, batch_size=self.batch_size, num_workers=self.workers, pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(self.seed + self.epoch * 7919 + self.position))
        for x, y in loader:
            self.position += 1
            if self.position == len(self):
                self.epoch, self.position = self.epoch + 1, 0
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


@dataclass
class Data:
    """What the loop needs from a dataset: loaders, probe images and the input/output shapes."""
    train: Any                      # BatchLoader or FolderLoader
    test: Any
    probe: list[torch.Tensor]       # un-augmented training images for dead checks
    score_batches: Callable[[int], list[tuple[torch.Tensor, torch.Tensor]]]
    num_classes: int
    in_channels: int
    image_size: int


def _take(loader: Any, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n`` batches of a fresh loader (across epochs if needed)."""
    batches: list[tuple[torch.Tensor, torch.Tensor]] = []
    while len(batches) < n:
        for batch in loader:
            batches.append(batch)
            if len(batches) == n:
                break
    return batches


def load_data(cfg: Config, device: torch.device) -> Data:
    """Loaders for the configured dataset; DataError (with the fix) when it is missing."""
    d, bs = cfg.data, cfg.train.batch_size
    if d.name == "imagefolder":
        return _folder_data(cfg, device)
    splits = demp_data.load_dataset(d.name, d.root, d.subset, seed=cfg.seed)
    augment = (demp_data.Augment(crop_pad=4 if d.augment else 0, flip=d.augment, resize=d.resize)
               if d.augment or d.resize else None)

    def loader(x: torch.Tensor, y: torch.Tensor, batch: int, train: bool, seed: int) -> demp_data.BatchLoader:
        return demp_data.BatchLoader(x, y, batch, mean=splits.mean, std=splits.std, train=train,
                                     augment=augment, seed=seed, device=device)

    probe = demp_data.probe_batches(splits, cfg.method.probe_size, cfg.method.probe_batch, d.resize)
    return Data(train=loader(splits.train_x, splits.train_y, bs, True, cfg.seed),
                test=loader(splits.test_x, splits.test_y, EVAL_BATCH, False, cfg.seed),
                probe=[p.to(device) for p in probe],
                score_batches=lambda n: _take(loader(splits.train_x, splits.train_y, bs, True, cfg.seed + 1), n),
                num_classes=splits.num_classes, in_channels=splits.in_channels,
                image_size=d.resize or splits.image_size)


def _folder_data(cfg: Config, device: torch.device) -> Data:
    """ImageNet-style folders: root/train/<class>/ and root/val/ (or root/test/)."""
    root, size, bs = Path(cfg.data.root), cfg.data.resize or 224, cfg.train.batch_size
    test_split = "val" if (root / "val").is_dir() else "test"
    train = demp_data.ImageFolderDataset(root, "train", image_size=size)
    plain = demp_data.ImageFolderDataset(root, "train", image_size=size, train=False, classes=train.classes)
    test = demp_data.ImageFolderDataset(root, test_split, image_size=size, classes=train.classes)
    picks = torch.linspace(0, len(plain) - 1, min(cfg.method.probe_size, len(plain))).long().tolist()
    probe = torch.stack([plain[i][0] for i in picks]).split(cfg.method.probe_batch)

    def loader(ds: demp_data.ImageFolderDataset, batch: int, is_train: bool, seed: int) -> FolderLoader:
        return FolderLoader(ds, batch, train=is_train, seed=seed, device=device)

    return Data(train=loader(train, bs, True, cfg.seed), test=loader(test, FOLDER_EVAL_BATCH, False, cfg.seed),
                probe=[p.to(device) for p in probe],
                score_batches=lambda n: _take(loader(train, bs, True, cfg.seed + 1), n),
                num_classes=len(train.classes), in_channels=3, image_size=size)


# ----------------------------------------------------------------------------- model and optimizer

def build_model(cfg: Config, data: Data) -> nn.Module:
    """The configured zoo model for this dataset's classes, channels and image size."""
    m = cfg.model
    try:
        return create_model(m.name, num_classes=data.num_classes, in_channels=data.in_channels,
                            width=m.width, image_size=data.image_size, **m.kwargs)
    except (TypeError, ValueError) as e:
        raise DempError(f"cannot build model '{m.name}' (width {m.width}, kwargs {m.kwargs}): {e}") from None


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW or SGD with momentum, one parameter group (surgery keeps its order)."""
    o = cfg.optim
    if o.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)


def lr_factor(cfg: Config, total_steps: int, steps_per_epoch: int) -> Callable[[int], float]:
    """LR multiplier per optimizer step: the schedule's shape times a linear warm-up.

    one_cycle is torch's OneCycleLR shape (start lr/25, peak at 30%, end lr/2.5e5); step and
    warmup_step multiply by gamma at each milestone (fractions of training); cosine decays to 0.
    """
    o = cfg.optim
    kind = {"warmup_step": "step"}.get(o.schedule, o.schedule)
    shape = make_schedule(kind, 1.0, total_steps, milestones=tuple(o.milestones), gamma=o.gamma)
    warmup = round(o.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        return shape(step) * (min(1.0, (step + 1) / warmup) if warmup else 1.0)
    return factor


def _to_channels_last(model: nn.Module) -> nn.Module:
    """channels_last for the 4-D weights (faster convs on CUDA); parameters keep their identity."""
    return model.to(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------- measuring

@dataclass
class Arch:
    """Size of the current architecture (recounted only after a removal)."""
    units: int
    params: int
    fwd_flops: int           # per example, inference
    train_flops: int         # per example, forward + backward
    widths: dict[str, int]

    @staticmethod
    def measure(model: nn.Module, example: torch.Tensor) -> "Arch":
        sites = list_sites(model, example)
        return Arch(sum(s.width for s in sites), count_params(model), forward_flops(model, example),
                    train_step_flops(model, example), {s.name: s.width for s in sites})


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, autocast: Callable[[], Any]) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) over a whole loader, in eval mode."""
    correct, loss_sum, n = 0, 0.0, 0
    with eval_mode(model):
        for x, y in loader:
            with autocast():
                logits = model(x)
            loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            n += len(y)
    return correct / n, loss_sum / n


def live_units(model: nn.Module, probe: list[torch.Tensor]) -> dict[str, int]:
    """Units per site that are alive (non-zero somewhere) on the probe images."""
    scan = scan_units(model, probe)
    return {s.name: s.width - int(scan.dead[s.name].sum()) for s in scan.sites}


class MetricsLog:
    """metrics.jsonl, one JSON object per line, mirrored to TensorBoard when asked."""

    def __init__(self, path: Path, offset: int, tensorboard: Optional[Path], purge_step: int):
        with open(path, "a+b") as f:  # drop lines written after the checkpoint we resume from
            f.truncate(offset)
        self.file = open(path, "a")
        self.writer = None
        if tensorboard is not None:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(tensorboard), purge_step=purge_step or None)

    def write(self, record: dict, step: int) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            group = record.get("event") or ("epoch" if "test_acc" in record else "train")
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("step", "event"):
                    self.writer.add_scalar(f"{group}/{key}", value, step)

    def offset(self) -> int:
        return self.file.tell()

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()


@dataclass
class Progress:
    """The loop's counters and accumulators: everything besides the objects that a resume needs."""
    step: int = 0
    epoch: int = 0
    train_flops: int = 0
    wall_s: float = 0.0
    eval_s: float = 0.0
    prune_events: int = 0
    best_acc: Optional[float] = None
    epoch_loss: float = 0.0
    epoch_batches: int = 0
    window_loss: float = 0.0
    window_batches: int = 0
    metrics_offset: int = 0
    initial: dict = field(default_factory=dict)   # Arch of the network before any removal

    def count_step(self, loss: float, flops: int) -> None:
        """Account for one optimizer step."""
        self.step += 1
        self.train_flops += flops
        self.epoch_loss += loss
        self.epoch_batches += 1
        self.window_loss += loss
        self.window_batches += 1


# ----------------------------------------------------------------------------- one step

def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, criterion: nn.Module,
               optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, method: Method,
               autocast: Callable[[], Any], step: int, cfg: Config) -> tuple[float, Optional[RemovalReport]]:
    """Task loss + method penalty, backward, optimizer step, then the method's after_step hook.

    Returns the task loss and the removal report of the hook (None when it did no dead check).
    """
    with autocast():
        loss = criterion(model(x), y)
    value = loss.item()
    if not math.isfinite(value):
        raise DempError(f"loss is {value} at step {step}: training diverged; lower optim.lr "
                        f"(now {cfg.optim.lr}) or method.reg_peak (now {cfg.method.reg_peak})")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss + method.penalty()).backward()
    scaler.step(optimizer)
    scaler.update()
    return value, method.after_step(step, loss.detach())


# ----------------------------------------------------------------------------- the run

def _check_run_dir(cfg: Config, run_dir: Path, resume: bool) -> Optional[dict]:
    """Check the run folder (new, or resumable with this config); return the checkpoint when resuming."""
    if not resume:
        if (run_dir / CONFIG_NAME).exists():
            raise DempError(f"{run_dir} already holds a run; continue it with `demp train --resume "
                            f"{run_dir}` or choose another --out")
        return None
    if not (run_dir / CONFIG_NAME).is_file():
        raise DempError(f"{run_dir} is not a run folder (no {CONFIG_NAME}); give the --out of an earlier run")
    if (run_dir / SUMMARY_NAME).is_file():
        raise DempError(f"{run_dir} has already finished ({SUMMARY_NAME} exists); nothing to resume")
    ckpt = load_checkpoint(run_dir / CHECKPOINT_NAME)
    saved = config_from_dict(ckpt["config"], f"{run_dir / CHECKPOINT_NAME}")
    diff = config_diff(saved, cfg, ignore=("out",))
    if diff:
        old, new = flat_config(saved), flat_config(cfg)
        changes = "; ".join(f"{k}: {old[k]!r} -> {new[k]!r}" for k in diff)
        raise DempError(f"cannot resume {run_dir} with a changed config ({changes}); resume without "
                        "--config/--set, or start a new run with another --out")
    return ckpt


def _start_run_dir(cfg: Config, run_dir: Path) -> None:
    """Create the folder with its config.yaml, or clear what a killed run left half-written."""
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(run_dir)
    if not (run_dir / CONFIG_NAME).exists():
        atomic_write_text(run_dir / CONFIG_NAME, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def _check_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise DempError("--tensorboard needs the tensorboard package: pip install 'demp[tensorboard]'") from None


def train(cfg: Config, out_dir: str | None = None, resume: bool = False, progress: bool | None = None,
          *, tensorboard: bool = False) -> dict:
    """Train ``cfg`` into a run folder and return the summary (also written to summary.json).

    ``resume=True`` continues the run in ``out_dir`` from its checkpoint; the config must equal
    the one the run started with.  ``progress=None`` shows progress bars only on a terminal.
    Per-epoch lines go to the ``demp`` logger.
    """
    # ---- checks (nothing is written before the config, run folder, data and model are known good)
    cfg.validate()
    if tensorboard:
        _check_tensorboard()
    run_dir = Path(out_dir or cfg.out or default_run_dir(cfg))
    ckpt = _check_run_dir(cfg, run_dir, resume)
    show_bar = sys.stdout.isatty() if progress is None else progress

    # ---- environment
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cuda = device.type == "cuda"
    amp_dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
    autocast = (lambda: torch.autocast("cuda", dtype=amp_dtype)) if cuda else nullcontext
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and amp_dtype == torch.float16)

    # ---- data, model, optimizer, schedule, method
    data = load_data(cfg, device)
    steps_per_epoch = len(data.train)
    total_steps = min(cfg.train.epochs * steps_per_epoch, cfg.train.max_steps or math.inf)
    example = data.probe[0][:2]
    model = build_model(cfg, data)
    if ckpt is not None:  # the pruned architecture, not the full-width one
        model = build_pruned(ckpt["architecture"], ckpt["model"])
    model = _to_channels_last(model.to(device)) if cuda else model
    optimizer = build_optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, total_steps, steps_per_epoch))
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)
    method = create_method(cfg.method)
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        method.load_state_dict(ckpt["method"])
        data.train.load_state_dict(ckpt["loader"])
    ctx = MethodContext(model=model, optimizer=optimizer, example_inputs=example, probe=data.probe,
                        total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                        train_batches=data.score_batches, loss_fn=criterion, seed=cfg.seed)
    arch = Arch.measure(model, example)
    state = Progress(initial=asdict(arch)) if ckpt is None else Progress(**ckpt["progress"])
    if ckpt is not None:
        set_rng_state(ckpt["rng"])
    _start_run_dir(cfg, run_dir)
    metrics = MetricsLog(run_dir / METRICS_NAME, state.metrics_offset,
                         run_dir / "tensorboard" if tensorboard else None, state.step)
    bar = tqdm(total=total_steps, initial=state.step, disable=not show_bar, unit="step", dynamic_ncols=True)

    def on_removal(report: Optional[RemovalReport]) -> None:
        """Log a removal event and recount the architecture (bookkeeping: not training time)."""
        nonlocal arch
        if report is None or report.units_removed == 0:
            return
        if cuda:
            _to_channels_last(model)
        arch = Arch.measure(model, example)
        state.prune_events += 1
        kept = sum(s.kept_dead for s in report.sites.values())
        metrics.write({"event": "removal", "step": state.step, "epoch": state.epoch,
                       "units_before": report.units_before, "units_after": report.units_after,
                       "params_before": report.params_before, "params_after": report.params_after,
                       "dead_kept": kept, "seconds": report.seconds, "widths": arch.widths}, state.step)

    def checkpoint() -> None:
        state.metrics_offset = metrics.offset()
        save_checkpoint(run_dir / CHECKPOINT_NAME, config=config_to_dict(cfg), architecture=architecture(model),
                        model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, method=method,
                        loader=data.train, progress=asdict(state))

    def timed(hook: Callable[[], Optional[RemovalReport]]) -> Optional[RemovalReport]:
        """Run a method hook, counting its time (dead checks, pruning) as training time."""
        t = time.perf_counter()
        result = hook()
        state.wall_s += time.perf_counter() - t
        return result

    def run_eval(epoch_record: dict) -> None:
        t = time.perf_counter()
        acc, loss = evaluate(model, data.test, autocast)
        state.best_acc = max(acc, state.best_acc or 0.0)
        epoch_record.update(test_acc=acc, test_loss=loss, live_units=live_units(model, data.probe))
        state.eval_s += time.perf_counter() - t

    log.info("run folder %s: %s %s (width %s) on %s, %d steps of batch %d on %s",
             run_dir, cfg.method.name, cfg.model.name, cfg.model.width, cfg.data.name, total_steps,
             cfg.train.batch_size, device)
    with metrics, bar, logging_redirect_tqdm(loggers=[log]):
        on_removal(timed(lambda: method.setup(ctx)))  # SNAP-like methods prune here
        # ---- the loop
        while state.epoch < cfg.train.epochs and state.step < total_steps:
            model.train()
            clock = time.perf_counter()
            for batch_index, (x, y) in enumerate(data.train, start=data.train.state_dict()["position"]):
                if cuda and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                lr = optimizer.param_groups[0]["lr"]
                loss_value, report = train_step(model, x, y, criterion, optimizer, scaler, method, autocast,
                                                state.step, cfg)
                scheduler.step()
                state.count_step(loss_value, len(x) * arch.train_flops)
                # bookkeeping below is not training time
                state.wall_s += time.perf_counter() - clock
                on_removal(report)
                if state.step % cfg.train.log_every == 0:
                    pruner = getattr(method, "pruner", None)
                    metrics.write({"step": state.step, "epoch": state.epoch,
                                   "loss": state.window_loss / state.window_batches, "lr": lr,
                                   "lam": pruner.lam if pruner else None, "sigma": pruner.sigma if pruner else None,
                                   "units": arch.units, "params": arch.params, "fwd_flops": arch.fwd_flops,
                                   "wall_s": state.wall_s}, state.step)
                    state.window_loss, state.window_batches = 0.0, 0
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.3f}", units=arch.units, refresh=False)
                epoch_done = batch_index == steps_per_epoch - 1 or state.step >= total_steps
                if cfg.train.checkpoint_every and state.step % cfg.train.checkpoint_every == 0 and not epoch_done:
                    checkpoint()
                clock = time.perf_counter()
                if state.step >= total_steps:
                    break
            # ---- end of epoch
            on_removal(timed(lambda: method.on_epoch_end(state.epoch)))
            record = {"epoch": state.epoch + 1, "step": state.step,
                      "train_loss": state.epoch_loss / max(1, state.epoch_batches),
                      "units": arch.units, "params": arch.params}
            if cfg.train.eval_every_epoch:
                run_eval(record)
            record["wall_s"] = state.wall_s
            metrics.write(record, state.step)
            log.info("epoch %d/%d  train loss %.4f%s  units %d/%d  params %.1f%%  wall %.1fs",
                     state.epoch + 1, cfg.train.epochs, record["train_loss"],
                     f"  test acc {100 * record['test_acc']:.2f}%" if "test_acc" in record else "",
                     arch.units, state.initial["units"], 100 * arch.params / state.initial["params"], state.wall_s)
            state.epoch += 1
            state.epoch_loss, state.epoch_batches = 0.0, 0
            checkpoint()
        # ---- final removal, evaluation, export
        on_removal(timed(method.finish))
        final: dict = {}
        run_eval(final)
        metrics.write({"event": "final", "step": state.step, **final, "units": arch.units,
                       "params": arch.params, "fwd_flops": arch.fwd_flops, "wall_s": state.wall_s}, state.step)
    save_pruned(model, run_dir / MODEL_NAME)
    summary = _summary(cfg, state, arch, final, total_steps) | {"run_dir": str(run_dir)}
    atomic_write_json(run_dir / SUMMARY_NAME, summary)
    return summary


def _summary(cfg: Config, state: Progress, arch: Arch, final: dict, total_steps: int) -> dict:
    """The numbers a paper reports about one run."""
    init = state.initial
    knob = {"dense": None, "demp": cfg.method.reg_peak}.get(cfg.method.name, cfg.method.target)
    return {
        "test_acc": final["test_acc"], "test_loss": final["test_loss"], "best_acc": state.best_acc,
        "units_initial": init["units"], "units_final": arch.units, "units_remaining": arch.units / init["units"],
        "params_initial": init["params"], "params_final": arch.params,
        "params_remaining": arch.params / init["params"],
        "fwd_flops_initial": init["fwd_flops"], "fwd_flops_final": arch.fwd_flops,
        "fwd_flops_remaining": arch.fwd_flops / init["fwd_flops"],
        "train_flops": state.train_flops, "flops_note": FLOPS_NOTE,
        "wall_s": state.wall_s, "eval_s": state.eval_s, "prune_events": state.prune_events,
        "steps": total_steps, "epochs": cfg.train.epochs,
        "method": cfg.method.name, "knob": knob, "optimizer": cfg.optim.name, "lr": cfg.optim.lr,
        "seed": cfg.seed, "model": cfg.model.name, "width": cfg.model.width, "dataset": cfg.data.name,
        "widths_final": arch.widths, "live_units_final": final["live_units"],
    }


def format_summary(summary: dict) -> str:
    """The end-of-run table: accuracy, units, parameters, FLOPs before/after, and wall time."""
    def row(name: str, before: str, after: str, ratio: str = "") -> str:
        return f"{name:<24}{before:>14}{after:>14}{ratio:>17}"

    def flops(n: float) -> str:
        return f"{n / 1e6:.2f} M" if n < 1e9 else f"{n / 1e9:.2f} G"

    s = summary
    lines = [f"{s['method']} on {s['dataset']}: {s['model']} (width {s['width']}), {s['optimizer']} "
             f"lr {s['lr']}, {s['epochs']} epochs / {s['steps']} steps, knob {s['knob']}",
             row("", "initial", "final", "final/initial"),
             row("test accuracy", "-", f"{100 * s['test_acc']:.2f}%", f"(best {100 * s['best_acc']:.2f}%)"),
             row("units", f"{s['units_initial']:,}", f"{s['units_final']:,}", f"{100 * s['units_remaining']:.1f}%"),
             row("parameters", f"{s['params_initial']:,}", f"{s['params_final']:,}",
                 f"{100 * s['params_remaining']:.1f}%"),
             row("forward FLOPs/example", flops(s["fwd_flops_initial"]), flops(s["fwd_flops_final"]),
                 f"{100 * s['fwd_flops_remaining']:.1f}%"),
             f"training FLOPs {s['train_flops'] / 1e12:.3f} T; {s['prune_events']} removal events",
             f"wall time {s['wall_s']:.1f} s training (dead checks and pruning included) "
             f"+ {s['eval_s']:.1f} s evaluation"]
    return "\n".join(lines)
