"""Tests for demp.app.data.loaders: batched crop/flip/normalise, BatchLoader's order, augmentation,
determinism and mid-epoch resume, probe batches, and the Loader interface both loaders share."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from demp.app.data import (Augment, BatchLoader, FolderLoader, ImageFolderDataset, Loader, Splits, crop_flip,
                           load_dataset, normalize, probe_batches, worker_count)


def const_splits(n: int = 10, c: int = 3, size: int = 8) -> Splits:
    """A Splits whose image i is filled with value 10*i and labelled i, so batches are traceable."""
    x = (torch.arange(n, dtype=torch.uint8) * 10).view(n, 1, 1, 1).expand(n, c, size, size).contiguous()
    y = torch.arange(n)
    return Splits(x, y, x.clone(), y.clone(), [str(i) for i in range(n)], (0.5,) * c, (0.25,) * c)


def test_crop_flip_matches_reference():
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.int64).remainder(256).to(torch.uint8).view(2, 3, 5, 6)
    offsets = torch.tensor([[0, 4], [3, 1]])
    flips = torch.tensor([False, True])
    out = crop_flip(x, offsets, flips, pad=2)
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (2, 2), (2, 2)))
    for i, ((dy, dx), flip) in enumerate(zip(offsets.tolist(), flips.tolist())):
        expected = padded[i, :, dy:dy + 5, dx:dx + 6]
        if flip:
            expected = expected[:, :, ::-1]
        assert np.array_equal(out[i].numpy(), expected)
    centred = crop_flip(x, torch.full((2, 2), 2), torch.zeros(2, dtype=torch.bool), pad=2)
    assert torch.equal(centred, x)


def test_loader_shapes_normalisation_and_len():
    s = const_splits(10)
    loader = BatchLoader(s.train_x, s.train_y, 4, mean=s.mean, std=s.std, train=False, augment=None)
    batches = list(loader)
    assert len(loader) == 3 and [b[0].shape[0] for b in batches] == [4, 4, 2]
    x, y = batches[0]
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (4, 3, 8, 8)
    assert y.tolist() == [0, 1, 2, 3]  # eval order is fixed
    assert torch.allclose(x[:, :, 0, 0], ((y.float() * 10 / 255 - 0.5) / 0.25)[:, None].expand(4, 3))
    dropped = BatchLoader(s.train_x, s.train_y, 4, mean=s.mean, std=s.std, train=True, augment=None, drop_last=True)
    assert len(dropped) == 2 and [b[0].shape[0] for b in dropped] == [4, 4]
    resized = BatchLoader(s.train_x, s.train_y, 4, mean=s.mean, std=s.std, train=False, augment=Augment(resize=16))
    assert next(iter(resized))[0].shape == (4, 3, 16, 16)
    with pytest.raises(ValueError, match="drop_last"):
        BatchLoader(s.train_x, s.train_y, 11, mean=s.mean, std=s.std, train=True, augment=None, drop_last=True)


def test_augmentation_changes_images_keeps_labels():
    s = load_dataset("synthetic")
    kwargs = dict(mean=s.mean, std=s.std, train=True, seed=3)
    plain = BatchLoader(s.train_x, s.train_y, 64, augment=None, **kwargs)
    aug = BatchLoader(s.train_x, s.train_y, 64, augment=Augment(), **kwargs)
    (xp, yp), (xa, ya) = next(iter(plain)), next(iter(aug))
    assert torch.equal(yp, ya)  # same shuffle, labels untouched
    assert xa.shape == xp.shape and not torch.equal(xa, xp)
    changed = (xa - xp).flatten(1).abs().amax(1) > 0
    assert changed.float().mean() > 0.8


def test_loader_is_deterministic_under_seed():
    s = load_dataset("synthetic")

    def run(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = BatchLoader(s.train_x, s.train_y, 100, mean=s.mean, std=s.std, train=True,
                             augment=Augment(), seed=seed)
        return list(loader) + list(loader)  # two epochs

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not torch.equal(a[0][1], c[0][1])
    assert not torch.equal(a[0][1], a[len(a) // 2][1])  # epochs reshuffle


def test_loader_resumes_mid_epoch():
    s = load_dataset("synthetic")

    def make() -> BatchLoader:
        return BatchLoader(s.train_x, s.train_y, 50, mean=s.mean, std=s.std, train=True,
                           augment=Augment(), seed=7)

    reference = make()
    expected = list(reference) + list(reference) + list(reference)  # epochs 0..2, 11 batches each
    interrupted = make()
    list(interrupted)
    it = iter(interrupted)
    for _ in range(4):
        next(it)
    state = interrupted.state_dict()
    assert state["epoch"] == 1 and state["position"] == 4
    resumed = make()
    resumed.load_state_dict(state)
    got = list(resumed) + list(resumed)
    assert len(got) == 7 + 11
    for (x1, y1), (x2, y2) in zip(got, expected[11 + 4:]):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    boundary = make()
    list(boundary)
    assert boundary.state_dict()["epoch"] == 1 and boundary.state_dict()["position"] == 0


def test_probe_batches():
    s = const_splits(10)
    probes = probe_batches(s, 7, batch_size=3)
    assert [p.shape[0] for p in probes] == [3, 3, 1]
    assert torch.equal(torch.cat(probes), normalize(s.train_x[:7], s.mean, s.std))
    assert probe_batches(s, 100, resize=4)[0].shape == (10, 3, 4, 4)


def test_both_loaders_share_the_loader_interface(tmp_path):
    s = const_splits(4)
    in_memory = BatchLoader(s.train_x, s.train_y, 2, mean=s.mean, std=s.std, train=False, augment=None)
    for cls in ("a", "b"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        Image.new("RGB", (12, 10), (40, 80, 120)).save(tmp_path / "train" / cls / "0.png")
    folder = FolderLoader(ImageFolderDataset(tmp_path, "train", image_size=8), 1, train=True, seed=0,
                          device=torch.device("cpu"))
    for loader in (in_memory, folder):
        assert isinstance(loader, Loader)
        assert loader.shard == (0, 1) and len(loader) == 2
        assert {"epoch", "position"} <= set(loader.state_dict())
    assert folder.workers == worker_count() and 1 <= worker_count() <= 8
