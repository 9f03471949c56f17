"""Dataset sources: where each dataset lives, how it is decoded, and the in-memory ``Splits``.

Small image datasets (Fashion-MNIST, CIFAR-10, a synthetic set) become uint8 ``(N, C, H, W)``
tensors: ``load_dataset`` decodes a source once and reads it from the cache
(``demp.app.data.cache``) afterwards.  CIFAR-10 is accepted as the official python batches, an
image folder or a zip of one.  ImageNet-style folders are too large for memory and are decoded
lazily, one image at a time, by ``ImageFolderDataset``.
"""
from __future__ import annotations

import gzip
import io
import math
import multiprocessing
import os
import pickle
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from demp.app.data.cache import cache_folder, read_cache, write_cache
from demp.app.data.splits import Splits
from demp.errors import DempError

DATASETS = ("fashion_mnist", "cifar10", "synthetic")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_POOL_MIN_IMAGES = 4096  # below this a process pool costs more than it saves
_CHUNK = 2048
_CIFAR_FORMS = (
    "CIFAR-10 is read from any of: (a) the official python folder 'cifar-10-batches-py' "
    "(data_batch_1..5, test_batch, batches.meta); (b) an image folder 'train/<class>/*.jpg|png' "
    "and 'test/<class>/*.jpg|png'; (c) a zip of such a folder (e.g. cifar10-jpeg.zip). "
    "Point data.root (or the DEMP_DATA environment variable) at one of these or at a folder "
    "holding one."
)


