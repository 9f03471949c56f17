"""Tests for demp.app.data.sources: Fashion-MNIST IDX files, the three CIFAR-10 forms, synthetic data,
load_dataset's names and subsets, the lazy ImageFolderDataset, and the errors that say how to fix a source."""
from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from demp import DempError
from demp.app.data import DATASETS, DataError, ImageFolderDataset, cache_folder, load_dataset, sources

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
REAL_ZIP = Path(os.environ.get("DEMP_DATA") or Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg.zip")
COLORS = {"ant": (200, 30, 30), "cat": (30, 200, 30), "dog": (30, 30, 200)}


# ----------------------------------------------------------------------------- helpers


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_fashion(root: Path, n_train: int = 6, n_test: int = 4) -> dict[str, np.ndarray]:
    """Tiny Fashion-MNIST-like IDX files with known contents."""
    rng = np.random.default_rng(0)
    arrays = {"train_x": rng.integers(0, 256, (n_train, 5, 4)), "train_y": np.arange(n_train) % 10,
              "test_x": rng.integers(0, 256, (n_test, 5, 4)), "test_y": np.arange(n_test) % 10}
    root.mkdir(parents=True, exist_ok=True)
    for key, stem in sources._FASHION_FILES.items():
        write_idx(root / f"{stem}.gz", arrays[key])
    return arrays


def image_bytes(color: tuple[int, int, int], fmt: str, size: int = 8) -> bytes:
    """A solid-colour image (JPEG is lossy, so tests compare solid colours with a tolerance)."""
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format=fmt)
    return buf.getvalue()


def make_folder(root: Path, fmt: str = "PNG", per_class: int = 2) -> Path:
    """root/train|test/<class>/<n>.<ext> with a solid colour per class."""
    ext = "png" if fmt == "PNG" else "jpg"
    for split in ("train", "test"):
        for cls, color in COLORS.items():
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                (folder / f"{i:04d}.{ext}").write_bytes(image_bytes(color, fmt))
    return root


def zip_folder(folder: Path, dest: Path, prefix: str = "") -> Path:
    """Zip a folder (stored, like the real archive), with macOS junk that must be ignored."""
    with zipfile.ZipFile(dest, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, prefix + p.relative_to(folder).as_posix())
        zf.writestr("__MACOSX/train/ant/._0000.jpg", b"junk")
    return dest


# ----------------------------------------------------------------------------- Fashion-MNIST


def test_idx_files_parse(tmp_path):
    arrays = make_fashion(tmp_path / "fm")
    splits = load_dataset("fashion_mnist", root=str(tmp_path / "fm"), cache_dir=str(tmp_path / "cache"))
    assert splits.train_x.shape == (6, 1, 5, 4) and splits.test_x.shape == (4, 1, 5, 4)
    assert torch.equal(splits.train_x[:, 0], torch.from_numpy(arrays["train_x"].astype(np.uint8)))
    assert splits.train_y.dtype == torch.int64 and splits.test_y.tolist() == [0, 1, 2, 3]
    assert splits.num_classes == 10 and splits.in_channels == 1
    assert splits.mean[0] == pytest.approx(arrays["train_x"].mean() / 255)
    assert splits.std[0] == pytest.approx(arrays["train_x"].std() / 255)


