"""Tests for demp.app.run_data: a run's configuration wired into loaders (in memory or image folders),
probe images, score batches and the input/output shapes the model is built for."""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from demp.app.config import load_config
from demp.app.data import BatchLoader, FolderLoader
from demp.app.run_data import EVAL_BATCH, FOLDER_EVAL_BATCH, load_run_data

CPU = torch.device("cpu")


def test_in_memory_run_data():
    cfg = load_config(None, ["data.name=synthetic", "train.batch_size=64", "data.augment=true", "data.resize=20",
                             "data.probe_size=100", "data.probe_batch=40"])
    data = load_run_data(cfg, CPU)
    assert isinstance(data.train, BatchLoader) and isinstance(data.test, BatchLoader)
    assert len(data.train) == 8 and data.train.augment.flip and data.test.batch_size == EVAL_BATCH
    assert [tuple(p.shape) for p in data.probe] == [(40, 3, 20, 20), (40, 3, 20, 20), (20, 3, 20, 20)]
    assert (data.num_classes, data.in_channels, data.image_size) == (10, 3, 20)
    first, again = data.score_batches(10), data.score_batches(10)  # more than an epoch: crosses epochs
    assert len(first) == 10 and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
                                    for a, b in zip(first, again))
    x, y = next(iter(data.train))  # score batches have their own seed, so the loop's order is untouched
    assert x.shape == (64, 3, 20, 20) and not torch.equal(y, first[0][1])
    assert data.train.state_dict()["position"] == 1


def test_folder_run_data(tmp_path: Path):
    for split in ("train", "val"):
        for i, cls in enumerate(("a", "b")):
            (tmp_path / split / cls).mkdir(parents=True)
            for j in range(3):
                Image.new("RGB", (30, 20), (80 * i, 40 * j, 90)).save(tmp_path / split / cls / f"{j}.png")
    cfg = load_config(None, ["data.name=imagefolder", f"data.root={tmp_path}", "data.resize=16",
                             "train.batch_size=4", "data.probe_size=5", "data.probe_batch=2"])
    data = load_run_data(cfg, CPU)
    assert isinstance(data.train, FolderLoader) and isinstance(data.test, FolderLoader)
    assert data.train.train and not data.test.train and data.test.batch_size == FOLDER_EVAL_BATCH
    assert len(data.train) == 2 and len(data.test) == 1
    assert [tuple(p.shape) for p in data.probe] == [(2, 3, 16, 16), (2, 3, 16, 16), (1, 3, 16, 16)]
    assert (data.num_classes, data.in_channels, data.image_size) == (2, 3, 16)
