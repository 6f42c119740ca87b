"""Build the Fashion-MNIST subset shipped inside the package.

Draws a class-balanced random subset (fixed seed) of the Fashion-MNIST
training and test sets and writes it, with the source files' checksums,
to ``meprop_numba/data/embedded/fashion_mnist_subset.npz``.

Usage::

    python scripts/make_embedded_subset.py /path/to/fashion-mnist [--train 7200] [--test 2000]

The directory must hold the four IDX files (``train-images-idx3-ubyte.gz``
...); on Debian/Ubuntu ``apt-get install dataset-fashion-mnist`` puts them
in ``/usr/share/datasets/fashion-mnist``.
"""
import argparse
import os
import pathlib

import numpy as np

from meprop_numba.data.datasets import read_idx_split
from meprop_numba.data.download import sha256_file

OUTPUT = pathlib.Path(__file__).resolve().parent.parent / "meprop_numba" / "data" / "embedded" / "fashion_mnist_subset.npz"


def balanced_subset(labels, size, rng):
    """Indices of `size` examples, the same number from each class, in file order."""
    classes = np.unique(labels)
    if size % len(classes):
        raise ValueError(f"size {size} is not a multiple of the {len(classes)} classes")
    per_class = size // len(classes)
    chosen = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in classes]
    return np.sort(np.concatenate(chosen))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="directory with the Fashion-MNIST IDX files")
    parser.add_argument("--train", type=int, default=7200, help="training images to keep (default 7200)")
    parser.add_argument("--test", type=int, default=2000, help="test images to keep (default 2000)")
    parser.add_argument("--seed", type=int, default=20170619)
    parser.add_argument("--output", default=str(OUTPUT))
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    arrays = {}
    for split, size in (("train", args.train), ("test", args.test)):
        images, labels, paths = read_idx_split(args.source, split)
        keep = balanced_subset(labels, size, rng)
        arrays[f"x_{split}"] = images[keep]
        arrays[f"y_{split}"] = labels[keep]
        arrays[f"index_{split}"] = keep.astype(np.int32)
        for path in paths:
            arrays[f"sha256_{os.path.basename(path)}"] = np.array(sha256_file(path))
    np.savez_compressed(args.output, **arrays)
    print(f"wrote {args.output} ({os.path.getsize(args.output) / 1e6:.2f} MB): "
          f"{args.train} train + {args.test} test images")


if __name__ == "__main__":
    main()