def test_idx_bad_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x00\x00\x09\x01\x00\x00\x00\x02ab")
    with pytest.raises(DataError, match="bad.gz.*magic"):
        sources.read_idx(bad)
    short = tmp_path / "short.gz"
    with gzip.open(short, "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + struct.pack(">I", 5) + b"ab")
    with pytest.raises(DataError, match="short.gz.*truncated"):
        sources.read_idx(short)


def test_fashion_missing_says_how_to_install(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("fashion_mnist", root=str(tmp_path))
    assert "apt-get install -y dataset-fashion-mnist" in str(info.value)
    assert "data.root" in str(info.value)


@pytest.mark.skipif(not Path(sources.FASHION_MNIST_DIR).is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist(tmp_path):
    splits = load_dataset("fashion_mnist", cache_dir=str(tmp_path), subset=1000)
    assert splits.train_x.shape == (1000, 1, 28, 28) and splits.test_x.shape == (1000, 1, 28, 28)
    assert set(splits.test_y.unique().tolist()) == set(range(10))
    full = load_dataset("fashion_mnist", cache_dir=str(tmp_path))
    assert full.train_x.shape[0] == 60000
    assert full.mean[0] == pytest.approx(0.2860, abs=1e-3) and full.std[0] == pytest.approx(0.3530, abs=1e-3)


# ----------------------------------------------------------------------------- CIFAR-10 sources


def make_cifar_pickle(root: Path, per_batch: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A cifar-10-batches-py folder from random arrays, shaped like the official (old numpy,
    bytes keys, protocol 2) batches; returns the train arrays."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    xs, ys = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, per_batch)]
        blob = pickle.dumps({b"data": x, b"labels": y, b"batch_label": name.encode()}, protocol=2)
        (folder / name).write_bytes(blob.replace(b"numpy._core.", b"numpy.core."))
        if name != "test_batch":
            xs.append(x)
            ys += y
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": CIFAR_CLASSES, "num_vis": 3072}))
    return np.concatenate(xs).reshape(-1, 3, 32, 32), np.array(ys)


def test_cifar_pickle_folder(tmp_path):
    train_x, train_y = make_cifar_pickle(tmp_path)
    splits = load_dataset("cifar10", root=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    assert torch.equal(splits.train_x, torch.from_numpy(train_x))
    assert splits.train_y.tolist() == train_y.tolist()
    assert splits.test_x.shape == (3, 3, 32, 32) and splits.classes == CIFAR_CLASSES
    assert splits.image_size == 32 and splits.in_channels == 3


def test_cifar_pickle_refuses_code(tmp_path):
    make_cifar_pickle(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
        pickle.dump(os.system, f)
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset("cifar10", root=str(tmp_path / "cifar-10-batches-py"), cache_dir=str(tmp_path / "c"))


def test_image_folder_labels_and_pixels(tmp_path):
    root = make_folder(tmp_path / "imgs", "PNG")
    splits = load_dataset("cifar10", root=str(root), cache_dir=str(tmp_path / "cache"))
    assert splits.classes == ["ant", "cat", "dog"]
    assert splits.train_x.shape == (6, 3, 8, 8) and splits.test_x.shape == (6, 3, 8, 8)
    assert splits.train_y.tolist() == [0, 1, 2, 0, 1, 2]  # interleaved, so prefixes stay balanced
    for x, y in zip(splits.train_x, splits.train_y):
        color = COLORS[splits.classes[y]]
        assert torch.equal(x[:, 0, 0], torch.tensor(color, dtype=torch.uint8))
    small = load_dataset("cifar10", root=str(root), subset=3, cache_dir=str(tmp_path / "cache"))
    assert small.train_y.tolist() == [0, 1, 2] and small.test_x.shape[0] == 3      # the test set shrinks too


def test_zip_of_folder(tmp_path):
    folder = make_folder(tmp_path / "imgs", "JPEG")
    archive = zip_folder(folder, tmp_path / "cifar10.zip", prefix="cifar10/")
    for root in (archive, tmp_path):  # the zip itself, or a folder holding it
        splits = load_dataset("cifar10", root=str(root), cache_dir=str(tmp_path / "cache"))
        assert splits.classes == ["ant", "cat", "dog"] and splits.train_y.tolist() == [0, 1, 2, 0, 1, 2]
        assert splits.train_x.shape == (6, 3, 8, 8)
        for x, y in zip(splits.train_x, splits.train_y):
            expected = torch.tensor(COLORS[splits.classes[y]]).view(3, 1, 1)
            assert (x.int() - expected).abs().max() <= 8  # JPEG is lossy


def test_corrupt_images_and_bad_zip_name_the_file(tmp_path):
    folder = make_folder(tmp_path / "imgs", "JPEG")
    bad = folder / "train" / "cat" / "0001.jpg"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(DataError, match="0001.jpg"):
        load_dataset("cifar10", root=str(folder), cache_dir=str(tmp_path / "cache"))
    archive = zip_folder(folder, tmp_path / "broken.zip")
    with pytest.raises(DataError, match=r"broken\.zip:train/cat/0001\.jpg"):
        load_dataset("cifar10", root=str(archive), cache_dir=str(tmp_path / "cache"))
    not_zip = tmp_path / "cifar.zip"
    not_zip.write_bytes(b"this is not a zip archive")
    with pytest.raises(DataError, match="cifar.zip.*not a zip"):
        load_dataset("cifar10", root=str(not_zip), cache_dir=str(tmp_path / "cache"))


def test_cifar_not_found_explains_forms(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", root=str(tmp_path))
    message = str(info.value)
    assert "cifar-10-batches-py" in message and "train/<class>" in message and "zip" in message
    assert "data.root" in message


def test_cifar_without_root_needs_demp_data(monkeypatch, tmp_path):
    monkeypatch.delenv("DEMP_DATA", raising=False)
    with pytest.raises(DataError, match="DEMP_DATA"):
        sources._cifar_source(None)
    monkeypatch.setenv("DEMP_DATA", str(tmp_path / "nowhere.zip"))
    with pytest.raises(DataError, match="no CIFAR-10 found at DEMP_DATA"):
        sources._cifar_source(None)
    assert isinstance(DataError("x"), DempError)


def test_unknown_dataset_lists_names():
    with pytest.raises(ValueError, match="fashion_mnist, cifar10, synthetic") as info:
        load_dataset("mnist")
    assert all(name in str(info.value) for name in DATASETS)
    with pytest.raises(ValueError, match="ImageFolderDataset"):
        load_dataset("imagefolder")


def test_synthetic_is_seeded():
    a, b, c = (load_dataset("synthetic", seed=s) for s in (0, 0, 1))
    assert a.train_x.shape == (512, 3, 16, 16) and a.test_x.shape == (256, 3, 16, 16)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)
    assert not torch.equal(a.train_x, c.train_x)
    assert a.train_y.bincount().tolist() == [52] * 2 + [51] * 8
    small = load_dataset("synthetic", subset=100)
    assert small.train_x.shape[0] == 100 and small.test_x.shape[0] == 100     # evaluation shrinks too
    assert len(small.test_y.unique()) == 10                                    # evenly spaced: every class
    # class patterns are separable: nearest class mean classifies the test set well
    means = torch.stack([a.train_x[a.train_y == k].float().mean(0) for k in range(10)])
    pred = torch.cdist(a.test_x.float().flatten(1), means.flatten(1)).argmin(1)
    assert (pred == a.test_y).float().mean() > 0.9


# ----------------------------------------------------------------------------- ImageFolderDataset


def test_image_folder_dataset(tmp_path):
    root = tmp_path / "inet"
    for split in ("train", "val"):
        for i, cls in enumerate(["b_cls", "a_cls"]):
            (root / split / cls).mkdir(parents=True)
            for j, size in enumerate([(40, 30), (25, 50)]):
                Image.new("RGB", size, (50 * i, 100, 30 * j)).save(root / split / cls / f"{j}.png")
    train = ImageFolderDataset(root, "train", image_size=16)
    val = ImageFolderDataset(root, "val", image_size=16)
    assert train.classes == ["a_cls", "b_cls"] and len(train) == 4
    x, y = train[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y == 0
    assert torch.equal(val[3][0], val[3][0]) and val[3][1] == 1  # eval is deterministic
    loader = torch.utils.data.DataLoader(train, batch_size=2, num_workers=2)
    batches = list(loader)
    assert batches[0][0].shape == (2, 3, 16, 16) and torch.cat([b[1] for b in batches]).tolist() == [0, 0, 1, 1]
    (root / "val" / "a_cls" / "0.png").write_bytes(b"broken")
    with pytest.raises(DataError, match="0.png"):
        val[0]
    with pytest.raises(DataError, match="does not exist"):
        ImageFolderDataset(root, "test")


# ----------------------------------------------------------------------------- real CIFAR-10 zip


@pytest.mark.skipif(not REAL_ZIP.is_file(), reason=f"{REAL_ZIP} not present")
def test_real_cifar_zip_light():
    source = sources._cifar_source(str(REAL_ZIP))
    assert source.kind == "zip"
    with zipfile.ZipFile(REAL_ZIP) as zf:
        indexed, classes = sources._index_images(zf.namelist(), REAL_ZIP)
    assert classes == CIFAR_CLASSES
    assert len(indexed["train"]) == 50000 and len(indexed["test"]) == 10000
    sample = indexed["train"][:20]
    x = sources.decode_images(sources._read_members(REAL_ZIP, [n for n, _ in sample]))
    assert x.shape == (20, 3, 32, 32) and x.dtype == np.uint8
    assert [label for _, label in sample] == list(range(10)) * 2
    if cache_folder("cifar10", sources._source_files(source)).is_dir():  # full check only when cached
        splits = load_dataset("cifar10", root=str(REAL_ZIP))
        assert splits.train_x.shape == (50000, 3, 32, 32) and splits.test_x.shape == (10000, 3, 32, 32)
        assert splits.train_y.bincount().tolist() == [5000] * 10
        assert torch.equal(splits.train_x[:20], torch.from_numpy(x))
