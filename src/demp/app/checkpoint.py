"""Training checkpoints that resume a run bit for bit, written atomically (``demp.core.atomic``)."""
from __future__ import annotations

import io
import pickle
import random
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from demp.core.atomic import atomic_write_bytes
from demp.errors import DempError

FORMAT = "demp.checkpoint/1"


# ----------------------------------------------------------------------------- random state

def rng_state() -> dict[str, Any]:
    """Python, numpy, torch and CUDA generator states, as plain tensors and tuples."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators saved by ``rng_state``."""
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(path: str | Path, *, config: dict, architecture: dict, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any, method: Any,
                    loader: Any, progress: dict, sparse: Optional[dict] = None) -> None:
    """Write everything a resumed run needs, atomically.

    ``architecture`` is ``demp.app.export.architecture(model)`` (spec and widths of the pruned
    model); ``progress`` holds the loop's counters and metric accumulators; ``sparse`` the
    sparsifier's state (masks), if any.
    """
    state = {"format": FORMAT, "config": config, "architecture": architecture,
             "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
             "method": method.state_dict(), "loader": loader.state_dict(),
             "rng": rng_state(), "progress": progress, "sparse": sparse}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint`` (tensors only: no pickled code runs)."""
    path = Path(path)
    if not path.is_file():
        raise DempError(f"no checkpoint at {path}: the run stopped before its first checkpoint; "
                        "start it again (same --config/--set) with a new --out")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise DempError(f"cannot read checkpoint {path}: {e}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DempError(f"{path} is not a demp training checkpoint ({FORMAT})")
    return state
