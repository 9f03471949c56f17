"""Tests for demp.app.data.cache: a cached dataset is read back instead of decoded, a changed source
starts a new entry, $DEMP_CACHE is honoured, and a damaged entry is decoded again."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from demp.app.data import cache_folder, load_dataset, sources
from demp.app.data.cache import read_cache, write_cache
from test_data_sources import COLORS, image_bytes, make_fashion, make_folder


def test_cache_hit_skips_decoding(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "imgs", "PNG")
    cache = tmp_path / "cache"
    first = load_dataset("cifar10", root=str(root), cache_dir=str(cache))
    monkeypatch.setattr(sources, "_decode", lambda source: pytest.fail("decoded again despite the cache"))
    second = load_dataset("cifar10", root=str(root), cache_dir=str(cache))
    for key in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(first, key), getattr(second, key))
    assert (second.classes, second.mean, second.std) == (first.classes, first.mean, first.std)
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []  # no temp folders left
    monkeypatch.undo()
    (root / "train" / "ant" / "0009.png").write_bytes(image_bytes(COLORS["ant"], "PNG"))  # source changes
    assert load_dataset("cifar10", root=str(root), cache_dir=str(cache)).train_x.shape[0] == 7
    assert len(list(cache.iterdir())) == 2


def test_cache_env_and_damaged_entry(tmp_path, monkeypatch):
    make_fashion(tmp_path / "fm")
    monkeypatch.setenv("DEMP_CACHE", str(tmp_path / "envcache"))
    load_dataset("fashion_mnist", root=str(tmp_path / "fm"))
    (entry,) = (tmp_path / "envcache").iterdir()
    (entry / "train_x.npy").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="damaged cache"):
        again = load_dataset("fashion_mnist", root=str(tmp_path / "fm"))
    assert again.train_x.shape == (6, 1, 5, 4)


def test_an_entry_splits_rejects_counts_as_damaged(tmp_path):
    splits = load_dataset("synthetic")
    folder = cache_folder("synthetic", [], str(tmp_path))
    write_cache(folder, splits)
    back = read_cache(folder)
    assert torch.equal(back.train_x, splits.train_x) and (back.mean, back.classes) == (splits.mean, splits.classes)
    np.save(folder / "train_y.npy", splits.train_x.numpy())      # labels replaced by images: malformed
    with pytest.warns(UserWarning, match="damaged cache"):
        assert read_cache(folder) is None
    assert not folder.exists() and read_cache(folder) is None
