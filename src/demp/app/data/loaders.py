"""Loaders: batches of (x, y) for training and evaluation, resumable mid-epoch.

``BatchLoader`` serves an in-memory uint8 dataset and crops, flips and normalises a whole batch
with a few tensor ops, so the data side costs little next to a CNN training step on CPU.
``FolderLoader`` serves an ``ImageFolderDataset`` through a ``torch.utils.data.DataLoader``
whose workers decode the images.  Both satisfy ``Loader``, the interface the training loop uses.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F

from demp.app.data.sources import ImageFolderDataset, Splits, worker_count


@runtime_checkable
class Loader(Protocol):
    """The interface of ``BatchLoader`` and ``FolderLoader`` that training, evaluation and checkpoints use.

    Iterating yields the remaining (x float32 (B, C, H, W), y int64 (B,)) batches of the current
    epoch on the loader's device; the next ``iter`` starts the next epoch.  ``len()`` is the
    number of batches per epoch (the loop's steps per epoch).  ``state_dict()`` holds at least
    ``epoch`` and ``position`` (batches of the epoch already yielded, from which the loop numbers
    its batches) and goes into checkpoints; ``load_state_dict`` resumes from it.  Distributed
    training sets ``shard = (rank, world_size)``: every batch is then that rank's contiguous
    share (``shard_of``), so all ranks take the same number of steps.
    """

    shard: tuple[int, int]

    def __len__(self) -> int:
        """Batches per epoch."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield the remaining (x, y) batches of the current epoch."""

    def state_dict(self) -> dict[str, Any]:
        """Position to resume from: at least ``epoch`` and ``position`` (batches already yielded)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from ``state_dict()``: the next iteration yields the rest of that epoch."""


def shard_of(batch: torch.Tensor, shard: tuple[int, int]) -> torch.Tensor:
    """Rank ``shard[0]``'s contiguous share of ``batch`` split over ``shard[1]`` ranks."""
    rank, world = shard
    return batch if world == 1 else batch.tensor_split(world)[rank]


@dataclass
class Augment:
    """Training augmentation: zero-pad + random crop, random horizontal flip, optional resize."""

    crop_pad: int = 4
    flip: bool = True
    resize: int | None = None

    def __post_init__(self) -> None:
        """Reject settings that cannot work."""
        if self.crop_pad < 0:
            raise ValueError(f"crop_pad must be >= 0, got {self.crop_pad}")
        if self.resize is not None and self.resize < 1:
            raise ValueError(f"resize must be a positive size or None, got {self.resize}")


def crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int) -> torch.Tensor:
    """Crop each image of a zero-padded batch at its own (dy, dx) in [0, 2*pad], mirrored where ``flips``.

    One gather over the whole batch, so the cost does not grow with python per-image work.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad)) if pad else x
    wp = w + 2 * pad
    cols = torch.arange(w, device=x.device).expand(b, w)
    cols = torch.where(flips[:, None], w - 1 - cols, cols) + offsets[:, 1:2]
    rows = offsets[:, 0:1] + torch.arange(h, device=x.device)
    index = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    return padded.reshape(b, c, -1).gather(2, index).reshape(b, c, h, w)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float], resize: int | None = None) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 ``(x/255 - mean) / std``, optionally resized (bilinear) to ``resize``."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    out = x.to(torch.float32).mul_(1.0 / 255).sub_(mean_t).div_(std_t)
    if resize is not None and resize != out.shape[-1]:
        out = F.interpolate(out, size=(resize, resize), mode="bilinear", align_corners=False,
                            antialias=resize < out.shape[-1])
    return out


class BatchLoader:
    """Iterates (x float32 normalised (B,C,H,W), y int64) over in-memory uint8 images.

    With ``train=True`` the order is shuffled and ``augment`` applied, both drawn per epoch from
    the loader's own ``torch.Generator(seed)``; with ``train=False`` the order is fixed and only
    ``augment.resize`` applies.  Iterating yields the remaining batches of the current epoch, then
    the next ``iter`` starts the next epoch.  ``state_dict``/``load_state_dict`` resume an
    interrupted epoch exactly: same remaining batches, same order, same augmentation.
    ``shard = (rank, world_size)`` yields only that rank's contiguous share of every batch.
    """

    def __init__(self, x_uint8: torch.Tensor, y: torch.Tensor, batch_size: int, *,
                 mean: Sequence[float], std: Sequence[float], train: bool, augment: Augment | None,
                 seed: int = 0, drop_last: bool = False, device: str | torch.device = "cpu"):
        """Check the arrays and settings and move the whole dataset to ``device`` once."""
        if x_uint8.dtype != torch.uint8 or x_uint8.dim() != 4:
            raise ValueError(f"x_uint8 must be uint8 (N, C, H, W), got {x_uint8.dtype} {tuple(x_uint8.shape)}")
        if y.shape != (x_uint8.shape[0],):
            raise ValueError(f"y must have shape ({x_uint8.shape[0]},), got {tuple(y.shape)}")
        if len(mean) != x_uint8.shape[1] or len(std) != x_uint8.shape[1]:
            raise ValueError(f"mean/std need {x_uint8.shape[1]} values (one per channel), got {len(mean)}/{len(std)}")
        self.mean, self.std, self.augment = tuple(mean), tuple(std), augment
        self._init_order(x_uint8, y.to(torch.int64), batch_size, train, seed, drop_last, device)

    def _init_order(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, train: bool, seed: int,
                    drop_last: bool, device: str | torch.device) -> None:
        """Keep the examples on ``device`` and start the per-epoch order at epoch 0."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if drop_last and batch_size > len(y):
            raise ValueError(f"batch_size {batch_size} > {len(y)} examples with drop_last=True yields no batches")
        self.device = torch.device(device)
        self.x = x.to(self.device)  # kept whole on the device: batches never cross the bus
        self.y = y.to(self.device)
        self.batch_size, self.train, self.drop_last = batch_size, train, drop_last
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch, self.position = 0, 0
        self.shard = (0, 1)
        self._epoch_state = self.generator.get_state()
        self._plan: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _epoch_plan(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Order, crop offsets and flips for every position of this epoch, drawn once per epoch."""
        if self._plan is None:
            n, g = len(self.y), self.generator
            order = torch.randperm(n, generator=g) if self.train else torch.arange(n)
            pad = self.augment.crop_pad if self.train and self.augment else 0
            offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=g) if pad else torch.full((n, 2), pad)
            use_flip = self.train and self.augment is not None and self.augment.flip
            flips = torch.rand(n, generator=g) < 0.5 if use_flip else torch.zeros(n, dtype=torch.bool)
            self._plan = (order, offsets, flips)
        return self._plan

    def _batch(self, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Build the batch starting at ``start`` in the epoch order."""
        order, offsets, flips = self._epoch_plan()
        sl = shard_of(torch.arange(start, min(start + self.batch_size, len(self.y))), self.shard)
        idx = order[sl].to(self.device)
        x = self.x.index_select(0, idx)
        if self.train and self.augment and (self.augment.crop_pad or self.augment.flip):
            x = crop_flip(x, offsets[sl].to(self.device), flips[sl].to(self.device), self.augment.crop_pad)
        resize = self.augment.resize if self.augment else None
        return normalize(x, self.mean, self.std, resize), self.y.index_select(0, idx)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield the remaining batches of the current epoch; the epoch ends with its last batch."""
        for pos in range(self.position, len(self)):
            batch = self._batch(pos * self.batch_size)
            self.position = pos + 1
            if self.position == len(self):
                self.epoch, self.position, self._plan = self.epoch + 1, 0, None
                self._epoch_state = self.generator.get_state()
            yield batch

    def state_dict(self) -> dict:
        """Epoch, batches already yielded in it, and the generator state at the start of the epoch."""
        return {"epoch": self.epoch, "position": self.position, "generator": self._epoch_state.clone()}

    def load_state_dict(self, state: dict) -> None:
        """Resume from ``state_dict()``: the next iteration yields the rest of that epoch."""
        missing = {"epoch", "position", "generator"} - set(state)
        if missing:
            raise ValueError(f"loader state is missing {sorted(missing)}")
        if not 0 <= state["position"] <= len(self):
            raise ValueError(f"loader state position {state['position']} is outside 0..{len(self)} "
                             "(was it saved with another dataset or batch size?)")
        self.generator.set_state(state["generator"])
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._epoch_state, self._plan = state["generator"].clone(), None


class SequenceLoader(BatchLoader):
    """``BatchLoader``'s order, sharding and resume over byte sequences: yields int64 (B, T)
    inputs and (B, T) next-byte targets from uint8 (N, T) windows, never augmented."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, train: bool, seed: int = 0,
                 drop_last: bool = False, device: str | torch.device = "cpu"):
        """Check the windows and move them to ``device`` once."""
        if x.dtype != torch.uint8 or x.dim() != 2 or y.shape != x.shape or y.dtype != torch.uint8:
            raise ValueError(f"x and y must be uint8 (N, T) of one shape, got {x.dtype} {tuple(x.shape)} "
                             f"and {y.dtype} {tuple(y.shape)}")
        self.augment = None
        self._init_order(x, y, batch_size, train, seed, drop_last, device)

    def _batch(self, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The sequences at epoch positions ``start``.. as int64."""
        order, _, _ = self._epoch_plan()
        sl = shard_of(torch.arange(start, min(start + self.batch_size, len(self.y))), self.shard)
        idx = order[sl].to(self.device)
        return self.x.index_select(0, idx).long(), self.y.index_select(0, idx).long()


def probe_batches(splits: Splits, n_images: int, batch_size: int = 512,
                  resize: int | None = None) -> list[torch.Tensor]:
    """The first ``n_images`` training images (at most all), normalised and unaugmented, in batches."""
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    return [normalize(x, splits.mean, splits.std, resize)
            for x in splits.train_x[:n_images].split(batch_size)]


# ----------------------------------------------------------------------------- ImageNet-style folders


class FolderLoader:
    """``BatchLoader``'s interface over an ``ImageFolderDataset`` decoded lazily by workers.

    The order of each epoch is drawn from (seed, epoch), so a resumed epoch yields the same
    remaining images; the random crops come from the workers' generators and are not
    replayed bit for bit.
    """

    def __init__(self, dataset: ImageFolderDataset, batch_size: int, *, train: bool,
                 seed: int, device: torch.device):
        """A loader over ``dataset`` in batches of ``batch_size``, shuffled per epoch when ``train``."""
        self.dataset, self.batch_size, self.train, self.seed, self.device = dataset, batch_size, train, seed, device
        self.workers = worker_count()
        self.epoch, self.position = 0, 0
        self.shard = (0, 1)         # (rank, world size): yield that rank's share of each batch

    def __len__(self) -> int:
        """Batches per epoch (the last one may be short)."""
        return -(-len(self.dataset) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield the remaining batches of the current epoch, decoded by worker processes."""
        n = len(self.dataset)
        order = (torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch))
                 if self.train else torch.arange(n))
        batches = [shard_of(b, self.shard).tolist()
                   for b in order[self.position * self.batch_size:].split(self.batch_size)]
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=batches, num_workers=self.workers, pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(self.seed + self.epoch * 7919 + self.position))
        for x, y in loader:
            self.position += 1
            if self.position == len(self):
                self.epoch, self.position = self.epoch + 1, 0
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def state_dict(self) -> dict:
        """Epoch and batches already yielded in it (the order is redrawn from the seed)."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        """Resume from ``state_dict()``: the next iteration yields the rest of that epoch."""
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
