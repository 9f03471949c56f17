"""The decode-once cache: a decoded dataset saved as ``.npy`` arrays plus ``meta.json``.

Each dataset gets a folder under ``cache_root()`` ($DEMP_CACHE, else ~/.cache/demp) named after
the dataset and a hash of the path, size and mtime of its source files, so replacing or editing
a source file starts a new entry.  Entries are written to a temporary folder and renamed into
place, so concurrent runs never read half an entry; a damaged entry is removed and decoded again.
This module knows nothing of particular datasets: it stores ``Splits``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from demp.app.data.splits import Splits

_CACHE_VERSION = 1
ARRAYS = ("train_x", "train_y", "test_x", "test_y")

def cache_root(cache_dir: str | None = None) -> Path:
    """The cache folder: ``cache_dir``, else $DEMP_CACHE, else ~/.cache/demp."""
    return Path(cache_dir or os.environ.get("DEMP_CACHE") or Path.home() / ".cache" / "demp").expanduser()


def _fingerprint(paths: Sequence[Path]) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of each file: changes whenever a source file is replaced or edited."""
    out = []
    for p in paths:
        st = p.stat()
        out.append((os.path.abspath(p), st.st_size, st.st_mtime_ns))
    return sorted(out)


def cache_folder(name: str, source_files: Sequence[Path], cache_dir: str | None = None) -> Path:
    """Cache folder of a dataset, keyed by its name and the path, size and mtime of its source files."""
    key = json.dumps([_CACHE_VERSION, name, _fingerprint(source_files)])
    return cache_root(cache_dir) / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def read_cache(folder: Path) -> Splits | None:
    """The cached entry, or None when absent or unreadable.

    ``Splits`` checks the arrays as it is built, so an entry it rejects counts as damaged: it is
    removed (with a warning) and the caller decodes again.
    """
    if not (folder / "meta.json").is_file():
        return None
    try:
        meta = json.loads((folder / "meta.json").read_text())
        arrays = [torch.from_numpy(np.load(folder / f"{k}.npy")) for k in ARRAYS]
        return Splits(*arrays, meta["classes"], tuple(meta["mean"]), tuple(meta["std"]))
    except (OSError, EOFError, ValueError, KeyError) as e:
        warnings.warn(f"ignoring damaged cache {folder} ({e}); decoding again")
        shutil.rmtree(folder, ignore_errors=True)
        return None


def write_cache(folder: Path, entry: Splits) -> None:
    """Save an entry as .npy files in a temporary folder, then rename it into place atomically."""
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
        for key in ARRAYS:
            np.save(tmp / f"{key}.npy", getattr(entry, key).numpy())
        meta = {"classes": entry.classes, "mean": entry.mean, "std": entry.std}
        (tmp / "meta.json").write_text(json.dumps(meta))
        os.replace(tmp, folder)
    except OSError as e:
        if not (folder / "meta.json").is_file():  # a concurrent writer winning the rename is fine
            warnings.warn(f"could not write the data cache {folder} ({e}); set DEMP_CACHE or "
                          "cache_dir to a writable folder to avoid decoding on every run")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
