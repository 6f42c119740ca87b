"""Data loading: IDX files, checksummed downloads and the train/dev/test datasets.

>>> from meprop_numba.data import load_dataset
>>> data = load_dataset("embedded")        # doctest: +SKIP
>>> data = load_dataset("fashion-mnist", data_dir="/usr/share/datasets")  # doctest: +SKIP
"""
from .datasets import DATASETS, Dataset, load_dataset, read_idx_split
from .download import ChecksumError, default_cache_dir, download, sha256_file
from .idx import IDXFormatError, read_idx, write_idx

__all__ = [
    "ChecksumError",
    "DATASETS",
    "Dataset",
    "IDXFormatError",
    "default_cache_dir",
    "download",
    "load_dataset",
    "read_idx",
    "read_idx_split",
    "sha256_file",
    "write_idx",
]
