"""A run's data: the configured dataset's loaders, probe images and shapes, as the training loop needs them.

This is the only data code that reads the run configuration; ``demp.app.data`` knows nothing of
``Config``.  In-memory datasets get ``BatchLoader``s, ImageNet-style folders ``FolderLoader``s and
byte-level text ``SequenceLoader``s.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from demp.app.config import Config
from demp.app.data import (TEXT_DATASET, Augment, BatchLoader, FolderLoader, ImageFolderDataset, Loader,
                           SequenceLoader, load_dataset, load_text, probe_batches)
from demp.app.data.text import VOCAB

EVAL_BATCH = 1024          # in-memory test sets
FOLDER_EVAL_BATCH = 256    # image folders (full-size images decoded by workers)


@dataclass
class Data:
    """What the loop needs from a dataset: loaders, probe inputs and the input/output shapes."""
    train: Loader
    test: Loader
    probe: list[torch.Tensor]       # un-augmented training images (or sequences) for dead checks
    score_batches: Callable[[int], list[tuple[torch.Tensor, torch.Tensor]]]
    num_classes: int                # text: the vocabulary (256 bytes)
    in_channels: int
    image_size: int
    context: Optional[int] = None   # text: bytes per sequence (None: images)

    @property
    def text(self) -> bool:
        """Whether examples are byte sequences (next-byte targets) rather than images."""
        return self.context is not None


def _take(loader: Loader, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n`` batches of a fresh loader (across epochs if needed)."""
    batches: list[tuple[torch.Tensor, torch.Tensor]] = []
    while len(batches) < n:
        for batch in loader:
            batches.append(batch)
            if len(batches) == n:
                break
    return batches


def load_run_data(cfg: Config, device: torch.device) -> Data:
    """Loaders for the configured dataset; DataError (with the fix) when it is missing."""
    d, bs = cfg.data, cfg.train.batch_size
    if d.name == "imagefolder":
        return _folder_data(cfg, device)
    if d.name == TEXT_DATASET:
        return _text_data(cfg, device)
    splits = load_dataset(d.name, d.root, d.subset, seed=cfg.seed)
    augment = (Augment(crop_pad=4 if d.augment else 0, flip=d.augment, resize=d.resize)
               if d.augment or d.resize else None)

    def loader(x: torch.Tensor, y: torch.Tensor, batch: int, train: bool, seed: int) -> BatchLoader:
        """A loader over one split with this run's statistics and augmentation."""
        return BatchLoader(x, y, batch, mean=splits.mean, std=splits.std, train=train,
                           augment=augment, seed=seed, device=device)

    probe = probe_batches(splits, cfg.data.probe_size, cfg.data.probe_batch, d.resize)
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
    train = ImageFolderDataset(root, "train", image_size=size)
    plain = ImageFolderDataset(root, "train", image_size=size, train=False, classes=train.classes)
    test = ImageFolderDataset(root, test_split, image_size=size, classes=train.classes)
    picks = torch.linspace(0, len(plain) - 1, min(cfg.data.probe_size, len(plain))).long().tolist()
    probe = torch.stack([plain[i][0] for i in picks]).split(cfg.data.probe_batch)

    def loader(ds: ImageFolderDataset, batch: int, is_train: bool, seed: int) -> FolderLoader:
        """A loader over one split on this run's device."""
        return FolderLoader(ds, batch, train=is_train, seed=seed, device=device)

    return Data(train=loader(train, bs, True, cfg.seed), test=loader(test, FOLDER_EVAL_BATCH, False, cfg.seed),
                probe=[p.to(device) for p in probe],
                score_batches=lambda n: _take(loader(train, bs, True, cfg.seed + 1), n),
                num_classes=len(train.classes), in_channels=3, image_size=size)


def _text_data(cfg: Config, device: torch.device) -> Data:
    """Byte sequences of the text corpus; the probe is the first training sequences."""
    d, bs = cfg.data, cfg.train.batch_size
    splits = load_text(d.root, d.context, d.val_fraction, d.subset, d.sha256)

    def loader(x: torch.Tensor, y: torch.Tensor, batch: int, train: bool, seed: int) -> SequenceLoader:
        """A loader over one split's sequences on this run's device."""
        return SequenceLoader(x, y, batch, train=train, seed=seed, device=device)

    probe = splits.train_x[:d.probe_size].long().split(d.probe_batch)
    return Data(train=loader(splits.train_x, splits.train_y, bs, True, cfg.seed),
                test=loader(splits.test_x, splits.test_y, EVAL_BATCH, False, cfg.seed),
                probe=[p.to(device) for p in probe],
                score_batches=lambda n: _take(loader(splits.train_x, splits.train_y, bs, True, cfg.seed + 1), n),
                num_classes=VOCAB, in_channels=1, image_size=splits.context, context=splits.context)