class DataError(DempError):
    """A data problem the user can fix; the message says what is wrong and how to fix it."""


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std in [0, 1] units of a uint8 (N, C, H, W) tensor, via histograms."""
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[1]):
        counts = torch.bincount(x[:, c].reshape(-1), minlength=256).to(torch.float64)
        p = counts / counts.sum()
        mean = float((p * values).sum())
        means.append(mean)
        stds.append(math.sqrt(float((p * (values - mean) ** 2).sum())))
    return tuple(means), tuple(stds)


def _make_splits(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 classes: list[str]) -> Splits:
    """Wrap decoded numpy arrays as a Splits with train-set statistics."""
    tx = torch.from_numpy(np.ascontiguousarray(train_x, dtype=np.uint8))
    mean, std = channel_stats(tx)
    return Splits(tx, torch.from_numpy(np.asarray(train_y, dtype=np.int64)),
                  torch.from_numpy(np.ascontiguousarray(test_x, dtype=np.uint8)),
                  torch.from_numpy(np.asarray(test_y, dtype=np.int64)), classes, mean, std)


# ----------------------------------------------------------------------------- Fashion-MNIST

_FASHION_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (gzipped if the name ends in .gz) of unsigned bytes into an array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {path}: {e}. Re-download or reinstall it.") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes (bad magic number). "
                        "Re-download or reinstall it.")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + math.prod(dims):
        raise DataError(f"{path} is truncated or padded: header says {dims}, "
                        f"file has {len(raw) - header} data bytes. Re-download or reinstall it.")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _fashion_files(root: str | None) -> dict[str, Path]:
    """Locate the four Fashion-MNIST IDX files (.gz or uncompressed) or explain how to get them."""
    folder = Path(root) if root else Path(FASHION_MNIST_DIR)
    found, missing = {}, []
    for key, stem in _FASHION_FILES.items():
        candidates = [folder / f"{stem}.gz", folder / stem]
        hit = next((p for p in candidates if p.is_file()), None)
        if hit is None:
            missing.append(f"{stem}.gz")
        else:
            found[key] = hit
    if missing:
        raise DataError(
            f"Fashion-MNIST not found in {folder}: missing {', '.join(missing)}. Install it with "
            "`apt-get update && apt-get install -y dataset-fashion-mnist` (files land in "
            f"{FASHION_MNIST_DIR}), or put the four IDX .gz files in a folder and set data.root to it."
        )
    return found


def _decode_fashion(files: dict[str, Path]) -> Splits:
    """Decode the four IDX files into a Splits."""
    arrays = {key: read_idx(path) for key, path in files.items()}
    for part in ("train", "test"):
        x, y = arrays[f"{part}_x"], arrays[f"{part}_y"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"Fashion-MNIST {part} files disagree: images {x.shape}, labels {y.shape} "
                            f"({files[f'{part}_x']}, {files[f'{part}_y']}). Re-download them.")
    return _make_splits(
        arrays["train_x"][:, None], arrays["train_y"], arrays["test_x"][:, None], arrays["test_y"],
        list(FASHION_MNIST_CLASSES),
    )


# ----------------------------------------------------------------------------- CIFAR-10 sources


@dataclass(frozen=True)
class _Source:
    """Where a CIFAR-10 copy lives and in which of the three accepted forms."""

    kind: str  # "pickle" | "folder" | "zip"
    path: Path


def _detect_cifar(path: Path, depth: int = 1) -> _Source | None:
    """Recognise one of the accepted CIFAR-10 forms at ``path`` or (one level) inside it."""
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise DataError(f"{path} is not a zip archive (or it is damaged). {_CIFAR_FORMS}")
        return _Source("zip", path)
    if not path.is_dir():
        return None
    if (path / "data_batch_1").is_file():
        return _Source("pickle", path)
    if (path / "train").is_dir():
        return _Source("folder", path)
    if depth > 0:
        children = sorted(p for p in path.iterdir() if "cifar" in p.name.lower())
        for child in children:
            if child.is_dir() or child.suffix.lower() == ".zip":
                found = _detect_cifar(child, depth - 1)
                if found:
                    return found
    return None


def _cifar_source(root: str | None) -> _Source:
    """Find CIFAR-10 at ``root`` or, when not given, at the DEMP_DATA environment variable."""
    if root:
        path = Path(root).expanduser()
        if not path.exists():
            raise DataError(f"CIFAR-10 root {path} does not exist. {_CIFAR_FORMS}")
        found = _detect_cifar(path)
        if found is None:
            raise DataError(f"no CIFAR-10 found at {path}. {_CIFAR_FORMS}")
        return found
    env = os.environ.get("DEMP_DATA")
    if not env:
        raise DataError(f"where is CIFAR-10? Set data.root or the DEMP_DATA environment variable. {_CIFAR_FORMS}")
    path = Path(env).expanduser()
    found = _detect_cifar(path) if path.exists() else None
    if found is None:
        raise DataError(f"no CIFAR-10 found at DEMP_DATA={env}. {_CIFAR_FORMS}")
    return found


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only builds numpy arrays, so a CIFAR batch file cannot run arbitrary code."""

    _ALLOWED = {"_reconstruct", "ndarray", "dtype", "_frombuffer", "scalar"}

    def find_class(self, module: str, name: str):
        """Resolve only numpy's array builders (and bytes re-encoding used by protocol 2)."""
        if (module.split(".")[0] == "numpy" and name in self._ALLOWED) or (module, name) == ("_codecs", "encode"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _load_batch(path: Path) -> dict[str, object]:
    """Load one CIFAR python batch file; keys become str (python 2 pickles store them as bytes)."""
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
        return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    except FileNotFoundError as e:
        raise DataError(f"CIFAR-10 batch file {path} is missing. {_CIFAR_FORMS}") from e
    except Exception as e:  # unpickling raises many types on damaged files
        raise DataError(f"cannot read CIFAR-10 batch file {path}: {e}. Re-download the python version.") from e


def _decode_cifar_pickle(folder: Path) -> Splits:
    """Decode the official 'cifar-10-batches-py' folder."""
    def part(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Images and labels of the named batch files, concatenated."""
        xs, ys = [], []
        for name in names:
            batch = _load_batch(folder / name)
            try:
                xs.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(batch["labels"], dtype=np.int64))
            except (KeyError, ValueError) as e:
                raise DataError(f"{folder / name} is not a CIFAR-10 batch ({e}). Re-download it.") from e
        return np.concatenate(xs), np.concatenate(ys)

    train_x, train_y = part([f"data_batch_{i}" for i in range(1, 6)])
    test_x, test_y = part(["test_batch"])
    meta = _load_batch(folder / "batches.meta")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get("label_names", [])]
    return _make_splits(train_x, train_y, test_x, test_y, classes)


def _is_image_member(name: str) -> bool:
    """True for image files, skipping hidden files and macOS resource forks inside archives."""
    parts = name.split("/")
    return (name.lower().endswith(IMAGE_EXTENSIONS)
            and not any(p.startswith(".") or p == "__MACOSX" for p in parts))


def _index_images(names: Sequence[str], where: Path) -> tuple[dict[str, list[tuple[str, int]]], list[str]]:
    """Group '<...>/train|test/<class>/<file>' names into per-split (name, label) lists.

    Classes are the sorted training class names.  Within a split, files are interleaved across
    classes (one of each class in turn), so that keeping the first N examples stays balanced.
    """
    by_split: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    for name in names:
        parts = name.split("/")
        if len(parts) >= 3 and parts[-3] in by_split and _is_image_member(name):
            by_split[parts[-3]].setdefault(parts[-2], []).append(name)
    classes = sorted(by_split["train"])
    if not classes or not by_split["test"]:
        raise DataError(f"no images under train/<class>/ and test/<class>/ in {where}. {_CIFAR_FORMS}")
    unknown = sorted(set(by_split["test"]) - set(classes))
    if unknown:
        raise DataError(f"test classes {unknown} in {where} have no training folder; "
                        "train/ and test/ must hold the same class folders.")
    label = {c: i for i, c in enumerate(classes)}
    indexed = {}
    for split, groups in by_split.items():
        queues = [[(n, label[c]) for n in sorted(groups[c])] for c in sorted(groups)]
        longest = max(len(q) for q in queues)
        indexed[split] = [q[i] for i in range(longest) for q in queues if i < len(q)]
    return indexed, classes


def _decode_image(data: bytes | str, what: str) -> np.ndarray:
    """Decode one JPEG/PNG (bytes or a path) to an (H, W, 3) uint8 array; DataError names the file."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data,
                        formats=("JPEG", "PNG")) as img:
            return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot decode image {what}: {e}. The file is corrupt or not a JPEG/PNG; "
                        "replace or delete it.") from e


