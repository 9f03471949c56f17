"""``demp train``: train a model on real data with a method (DemP, dense or a baseline).

Read top to bottom like nanoGPT's train.py.  ``train`` checks the config and run folder,
builds a ``Run`` (data, model, optimizer, LR schedule, method, or all of them restored from
the run's checkpoint), then loops: ``Run.train_epoch`` runs the steps (loss + method penalty,
optimizer step, the method's hooks, which may remove units), ``Run.end_epoch`` evaluates and
checkpoints, and ``Run.finish`` makes the method's final removal, evaluates the final
network, exports it and writes ``summary.json``.
"""
from __future__ import annotations

import logging
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from demp.app.checkpoint import save_checkpoint, set_rng_state
from demp.core.atomic import atomic_write_json
from demp.app.config import Config, config_to_dict
from demp.app.distributed import NullLog, World, main_only_logging, training_forward
from demp.app.export import architecture, build_pruned
from demp.core.persist import save_pruned
from demp.app.measure import Arch, CrossEntropy, bits_per_byte, evaluate, live_units, run_summary
from demp.app.methods import Method, MethodContext, create_method
from demp.app.models import create_model
from demp.app.speed import Speed
from demp.app.run_data import Data, load_run_data
from demp.app.rundir import (CHECKPOINT_NAME, METRICS_NAME, MODEL_NAME, SUMMARY_NAME, MetricsLog,
                             check_run_dir, check_tensorboard, default_run_dir, start_run_dir)
from demp.core.batchnorm import choose_statistics
from demp.core.health import Collapse, at_chance
from demp.core.schedules import make_schedule
from demp.core.sparsity import Sparsifier, nonzero_params, sparse_flops
from demp.core.surgery import RemovalReport
from demp.errors import DempError

log = logging.getLogger("demp")


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


# ----------------------------------------------------------------------------- model and optimizer

