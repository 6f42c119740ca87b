"""Image-classification datasets: the embedded subset, Fashion-MNIST, MNIST, any IDX directory.

Every loader returns a :class:`Dataset` with a train/dev/test split: the
dev set is the last `dev_size` training images (by default one twelfth of
them: 5,000 of 60,000; the released meProp code holds out the first 5,000 instead), the
test set is the file's test set.
Images are flattened to ``(N, 784)`` and scaled to ``[0, 1]``.
"""
import os
from dataclasses import dataclass, field
from importlib import resources

import numpy as np

from .download import default_cache_dir, download
from .idx import read_idx

__all__ = ["Dataset", "DATASETS", "MAX_CLASSES", "load_dataset", "read_idx_split", "find_idx_file"]

_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

#: The downloadable datasets: name -> (mirror URLs, {file name: SHA-256}).
DATASETS = {
    "fashion-mnist": (
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        {
            "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
            "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
            "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
            "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
        },
    ),
    "mnist": (
        (
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        {
            "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
    ),
}

# Where system packages put the files (Debian/Ubuntu ``dataset-fashion-mnist``).
_SYSTEM_DIRS = {"fashion-mnist": ("/usr/share/datasets/fashion-mnist",)}

# Classes of the named datasets: a label outside them is an error.
_N_CLASSES = {"embedded": 10, "fashion-mnist": 10, "mnist": 10}
#: Most classes a dataset may have: the model's output layer gets one row per
#: class, so a corrupt label must not be able to size it (2**31 classes would
#: need terabytes).
MAX_CLASSES = 1 << 16

EMBEDDED_FILE = "fashion_mnist_subset.npz"
DATA_DIR_ENV = "MEPROP_NUMBA_DATA_DIR"


@dataclass
class Dataset:
    """A classification dataset split into train, dev and test sets.

    Construction never raises: the fields are stored as given, and
    :func:`load_dataset` is what checks the files.

    Parameters
    ----------
    name : str
        The dataset's name (``'embedded'``, ``'mnist'``, a directory's name).
    x_train, y_train, x_dev, y_dev, x_test, y_test : numpy.ndarray
        ``(N, 784)`` images in ``[0, 1]``, float32 or float64, and their
        int64 class labels, stored as the attributes of the same names.
    n_classes : int, optional
        Number of classes (default 10).
    source : str, optional
        Where the data came from (a directory or the package file).

    Examples
    --------
    >>> from meprop_numba.data import load_dataset
    >>> data = load_dataset("embedded")
    >>> data.summary()
    'embedded: 6600 train / 600 dev / 2000 test, 784 features, 10 classes'
    >>> data.n_features, data.x_train.dtype
    (784, dtype('float32'))
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_dev: np.ndarray
    y_dev: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int = 10
    source: str = field(default="")

    @property
    def n_features(self):
        """Features per image (784 for 28x28 images)."""
        return self.x_train.shape[1]

    def summary(self):
        """One line: name and split sizes.

        Returns
        -------
        str
            For example ``'mnist: 55000 train / 5000 dev / 10000 test, 784
            features, 10 classes'``.
        """
        return (f"{self.name}: {len(self.y_train)} train / {len(self.y_dev)} dev / "
                f"{len(self.y_test)} test, {self.n_features} features, {self.n_classes} classes")


def find_idx_file(directory, stem):
    """Path of ``stem`` or ``stem.gz`` in `directory`, or None.

    Parameters
    ----------
    directory : str or os.PathLike
        Where to look.
    stem : str
        The file name without ``.gz``, e.g. ``'train-images-idx3-ubyte'``.

    Returns
    -------
    str or None
        The compressed file when both exist, else the one that exists;
        None when neither does. Never raises.

    Examples
    --------
    >>> import os, tempfile
    >>> from meprop_numba.data.datasets import find_idx_file
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     open(os.path.join(tmp, "t10k-labels-idx1-ubyte.gz"), "wb").close()
    ...     os.path.basename(find_idx_file(tmp, "t10k-labels-idx1-ubyte"))
    ...     find_idx_file(tmp, "train-labels-idx1-ubyte") is None
    't10k-labels-idx1-ubyte.gz'
    True
    """
    for name in (stem + ".gz", stem):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def read_idx_split(directory, split):
    """Read the images and labels of one split from an IDX directory.

    Parameters
    ----------
    directory : str or os.PathLike
        Holds ``train-images-idx3-ubyte[.gz]`` and friends.
    split : {'train', 'test'}

    Returns
    -------
    images : numpy.ndarray
        uint8 ``(N, rows, cols)``.
    labels : numpy.ndarray
        uint8 ``(N,)``.
    paths : tuple of str
        The two files read.

    Raises
    ------
    FileNotFoundError
        If a file is missing.
    IDXFormatError
        If a file is not well-formed IDX (a header larger than the file, a
        bad magic number, ...).
    ValueError
        If the contents cannot be a classification split: images that are
        not 3-D unsigned bytes or have 0 rows or columns, no images, labels
        that are not 1-D integers, a negative label or one of
        :data:`MAX_CLASSES` or more, or image and label counts that differ.
        The message names the file.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from meprop_numba.data import read_idx_split, write_idx
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     write_idx(os.path.join(tmp, "t10k-images-idx3-ubyte"), np.zeros((5, 28, 28), np.uint8))
    ...     write_idx(os.path.join(tmp, "t10k-labels-idx1-ubyte.gz"), np.arange(5, dtype=np.uint8))
    ...     images, labels, paths = read_idx_split(tmp, "test")
    >>> images.shape, labels.tolist()
    ((5, 28, 28), [0, 1, 2, 3, 4])
    """
    directory = os.fspath(directory)
    paths = []
    for stem in _STEMS[split]:
        path = find_idx_file(directory, stem)
        if path is None:
            raise FileNotFoundError(f"{directory}: no {stem} or {stem}.gz")
        paths.append(path)
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    _check_split(images, labels, *paths)
    return images, labels, tuple(paths)


def _check_split(images, labels, images_name, labels_name):
    """Raise ValueError, naming the file, unless `images` and `labels` form a usable split."""
    if images.ndim != 3:
        raise ValueError(f"{images_name}: expected 3-D images (count, rows, cols), "
                         f"got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"{images_name}: images must be unsigned bytes 0..255 (IDX type "
                         f"0x08), got {images.dtype}")
    if images.shape[1] == 0 or images.shape[2] == 0:
        raise ValueError(f"{images_name}: images of {images.shape[1]}x{images.shape[2]} pixels; "
                         "each needs at least one row and one column")
    if len(images) == 0:
        raise ValueError(f"{images_name}: holds no images")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"{labels_name}: labels must be a 1-D array of integers, "
                         f"got shape {labels.shape} of {labels.dtype}")
    if len(images) != len(labels):
        raise ValueError(f"{images_name} holds {len(images)} images but {labels_name} holds "
                         f"{len(labels)} labels")
    _check_label_range(labels, labels_name, MAX_CLASSES, "class ids")


def _check_label_range(labels, labels_name, n_classes, classes):
    for bad, what in ((labels < 0, "negative"), (labels >= n_classes,
                                                 f"outside {classes}, [0, {n_classes})")):
        if bad.any():
            index = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{labels_name}: label {labels[index]} at index {index} is {what}")


def _check_test_against_train(train, test, n_classes=None):
    """The test images of the training images' size, every label in the dataset's classes.

    `train` and `test` are ``(images, labels, (images_name, labels_name))``;
    `n_classes` is the dataset's known number of classes, None to take the
    training labels' range.
    """
    (x_train, y_train, (train_images, train_labels)), (x_test, y_test, test_names) = train, test
    if x_test.shape[1:] != x_train.shape[1:]:
        raise ValueError(f"{test_names[0]}: test images are {x_test.shape[1]}x{x_test.shape[2]} "
                         f"pixels but the training images ({train_images}) are "
                         f"{x_train.shape[1]}x{x_train.shape[2]}")
    if n_classes is None:
        n_classes, classes = int(y_train.max()) + 1, f"the training labels' classes ({train_labels})"
    else:
        classes = "this dataset's classes"
        _check_label_range(y_train, train_labels, n_classes, classes)
    _check_label_range(y_test, test_names[1], n_classes, classes)


def _has_idx_files(directory):
    return all(find_idx_file(directory, stem) is not None
               for stems in _STEMS.values() for stem in stems)


def _candidate_dirs(name, data_dir):
    dirs = []
    if data_dir is not None:
        data_dir = os.path.expanduser(os.fspath(data_dir))
        dirs += [data_dir, os.path.join(data_dir, name)]
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        dirs += [env, os.path.join(env, name)]
    dirs += list(_SYSTEM_DIRS.get(name, ()))
    dirs.append(os.path.join(default_cache_dir(), name))
    return dirs


def _fetch(name, directory, progress=None):
    mirrors, files = DATASETS[name]
    for filename, sha256 in files.items():
        errors = []
        for mirror in mirrors:
            try:
                download(mirror + filename, directory, sha256, progress=progress)
                break
            except OSError as exc:
                errors.append(f"{mirror}: {exc}")
        else:
            raise OSError(f"could not download {filename} for {name}:\n  " + "\n  ".join(errors))


def _split(name, images_train, labels_train, images_test, labels_test, dev_size, dtype, source):
    def prepare(images):
        flat = images.reshape(len(images), -1).astype(dtype)
        flat /= dtype(255)
        return flat

    n_train = len(labels_train)
    if dev_size is None:
        dev_size = n_train // 12
    if not 0 <= dev_size < n_train:
        raise ValueError(f"dev_size: must be in [0, {n_train}), got {dev_size}")
    cut = n_train - dev_size
    x_all = prepare(images_train)
    y_all = labels_train.astype(np.int64)
    y_test = labels_test.astype(np.int64)
    n_classes = int(max(y_all.max(), y_test.max())) + 1
    return Dataset(name, x_all[:cut], y_all[:cut], x_all[cut:], y_all[cut:],
                   prepare(images_test), y_test, n_classes, source)


def load_dataset(name="embedded", data_dir=None, *, dev_size=None, dtype=np.float32,
                 download_missing=True, progress=None):
    """Load a dataset by name or from a directory of IDX files.

    Parameters
    ----------
    name : str, optional
        ``'embedded'`` (default; a 7,200 + 2,000 image Fashion-MNIST subset
        shipped with the package), ``'fashion-mnist'``, ``'mnist'``, or the
        path of a directory holding the four IDX files.
    data_dir : str or os.PathLike, optional
        For ``'fashion-mnist'``/``'mnist'``: where to look for the files
        (the directory itself or its ``<name>`` subdirectory) and where to
        download them when missing. Otherwise ``$MEPROP_NUMBA_DATA_DIR``,
        the system location (``/usr/share/datasets/fashion-mnist``) and the
        cache (:func:`~meprop_numba.data.download.default_cache_dir`) are
        searched, and downloads go to the cache.
    dev_size : int, optional
        Number of final training images held out as the dev set; default
        ``n_train // 12`` (5,000 for MNIST and Fashion-MNIST).
    dtype : {numpy.float32, numpy.float64}, optional
    download_missing : bool, optional
        Download ``'fashion-mnist'``/``'mnist'`` (checksummed) if no copy is
        found. Default True.
    progress : callable, optional
        Passed to :func:`~meprop_numba.data.download.download`.

    Returns
    -------
    Dataset
        The train/dev/test split, images scaled to ``[0, 1]`` in `dtype`.

    Raises
    ------
    ValueError
        Unknown name, bad `dtype` or `dev_size`; or file contents that
        cannot be trained on (see :func:`read_idx_split`), test images of
        another size than the training images, or a test label outside the
        training labels' classes (outside the 10 classes for
        ``'mnist'``/``'fashion-mnist'``). The message names the file.
    FileNotFoundError
        Files not found and `download_missing` is False.

    Examples
    --------
    >>> from meprop_numba.data import load_dataset
    >>> data = load_dataset("embedded")
    >>> data.x_train.shape, data.x_dev.shape, data.x_test.shape
    ((6600, 784), (600, 784), (2000, 784))
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype: must be float32 or float64, got {dtype}")
    dtype = dtype.type
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"name: expected a dataset name or a directory, got {type(name).__name__}")
    name_str = os.fspath(name)

    if name_str == "embedded":
        with resources.files("meprop_numba.data").joinpath("embedded", EMBEDDED_FILE).open("rb") as fh:
            with np.load(fh) as npz:
                arrays = {key: npz[key] for key in ("x_train", "y_train", "x_test", "y_test")}
        splits = [(arrays[f"x_{s}"], arrays[f"y_{s}"],
                   (f"{EMBEDDED_FILE}[x_{s}]", f"{EMBEDDED_FILE}[y_{s}]")) for s in ("train", "test")]
        for images, labels, names in splits:
            _check_split(images, labels, *names)
        _check_test_against_train(*splits, _N_CLASSES["embedded"])
        return _split("embedded", arrays["x_train"], arrays["y_train"], arrays["x_test"],
                      arrays["y_test"], dev_size, dtype, f"package:{EMBEDDED_FILE}")

    if name_str in DATASETS:
        directory = next((d for d in _candidate_dirs(name_str, data_dir) if _has_idx_files(d)), None)
        if directory is None:
            target = (os.path.expanduser(os.fspath(data_dir)) if data_dir is not None
                      else os.path.join(default_cache_dir(), name_str))
            if not download_missing:
                raise FileNotFoundError(
                    f"{name_str}: IDX files not found in any of "
                    f"{_candidate_dirs(name_str, data_dir)}; pass data_dir or allow the download")
            _fetch(name_str, target, progress)
            directory = target
    elif os.path.isdir(name_str):
        directory = name_str
    else:
        raise ValueError(f"name: {name_str!r} is neither 'embedded', one of {sorted(DATASETS)}, "
                         "nor an existing directory")

    train, test = read_idx_split(directory, "train"), read_idx_split(directory, "test")
    _check_test_against_train(train, test, _N_CLASSES.get(name_str))
    (x_train, y_train, _), (x_test, y_test, _) = train, test
    label = name_str if name_str in DATASETS else os.path.basename(os.path.normpath(directory))
    return _split(label, x_train, y_train, x_test, y_test, dev_size, dtype, directory)