def _decode_chunk(items: list[tuple[str, bytes | str]]) -> np.ndarray:
    """Decode (name, bytes or path) images into one (n, H, W, 3) array; all must share one size."""
    out = None
    for i, (what, data) in enumerate(items):
        img = _decode_image(data, what)
        if out is None:
            out = np.empty((len(items),) + img.shape, dtype=np.uint8)
        elif img.shape != out.shape[1:]:
            raise DataError(f"image {what} is {img.shape[1]}x{img.shape[0]} but the others are "
                            f"{out.shape[2]}x{out.shape[1]}; in-memory datasets need one size "
                            "(use ImageFolderDataset for mixed sizes).")
        out[i] = img
    return out


def worker_count() -> int:
    """Worker processes for decoding and DataLoaders: the CPU cores this process may use, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, 8))


def decode_images(items: Sequence[tuple[str, bytes | str]]) -> np.ndarray:
    """Decode (name, bytes or path) images to uint8 (n, 3, H, W), in parallel processes when many."""
    chunks = [list(items[i:i + _CHUNK]) for i in range(0, len(items), _CHUNK)]
    workers = min(worker_count(), len(chunks))
    if workers > 1 and len(items) >= _POOL_MIN_IMAGES and "fork" in multiprocessing.get_all_start_methods():
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            parts = list(pool.map(_decode_chunk, chunks))
    else:
        parts = [_decode_chunk(chunk) for chunk in chunks]
    for chunk, part in zip(chunks, parts):
        if part.shape[1:] != parts[0].shape[1:]:
            raise DataError(f"image {chunk[0][0]} is {part.shape[2]}x{part.shape[1]} but {chunks[0][0][0]} is "
                            f"{parts[0].shape[2]}x{parts[0].shape[1]}; in-memory datasets need one size "
                            "(use ImageFolderDataset for mixed sizes).")
    return np.ascontiguousarray(np.concatenate(parts).transpose(0, 3, 1, 2))


def _read_members(archive: Path, names: Sequence[str]) -> list[tuple[str, bytes]]:
    """Read zip members into memory (fast; decoding them is the slow part)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            return [(f"{archive}:{name}", zf.read(name)) for name in names]
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"cannot read {archive}: {e}. Re-download or re-create the zip.") from e