def build_model(cfg: Config, data: Data) -> nn.Module:
    """The configured zoo model for this dataset's classes, channels and image size (text: its
    vocabulary and context, passed as the ``context`` keyword)."""
    m = cfg.model
    kwargs = {"context": data.context, **m.kwargs} if data.text else m.kwargs
    try:
        return create_model(m.name, num_classes=data.num_classes, in_channels=data.in_channels,
                            width=m.width, image_size=data.image_size, **kwargs)
    except (TypeError, ValueError) as e:
        hint = (" (text data needs a sequence model: relu_lm or hf:<transformers class>)"
                if data.text and "context" in str(e) else "")
        raise DempError(f"cannot build model '{m.name}' (width {m.width}, kwargs {m.kwargs}): {e}{hint}") from None


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW or SGD with momentum, one parameter group (surgery keeps its order)."""
    o = cfg.optim
    if o.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)


def lr_factor(cfg: Config, total_steps: int, steps_per_epoch: int) -> Callable[[int], float]:
    """LR multiplier per optimizer step: the schedule's shape times a linear warm-up.

    The shapes are DemP's schedule vocabulary (``demp.core.schedules``): one_cycle is torch's
    OneCycleLR shape (start lr/25, peak at 30%, end lr/2.5e5); step multiplies by gamma at each
    milestone (fractions of training); cosine decays to 0.
    """
    o = cfg.optim
    shape = make_schedule(o.schedule, 1.0, total_steps, milestones=tuple(o.milestones), gamma=o.gamma)
    warmup = round(o.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        return shape(step) * (min(1.0, (step + 1) / warmup) if warmup else 1.0)
    return factor


# ----------------------------------------------------------------------------- one step

def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, criterion: nn.Module,
               optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, method: Method,
               autocast: Callable[[], Any], step: int) -> tuple[float, Optional[RemovalReport]]:
    """Task loss + method penalty, backward, optimizer step, then the method's after_step hook.

    Returns the task loss and the removal report of the hook (None when it did no dead check).
    """
    with autocast():
        loss = criterion(model(x), y)
    value = loss.item()
    if not math.isfinite(value):
        raise DempError(f"loss is {value} at step {step}: training diverged; lower optim.lr "
                        "or the method's penalty (method.reg_peak)")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss + method.penalty()).backward()
    scaler.step(optimizer)
    scaler.update()
    return value, method.after_step(step, loss.detach())


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
    best_bpb: Optional[float] = None              # text: lowest validation bits per byte so far
    epoch_loss: float = 0.0
    epoch_batches: int = 0
    window_loss: float = 0.0
    window_batches: int = 0
    metrics_offset: int = 0
    initial: dict = field(default_factory=dict)   # Arch of the network before any removal
    speed: dict = field(default_factory=dict)     # the training format chosen at the start (app/speed.py)

    def count_step(self, loss: float, flops: int) -> None:
        """Account for one optimizer step."""
        self.step += 1
        self.train_flops += flops
        self.epoch_loss += loss
        self.epoch_batches += 1
        self.window_loss += loss
        self.window_batches += 1


# ----------------------------------------------------------------------------- the run

class Run:
    """One training run's objects and the bookkeeping between its steps."""

    def __init__(self, cfg: Config, run_dir: Path, ckpt: Optional[dict], tensorboard: bool, show_bar: bool,
                 world: Optional[World] = None):
        world = world or World()
        self.cfg, self.run_dir, self.world = cfg, run_dir, world
        seed_everything(cfg.seed)
        self.device = world.device(pick_device(cfg.device))
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.data = load_run_data(cfg, self.device)
        self.data.train.shard = (world.rank, world.size)
        self.steps_per_epoch = len(self.data.train)
        self.total_steps = min(cfg.train.epochs * self.steps_per_epoch, cfg.train.max_steps or math.inf)
        self.example = self.data.probe[0][:2]
        reference = self._build(ckpt)
        self.arch = Arch.measure(self.model, self.example)
        initial = self.arch if reference is None else Arch.measure(reference, self.example)
        self.state = (Progress(initial=asdict(initial), speed=self.speed.record()) if ckpt is None
                      else Progress(**ckpt["progress"]))
        if ckpt is not None:
            set_rng_state(ckpt["rng"])
        if world.main:
            start_run_dir(cfg, run_dir)
        self.metrics = MetricsLog(run_dir / METRICS_NAME, self.state.metrics_offset,
                                  run_dir / "tensorboard" if tensorboard else None,
                                  self.state.step) if world.main else NullLog()
        self.bar = tqdm(total=self.total_steps, initial=self.state.step, disable=not (show_bar and world.main),
                        unit="step", dynamic_ncols=True)

    def _build(self, ckpt: Optional[dict]) -> Optional[nn.Module]:
        """Model, optimizer, LR schedule, scaler and method; from the checkpoint when resuming.

        The method's hooks run in a fixed order: (new run) initial_model, setup, then (resuming)
        load_state_dict.  Returns the configured model when the method trains another one
        instead (the reference of the fractions remaining), else None.
        """
        cfg = self.cfg
        self.method = create_method(cfg.method)
        if ckpt:
            model, reference = build_pruned(ckpt["architecture"], ckpt["model"]), None
        else:
            reference = build_model(cfg, self.data)
            model = self.method.initial_model(reference, config_to_dict(cfg))
            reference = reference.to(self.device) if model is not reference else None
        model = model.to(self.device)
        saved = ckpt["progress"].get("speed") if ckpt else None
        self.speed = Speed.from_record(saved) if saved else self._choose_speed(model)
        self.model = self.speed.model(model)
        self.optimizer = build_optimizer(cfg, self.model)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factor(cfg, self.total_steps, self.steps_per_epoch))
        self.scaler = self.speed.scaler()
        self.criterion = CrossEntropy(label_smoothing=cfg.optim.label_smoothing)
        self.sparsifier = (Sparsifier(self.model, self.optimizer, self.example, self.total_steps,
                                      replace(cfg.sparse, seed=cfg.seed), state=ckpt["sparse"] if ckpt else None)
                           if cfg.sparse.method != "none" else None)
        self.method.setup(MethodContext(
            model=self.model, optimizer=self.optimizer, example_inputs=self.example, probe=self.data.probe,
            total_steps=self.total_steps, train_batches=self.data.score_batches, loss_fn=self.criterion,
            seed=cfg.seed, calib_batches=cfg.data.calib_batches,
            follow=(self.sparsifier.masks,) if self.sparsifier else ()))
        if ckpt is not None:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.scaler.load_state_dict(ckpt["scaler"])
            self.method.load_state_dict(ckpt["method"])
            self.data.train.load_state_dict(ckpt["loader"])
        self.forward = training_forward(self.model, self.world, cfg.train.compile)
        return reference

    def _choose_speed(self, model: nn.Module) -> Speed:
        """The training format: configured, or measured on one augmented training batch."""
        t = self.cfg.train
        with torch.random.fork_rng(devices=[]):
            x, y = self.data.score_batches(1)[0]
        return Speed.choose(t.channels_last, t.autocast, self.device, model, (x, y), self.total_steps)

    # ---- bookkeeping (not training time)
    def on_removal(self, report: Optional[RemovalReport]) -> None:
        """Log a removal event and recount the architecture."""
        if report is None or report.units_removed == 0:
            return
        self.speed.model(self.model)
        self.forward = training_forward(self.model, self.world, self.cfg.train.compile)
        self.arch = Arch.measure(self.model, self.example)
        self.state.prune_events += 1
        kept = sum(s.kept_dead for s in report.sites.values())
        self.metrics.write({"event": "removal", "step": self.state.step, "epoch": self.state.epoch,
                            "units_before": report.units_before, "units_after": report.units_after,
                            "params_before": report.params_before, "params_after": report.params_after,
                            "dead_kept": kept, "seconds": report.seconds, "widths": self.arch.widths},
                           self.state.step)

    def timed(self, hook: Callable[[], Optional[RemovalReport]]) -> None:
        """Run a method hook, counting its time (dead checks, pruning) as training time."""
        t = time.perf_counter()
        report = hook()
        self.state.wall_s += time.perf_counter() - t
        self.on_removal(report)

    def checkpoint(self) -> None:
        if not self.world.main:
            return
        self.state.metrics_offset = self.metrics.offset()
        save_checkpoint(self.run_dir / CHECKPOINT_NAME, config=config_to_dict(self.cfg),
                        architecture=architecture(self.model), model=self.model, optimizer=self.optimizer,
                        scheduler=self.scheduler, scaler=self.scaler, method=self.method,
                        sparse=self.sparsifier.state_dict() if self.sparsifier else None,
                        loader=self.data.train, progress=asdict(self.state))

    def evaluate(self, record: dict) -> None:
        """Test accuracy and loss (text: and bits per byte), and live units on the probe, into ``record``."""
        t = time.perf_counter()
        calibration = self.data.score_batches(self.cfg.data.calib_batches) if self.cfg.train.recalibrate_eval else None
        acc, loss = evaluate(self.model, self.data.test, self.speed.autocast_context, calibration)
        self.state.best_acc = max(acc, self.state.best_acc or 0.0)
        record.update(test_acc=acc, test_loss=loss)
        if self.data.text:
            record["test_bpb"] = bits_per_byte(loss)
            self.state.best_bpb = min(record["test_bpb"], self.state.best_bpb or math.inf)
        record["live_units"] = live_units(self.model, self.data.probe)
        self.state.eval_s += time.perf_counter() - t

    def log_step(self, lr: float) -> None:
        s, a = self.state, self.arch
        self.metrics.write({"step": s.step, "epoch": s.epoch, "loss": s.window_loss / s.window_batches, "lr": lr,
                            **self.method.log_values(), "units": a.units, "params": a.params,
                            "fwd_flops": a.fwd_flops, "wall_s": s.wall_s}, s.step)
        s.window_loss, s.window_batches = 0.0, 0

    # ---- the loop
    def train_epoch(self) -> None:
        """Steps until the epoch (or training) ends; dead checks and removals happen inside."""
        cfg, s = self.cfg, self.state
        self.model.train()
        clock = time.perf_counter()
        for batch_index, (x, y) in enumerate(self.data.train, start=self.data.train.state_dict()["position"]):
            lr = self.optimizer.param_groups[0]["lr"]
            loss, report = train_step(self.forward, self.speed.batch(x), y, self.criterion, self.optimizer,
                                      self.scaler, self.method, self.speed.autocast_context, s.step)
            if self.sparsifier is not None:   # after the method's hook: masks win over DemP's noise
                self.sparsifier.step()
            self.scheduler.step()
            s.count_step(loss, len(x) * self.world.size * self.arch.train_flops)
            s.wall_s += time.perf_counter() - clock
            self.on_removal(report)
            if s.step % cfg.train.log_every == 0:
                self.log_step(lr)
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}", units=self.arch.units, refresh=False)
            epoch_done = batch_index == self.steps_per_epoch - 1 or s.step >= self.total_steps
            if cfg.train.checkpoint_every and s.step % cfg.train.checkpoint_every == 0 and not epoch_done:
                self.checkpoint()
            clock = time.perf_counter()
            if s.step >= self.total_steps:
                break

    def end_epoch(self) -> None:
        """The method's epoch hook, the epoch's line (and test accuracy), a checkpoint."""
        cfg, s = self.cfg, self.state
        self.timed(lambda: self.method.on_epoch_end(s.epoch))
        record = {"epoch": s.epoch + 1, "step": s.step, "train_loss": s.epoch_loss / max(1, s.epoch_batches),
                  "units": self.arch.units, "params": self.arch.params}
        if cfg.train.eval_every_epoch:
            self.evaluate(record)
        record["wall_s"] = s.wall_s
        self.metrics.write(record, s.step)
        log.info("epoch %d/%d  train loss %.4f%s%s  units %d/%d  params %.1f%%  wall %.1fs",
                 s.epoch + 1, cfg.train.epochs, record["train_loss"],
                 f"  test acc {100 * record['test_acc']:.2f}%" if "test_acc" in record else "",
                 f"  test bpb {record['test_bpb']:.4f}" if "test_bpb" in record else "",
                 self.arch.units, s.initial["units"], 100 * self.arch.params / s.initial["params"], s.wall_s)
        s.epoch += 1
        s.epoch_loss, s.epoch_batches = 0.0, 0
        self.checkpoint()

    def finish(self) -> dict:
        """Final removal, final evaluation, exported model and summary.json."""
        self.timed(self.method.finish)
        statistics = self._settle_statistics()
        final: dict = {}
        self.evaluate(final)
        collapsed = self._collapse(final["test_acc"])
        a, s = self.arch, self.state
        self.metrics.write({"event": "final", "step": s.step, **final, **self.method.log_values(),
                            "units": a.units, "params": a.params, "fwd_flops": a.fwd_flops,
                            "wall_s": s.wall_s}, s.step)
        if self.world.main:
            save_pruned(self.model, self.run_dir / MODEL_NAME)
        c = self.cfg
        about = {"steps": self.total_steps, "epochs": c.train.epochs,
                 "method": c.method.name, "label": c.label,
                 "knob": self.method.knob_value(), "knob_name": self.method.knob_name(), **self._budget_summary(a),
                 "optimizer": c.optim.name, "lr": c.optim.lr,
                 "seed": c.seed, "model": c.model.name, "width": c.model.width, "dataset": c.data.name,
                 "batch_size": c.train.batch_size, "world_size": self.world.size,
                 "global_batch": c.train.batch_size, "speed": self.speed.record(),
                 "bn_statistics": statistics, **self._sparse_summary(), "collapsed": collapsed,
                 "run_dir": str(self.run_dir), **self.method.summary()}
        summary = self.world.same(run_summary(s.initial, a, final, asdict(s), about))   # rank 0's, written
        if self.world.main:
            atomic_write_json(self.run_dir / SUMMARY_NAME, summary)
        return summary

    def _collapse(self, test_acc: float) -> Optional[dict]:
        """The collapse the method saw, or a final accuracy at chance; said in one line."""
        seen = self.method.collapsed()
        if seen is None and at_chance(test_acc, self.data.num_classes):
            best = self.state.best_acc or 0.0
            seen = asdict(Collapse(self.state.step, "final accuracy", best, test_acc,
                                   f"the network ended at chance ({100 * test_acc:.2f}%, best {100 * best:.2f}%"
                                   f" during training): lower the learning rate or the method's strength"))
        if seen is not None:
            log.warning("COLLAPSED: %s", Collapse(**seen).line())
        return seen

    def _settle_statistics(self) -> Optional[dict]:
        """Keep the BatchNorm statistics that serve the probe better (trained or re-estimated)."""
        if not self.cfg.train.final_statistics:
            return None
        t = time.perf_counter()
        choice = choose_statistics(self.model, self.data.probe, self.data.score_batches(self.cfg.data.calib_batches))
        self.state.wall_s += time.perf_counter() - t
        if choice.kept == "re-estimated":
            log.info("BatchNorm statistics re-estimated for the final network (probe %s %.4f -> %.4f)",
                     choice.criterion, choice.trained, choice.reestimated)
        return asdict(choice)

    def _sparse_summary(self) -> dict[str, Any]:
        """Non-zero parameters and the forward FLOPs a sparse kernel would need, for every run
        (a dense run's are its own counts), and the sparse settings and layer densities."""
        initial = self.state.initial
        nonzero, flops = nonzero_params(self.model), sparse_flops(self.model, self.example)
        out = {"nonzero_params_final": nonzero, "nonzero_params_remaining": nonzero / initial["params"],
               "sparse_fwd_flops_final": flops, "sparse_fwd_flops_remaining": flops / initial["fwd_flops"],
               "sparse": None}
        if self.sparsifier is not None:
            out["sparse"] = {**asdict(self.sparsifier.config),
                             "layer_density": {n: self.sparsifier.density_of(n) for n in self.sparsifier.layers}}
        return out

    def _budget_summary(self, arch: Arch) -> dict[str, Any]:
        """target (fraction removed), its measure, what was reached, and whether it was met."""
        budget = self.method.budget()
        if budget is None:
            return {"target": None}
        measure = budget["measure"]
        reached = 1 - getattr(arch, measure) / self.state.initial[measure]
        return {**budget, "reached": reached}

    def close(self) -> None:
        self.bar.close()
        self.metrics.__exit__()


