"""Byte-level text data: the pinned default corpus and its hash check, user corpora, the
position split and next-byte targets, SequenceLoader's order and resume, and a run's text data."""
from __future__ import annotations

import hashlib

import pytest
import torch

from demp.app.config import load_config
from demp.app.data import DataError, SequenceLoader, load_text, read_corpus
from demp.app.data import text as T
from demp.app.run_data import load_run_data
from demp.errors import DempError


def write_corpus(folder, files: dict[str, bytes]):
    """Files under ``folder`` (sub-folders allowed); returns the folder."""
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


def test_default_corpus_is_the_pinned_files_in_order():
    data = read_corpus()
    assert len(data) == 245_237 and hashlib.sha256(data).hexdigest() == T.DEFAULT_SHA256
    assert data.startswith(b'"""Torch-Pruning')   # torch_pruning/__init__.py comes first


def test_default_corpus_mismatch_names_the_file(monkeypatch):
    files = dict(T.DEFAULT_FILES)
    files["torch_pruning/ops.py"] = "0" * 64
    monkeypatch.setattr(T, "DEFAULT_FILES", files)
    monkeypatch.setattr(T, "DEFAULT_SHA256", "1" * 64)
    with pytest.raises(DataError, match=r"files that differ: torch_pruning/ops.py"):
        read_corpus()


def test_default_corpus_needs_the_pinned_version(monkeypatch):
    monkeypatch.setattr(T, "DEFAULT_VERSION", "0.0.1")
    with pytest.raises(DataError, match=r"torch-pruning==0.0.1.*data.root"):
        read_corpus()


def test_user_folder_reads_sorted_non_hidden_files_and_checks_a_given_hash(tmp_path):
    root = write_corpus(tmp_path, {"b.txt": b"BBB", "a/z.txt": b"AZ", ".hidden": b"no", "c/.git/x": b"no"})
    assert read_corpus(str(root)) == b"AZBBB"
    assert read_corpus(str(root / "b.txt")) == b"BBB"
    good = hashlib.sha256(b"AZBBB").hexdigest()
    assert read_corpus(str(root), good) == b"AZBBB"
    with pytest.raises(DataError, match=f"has SHA-256 {good}, expected {'f' * 64}"):
        read_corpus(str(root), "f" * 64)
    with pytest.raises(DataError, match="does not exist"):
        read_corpus(str(tmp_path / "missing"))
    with pytest.raises(DataError, match="no \\(non-hidden\\) files"):
        read_corpus(str(write_corpus(tmp_path / "empty", {".only": b"x"})))


def test_split_by_position_and_next_byte_targets(tmp_path):
    data = bytes(range(256)) * 4   # 1024 bytes: 922 train, 102 validation
    root = write_corpus(tmp_path, {"t.bin": data})
    s = load_text(str(root), context=10, val_fraction=0.1)
    assert s.context == 10 and s.train_x.dtype == torch.uint8
    cut = round(1024 * 0.9)
    assert s.train_x.shape == ((cut - 1) // 10, 10) and s.test_x.shape == ((1024 - cut - 1) // 10, 10)
    assert bytes(s.train_x.flatten().tolist()) == data[:len(s.train_x) * 10]
    assert bytes(s.train_y.flatten().tolist()) == data[1:len(s.train_x) * 10 + 1]
    assert bytes(s.test_x.flatten().tolist()) == data[cut:cut + len(s.test_x) * 10]
    assert bytes(s.test_y[-1].tolist()) == data[cut + 1 + 10 * (len(s.test_x) - 1):][:10]
    small = load_text(str(root), context=10, subset=3)
    assert torch.equal(small.train_x, s.train_x[:3]) and len(small.test_x) == 3
    assert torch.equal(small.test_x[-1], s.test_x[-1])   # evenly spaced over the validation part
    with pytest.raises(DataError, match="too few for one sequence"):
        load_text(str(root), context=200)


def test_sequence_loader_order_shards_and_resume():
    x = torch.arange(40, dtype=torch.uint8).view(10, 4)
    y = x + 1
    loader = SequenceLoader(x, y, 4, train=True, seed=3)
    epoch = list(loader)
    assert len(loader) == 3 and [b[0].shape for b in epoch] == [(4, 4), (4, 4), (2, 4)]
    assert all(b[0].dtype == torch.int64 and torch.equal(b[1], b[0] + 1) for b in epoch)
    assert sorted(torch.cat([b[0][:, 0] for b in epoch]).tolist()) == list(range(0, 40, 4))
    fresh = SequenceLoader(x, y, 4, train=True, seed=3)
    it = iter(fresh)
    next(it)
    state = fresh.state_dict()
    rest = list(it) + list(fresh)    # the rest of epoch 0 and all of epoch 1
    resumed = SequenceLoader(x, y, 4, train=True, seed=3)
    resumed.load_state_dict(state)
    again = list(resumed) + list(resumed)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(rest, again)) and len(rest) == len(again)
    plain = list(SequenceLoader(x, y, 4, train=False))
    assert torch.equal(torch.cat([b[0] for b in plain]), x.long())
    loader.shard = (1, 2)
    assert next(iter(loader))[0].shape == (2, 4)
    with pytest.raises(ValueError, match="uint8 \\(N, T\\)"):
        SequenceLoader(x.long(), y, 4, train=True)


def test_run_data_for_text(tmp_path):
    root = write_corpus(tmp_path, {"t.txt": b"hello world, " * 200})
    cfg = load_config(None, ["data.name=text", f"data.root={root}", "data.context=16", "data.probe_size=20",
                             "data.probe_batch=8", "train.batch_size=5", "model.name=relu_lm"])
    data = load_run_data(cfg, torch.device("cpu"))
    assert data.text and data.context == 16 and data.num_classes == 256
    assert [p.shape for p in data.probe] == [(8, 16), (8, 16), (4, 16)]
    assert data.probe[0].dtype == torch.int64
    x, y = data.score_batches(1)[0]
    assert x.shape == (5, 16) and torch.equal(x[:, 1:], y[:, :-1])


@pytest.mark.parametrize("override, match", [
    ("data.context=0", "data.context must be >= 1"),
    ("data.val_fraction=1", r"data.val_fraction must be in \(0, 1\)"),
    ("data.sha256=abc", "data.sha256 must be 64 hex digits"),
    ("data.augment=true", "data.augment and data.resize apply to images"),
])
def test_bad_text_settings_are_refused(override, match):
    with pytest.raises(DempError, match=match):
        load_config(None, ["data.name=text", "model.name=relu_lm", override])