def _decode_cifar_images(source: _Source) -> Splits:
    """Decode an image folder or a zip of one (train|test/<class>/<image>)."""
    if source.kind == "zip":
        try:
            with zipfile.ZipFile(source.path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise DataError(f"cannot open zip {source.path}: {e}. Re-download or re-create it.") from e
    else:
        names = [Path(d, f).relative_to(source.path).as_posix() for split in ("train", "test")
                 for d, _, files in os.walk(source.path / split) for f in files]
    indexed, classes = _index_images(names, source.path)
    train, test = indexed["train"], indexed["test"]
    members = [n for n, _ in train + test]
    if source.kind == "zip":
        x = decode_images(_read_members(source.path, members))
    else:
        x = decode_images([(str(source.path / n), str(source.path / n)) for n in members])
    labels = np.array([label for _, label in train + test], dtype=np.int64)
    return _make_splits(x[:len(train)], labels[:len(train)], x[len(train):], labels[len(train):], classes)


# ----------------------------------------------------------------------------- synthetic


def make_synthetic(n_train: int = 512, n_test: int = 256, *, num_classes: int = 10,
                   channels: int = 3, size: int = 16, seed: int = 0) -> Splits:
    """A seeded toy dataset: each class is a smooth random pattern plus pixel noise, learnable in seconds."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, channels, 4, 4, generator=g)
    patterns = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` noisy images with balanced, shuffled labels."""
        y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
        noise = torch.randn(n, channels, size, size, generator=g)
        x = (0.2 + 0.6 * patterns[y] + 0.12 * noise).clamp(0, 1)
        return (x * 255).round().to(torch.uint8), y

    train_x, train_y = draw(n_train)
    test_x, test_y = draw(n_test)
    mean, std = channel_stats(train_x)
    return Splits(train_x, train_y, test_x, test_y, [f"class{i}" for i in range(num_classes)], mean, std)


# ----------------------------------------------------------------------------- ImageNet-style folders


class ImageFolderDataset(torch.utils.data.Dataset):
    """``root/<split>/<class>/<image>`` decoded lazily with Pillow, for folders too large for memory.

    Training: random-resized-crop + horizontal flip (torch's global RNG, which DataLoader seeds
    per worker); evaluation: resize the short side to ``image_size / crop_fraction`` and crop the
    centre.  Items are (normalised float (3, S, S), label).
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", *, image_size: int = 224,
                 train: bool | None = None, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), crop_fraction: float = 0.875,
                 classes: Sequence[str] | None = None):
        """Index ``root/split/<class>/`` images (``classes`` fixes the label order, else sorted folders)."""
        folder = Path(root) / split
        if not folder.is_dir():
            raise DataError(f"image folder {folder} does not exist; expected {root}/{split}/<class>/*.jpg|png "
                            "(set data.root to the folder holding the split folders)")
        self.classes = list(classes) if classes is not None else sorted(
            p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        self.samples: list[tuple[str, int]] = []
        for label, name in enumerate(self.classes):
            for d, _, files in sorted(os.walk(folder / name)):
                self.samples += [(os.path.join(d, f), label) for f in sorted(files) if _is_image_member(f)]
        if not self.samples:
            raise DataError(f"no .jpg/.jpeg/.png images in {folder}/<class>/; expected {root}/{split}/<class>/*.jpg")
        self.image_size, self.train = image_size, split == "train" if train is None else train
        self.mean, self.std = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)
        self.scale, self.ratio, self.crop_fraction = scale, ratio, crop_fraction

    def __len__(self) -> int:
        """Number of images."""
        return len(self.samples)

    def _crop_box(self, w: int, h: int) -> tuple[float, float, float, float]:
        """Random-resized-crop box (left, top, right, bottom): random area fraction and aspect ratio."""
        area = w * h
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target = area * torch.empty(1).uniform_(*self.scale).item()
            aspect = math.exp(torch.empty(1).uniform_(log_lo, log_hi).item())
            cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < cw <= w and 0 < ch <= h:
                left = torch.randint(0, w - cw + 1, (1,)).item()
                top = torch.randint(0, h - ch + 1, (1,)).item()
                return left, top, left + cw, top + ch
        side = min(w, h)  # fallback: the centred square
        return (w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Decode, crop (random when training, centred otherwise) and normalise image ``index``."""
        path, label = self.samples[index]
        s = self.image_size
        try:
            with Image.open(path) as img:
                if not self.train:  # let the JPEG decoder downscale by 2/4/8 when the image is large
                    short = s / self.crop_fraction
                    img.draft("RGB", (math.ceil(short * img.width / min(img.size)),
                                      math.ceil(short * img.height / min(img.size))))
                img = img.convert("RGB")
                w, h = img.size
                if self.train:
                    box = self._crop_box(w, h)
                else:
                    side = min(w, h) * self.crop_fraction
                    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
                img = img.resize((s, s), Image.BILINEAR, box=box)
                if self.train and torch.rand(1).item() < 0.5:
                    img = img.transpose(Image.FLIP_LEFT_RIGHT)
                arr = np.asarray(img)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise DataError(f"cannot decode image {path}: {e}. Replace or delete the file.") from e
        x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255)
        return (x - self.mean) / self.std, label