def train(cfg: Config, out_dir: str | None = None, resume: bool = False, progress: bool | None = None,
          *, tensorboard: bool = False) -> dict:
    """Train ``cfg`` into a run folder and return the summary (also written to summary.json).

    ``resume=True`` continues the run in ``out_dir`` from its checkpoint; the config must equal
    the one the run started with.  ``progress=None`` shows progress bars only on a terminal.
    Per-epoch lines go to the ``demp`` logger.  Nothing is written before the config, run
    folder, data and model are known good.  Under torchrun each process trains its share of
    every batch and rank 0 alone writes (``demp.app.distributed``).
    """
    cfg.validate()
    if tensorboard:
        check_tensorboard()
    world = World.start(pick_device(cfg.device))
    finished = False
    try:
        world.check_batch(cfg.train.batch_size)
        run_dir = Path(world.same(str(out_dir or cfg.out or default_run_dir(cfg))))
        ckpt = check_run_dir(cfg, run_dir, resume)
        world.barrier()   # every rank has checked the folder before rank 0 writes to it
        with main_only_logging(world, log):
            summary = _train(cfg, run_dir, ckpt, tensorboard, progress, world)
        finished = True
        return summary
    finally:
        world.close(finished)


def _train(cfg: Config, run_dir: Path, ckpt: Optional[dict], tensorboard: bool, progress: bool | None,
           world: World) -> dict:
    """Build the run and loop over its epochs: this process's part of ``train``."""
    run = Run(cfg, run_dir, ckpt, tensorboard, sys.stdout.isatty() if progress is None else progress, world)
    log.info("run folder %s: %s %s (width %s) on %s, %d steps of batch %d on %s", run_dir, cfg.method.name,
             cfg.model.name, cfg.model.width, cfg.data.name, run.total_steps, cfg.train.batch_size, run.device)
    try:
        with logging_redirect_tqdm(loggers=[log]):
            run.timed(run.method.on_train_start)   # SNAP-like methods prune here
            while run.state.epoch < cfg.train.epochs and run.state.step < run.total_steps:
                run.train_epoch()
                run.end_epoch()
            return run.finish()
    finally:
        run.close()
