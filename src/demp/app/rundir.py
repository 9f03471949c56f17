"""A run folder: checking it before a run starts or resumes, and metrics.jsonl.

Its file names are in ``demp.app.runfiles`` (re-exported here).
"""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import yaml

from demp.app.checkpoint import load_checkpoint
from demp.core.atomic import atomic_write_text, remove_stale_temps
from demp.app.config import Config, config_diff, config_from_dict, config_to_dict, flat_config
from demp.app.runfiles import (CHECKPOINT_NAME, CONFIG_NAME, ERROR_NAME, METRICS_NAME,  # noqa: F401 (re-exported)
                               MODEL_NAME, SUMMARY_NAME)
from demp.errors import DempError


def default_run_dir(cfg: Config) -> Path:
    """runs/<dataset>-<model>-<method>-<date-time>."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.data.name}-{cfg.model.name.replace(':', '-')}-{cfg.method.name}-{stamp}"


def check_run_dir(cfg: Config, run_dir: Path, resume: bool) -> Optional[dict]:
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


def start_run_dir(cfg: Config, run_dir: Path) -> None:
    """Create the folder with its config.yaml, or clear what a killed run left half-written."""
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(run_dir)
    if not (run_dir / CONFIG_NAME).exists():
        atomic_write_text(run_dir / CONFIG_NAME, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


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


def check_tensorboard() -> None:
    """Refuse --tensorboard early when the package is missing."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise DempError("--tensorboard needs the tensorboard package: pip install 'demp[tensorboard]'") from None
