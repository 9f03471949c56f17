"""Datasets as uint8 tensors decoded once and cached, with augmentation done on whole batches.

Small image datasets (Fashion-MNIST, CIFAR-10, a synthetic set) live in memory as uint8
``(N, C, H, W)`` tensors: decoding happens once, the arrays are cached as ``.npy`` files, and
``BatchLoader`` crops, flips and normalises a whole batch with a few tensor ops, so the data
side costs little next to a CNN training step on CPU.  ImageNet-style folders are too large
for that and go through the lazy ``ImageFolderDataset`` with a ``torch.utils.data.DataLoader``.

Byte-level text (``text``) is read whole into memory and cut into fixed-length sequences.

Modules: ``sources`` (where datasets live and how they are decoded), ``cache`` (the decode-once
``.npy`` cache), ``text`` (byte sequences of a text corpus) and ``loaders`` (batches for training
and evaluation).  None of them reads the
run configuration; a run's loaders are wired from it in ``demp.app.run_data``.
"""
from demp.app.data.cache import cache_folder, cache_root
from demp.app.data.loaders import (Augment, BatchLoader, FolderLoader, Loader, SequenceLoader, crop_flip,
                                   normalize, probe_batches, shard_of)
from demp.app.data.sources import (DATASETS, FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, IMAGE_EXTENSIONS,
                                   IMAGENET_MEAN, IMAGENET_STD, DataError, ImageFolderDataset, Splits,
                                   channel_stats, decode_images, load_dataset, make_synthetic, read_idx,
                                   worker_count)
from demp.app.data.text import TEXT_DATASET, TextSplits, load_text, read_corpus

__all__ = [
    "DATASETS", "FASHION_MNIST_CLASSES", "FASHION_MNIST_DIR", "IMAGE_EXTENSIONS", "IMAGENET_MEAN",
    "IMAGENET_STD", "TEXT_DATASET", "Augment", "BatchLoader", "DataError", "FolderLoader",
    "ImageFolderDataset", "Loader", "SequenceLoader", "Splits", "TextSplits", "cache_folder", "cache_root",
    "channel_stats", "crop_flip", "decode_images", "load_dataset", "load_text", "make_synthetic", "normalize",
    "probe_batches", "read_corpus", "read_idx", "shard_of", "worker_count",
]