# ----------------------------------------------------------------------------- cache keys


def _source_files(source: _Source | dict[str, Path]) -> list[Path]:
    """The files whose size and mtime key the cache of a dataset."""
    if isinstance(source, dict):
        return list(source.values())
    if source.kind == "zip":
        return [source.path]
    if source.kind == "pickle":
        return [source.path / f for f in os.listdir(source.path) if (source.path / f).is_file()]
    return [Path(d, f) for split in ("train", "test") for d, _, files in os.walk(source.path / split)
            for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]


# ----------------------------------------------------------------------------- load_dataset


def load_dataset(name: str, root: str | None = None, subset: int | None = None,
                 cache_dir: str | None = None, seed: int = 0) -> Splits:
    """Load an in-memory dataset (decoded once, then read from the cache).

    ``subset`` keeps at most the first N training examples and N test examples, evenly spaced
    over the test set (which files order by class), so that evaluating a small run costs no more
    than training it; ``seed`` only affects ``synthetic``, the others are fixed files.
    """
    if name == "imagefolder":
        raise ValueError("'imagefolder' is read lazily: use ImageFolderDataset(root, split) "
                         "with a torch DataLoader instead of load_dataset")
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)} "
                         "(and 'imagefolder' via ImageFolderDataset)")
    if subset is not None and subset < 1:
        raise ValueError(f"subset must be a positive number of training examples, got {subset}")
    if name == "synthetic":
        splits = make_synthetic(seed=seed)
    else:
        source = _fashion_files(root) if name == "fashion_mnist" else _cifar_source(root)
        folder = cache_folder(name, _source_files(source), cache_dir)
        splits = read_cache(folder)
        if splits is None:
            splits = _decode(source)
            write_cache(folder, splits)
    if subset is not None and subset < len(splits.train_y):
        train_x, train_y = splits.train_x[:subset].clone(), splits.train_y[:subset].clone()
        mean, std = channel_stats(train_x)
        picks = torch.linspace(0, len(splits.test_y) - 1, min(subset, len(splits.test_y))).long()
        splits = Splits(train_x, train_y, splits.test_x[picks].clone(), splits.test_y[picks].clone(),
                        splits.classes, mean, std)
    return splits


def _decode(source: _Source | dict[str, Path]) -> Splits:
    """Decode a dataset from its source files (the slow path the cache avoids)."""
    if isinstance(source, dict):
        return _decode_fashion(source)
    if source.kind == "pickle":
        return _decode_cifar_pickle(source.path)
    return _decode_cifar_images(source)
