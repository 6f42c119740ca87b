"""Checkpoints: atomic writes, clear errors on unreadable files, resume checks.

A checkpoint directory holds ``last.npz`` (written at the end of every
epoch: everything needed to resume) and ``best.npz`` (the model at the best
dev evaluation so far: what ``meprop-numba evaluate`` and ``predict`` use by
default). Each file is an ``.npz`` archive: the parameters by name
(``param/<name>``, from ``model.state_dict()``), other arrays
(``array/<n>``), and one JSON document (``meta``) with the format tag, the
task, the config, the epoch, the optimizer and random-generator states, the
history and the task's extra state (vocabularies, shapes).

Files are written to a temporary file in the same directory, synced, then
renamed over the old one, so a crash or a full disk never leaves a partial
checkpoint; they are created with the permissions the user's umask gives.
"""
import json
import os
import tempfile
import zipfile
import zlib

import numpy as np

__all__ = [
    "BEST",
    "CheckpointError",
    "FORMAT",
    "LAST",
    "TEMP_PREFIX",
    "atomic_write",
    "checkpoint_path",
    "clean_temporary_files",
    "load_checkpoint",
    "save_checkpoint",
    "write_json",
]

#: File name of the checkpoint written at the end of every epoch (resume).
LAST = "last.npz"
#: File name of the checkpoint of the best dev evaluation (evaluate/predict).
BEST = "best.npz"
#: Format tag stored in every checkpoint.
FORMAT = "meprop_numba-checkpoint-1"
#: Prefix of the temporary files of an unfinished write.
TEMP_PREFIX = ".tmp-"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, damaged, foreign or not matching.

    Examples
    --------
    >>> from meprop_numba.training.checkpoint import CheckpointError
    >>> issubclass(CheckpointError, ValueError)
    True
    """


def checkpoint_path(directory, which="best"):
    """Path of the ``best`` or ``last`` checkpoint in `directory`.

    Parameters
    ----------
    directory : str or os.PathLike
        A checkpoint directory.
    which : {'best', 'last'}
        The best-dev or the last epoch's checkpoint.

    Returns
    -------
    str
        The file's path.

    Raises
    ------
    ValueError
        For another `which`.

    Examples
    --------
    >>> from meprop_numba.training.checkpoint import checkpoint_path
    >>> checkpoint_path("run", "last")
    'run/last.npz'
    """
    names = {"best": BEST, "last": LAST}
    if which not in names:
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    return os.path.join(os.fspath(directory), names[which])


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path, write):
    """Write `path` through ``write(binary_file)``: temporary file, fsync, rename.

    Parameters
    ----------
    path : str or os.PathLike
        The file to create or replace; its directory must exist.
    write : callable
        Called with the open temporary file.

    Returns
    -------
    None
        `path` holds the new content.

    Raises
    ------
    OSError
        If the file cannot be written (full disk, no permission); the
        message names `path`, the old file is left as it was and the
        temporary file is removed.

    Examples
    --------
    >>> import os, tempfile
    >>> from meprop_numba.training.checkpoint import atomic_write
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     atomic_write(os.path.join(tmp, "a.txt"), lambda fh: fh.write(b"hi"))
    ...     print(open(os.path.join(tmp, "a.txt")).read(), os.listdir(tmp))
    hi ['a.txt']
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix="-" + os.path.basename(path),
                                   dir=directory)
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise OSError(exc.errno, f"cannot write {path}: {reason} (the previous file, if any, "
                                 "is unchanged)") from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def clean_temporary_files(directory):
    """Remove the temporary files an interrupted write left in `directory`.

    Parameters
    ----------
    directory : str or os.PathLike
        A checkpoint directory (nothing happens if it does not exist).

    Returns
    -------
    list of str
        The names removed.

    Raises
    ------
    OSError
        If a file cannot be removed.

    Examples
    --------
    >>> import os, tempfile
    >>> from meprop_numba.training.checkpoint import clean_temporary_files
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     open(os.path.join(tmp, ".tmp-abc-last.npz"), "w").close()
    ...     clean_temporary_files(tmp)
    ['.tmp-abc-last.npz']
    """
    directory = os.fspath(directory)
    removed = []
    if os.path.isdir(directory):
        for name in sorted(os.listdir(directory)):
            if name.startswith(TEMP_PREFIX):
                os.remove(os.path.join(directory, name))
                removed.append(name)
    return removed


def _json_value(value):
    """JSON-ready copy: NaN/Inf become None, NumPy scalars Python numbers."""
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_json(path, payload):
    """Write `payload` as JSON atomically; NaN and Inf are written as ``null``.

    Parameters
    ----------
    path : str or os.PathLike
        The JSON file.
    payload : dict
        JSON-ready values (NumPy scalars allowed).

    Returns
    -------
    None
        `path` holds the JSON.

    Raises
    ------
    OSError
        As :func:`atomic_write`.

    Examples
    --------
    >>> import json, os, tempfile
    >>> from meprop_numba.training.checkpoint import write_json
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     write_json(os.path.join(tmp, "r.json"), {"a": float("nan"), "b": [1.5]})
    ...     print(open(os.path.join(tmp, "r.json")).read().split())
    ['{', '"a":', 'null,', '"b":', '[', '1.5', ']', '}']
    """
    text = json.dumps(_json_value(payload), indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda fh: fh.write(text.encode()))


def _split_arrays(obj, arrays):
    """JSON part of a nested structure; its arrays go into `arrays` as ``array/<n>``."""
    if isinstance(obj, np.ndarray):
        key = f"array/{len(arrays)}"
        arrays[key] = obj
        return {"__array__": key}
    if isinstance(obj, dict):
        return {str(k): _split_arrays(v, arrays) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_split_arrays(v, arrays) for v in obj]
    return _json_value(obj)


def _join_arrays(obj, arrays):
    if isinstance(obj, dict):
        if set(obj) == {"__array__"}:
            return arrays[obj["__array__"]]
        return {k: _join_arrays(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join_arrays(v, arrays) for v in obj]
    return obj


def save_checkpoint(path, *, task, params, **meta):
    """Write a checkpoint atomically.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.npz`` file.
    task : str
        The task's name (a checkpoint of another task is refused at load).
    params : dict
        Parameter name -> array (``model.state_dict()``).
    **meta
        JSON values and arrays (config, epoch, optimizer and generator
        states, history, extra state, ...).

    Returns
    -------
    None
        `path` holds the checkpoint.

    Raises
    ------
    OSError
        The file cannot be written (message names it; the old file survives).

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from meprop_numba.training.checkpoint import load_checkpoint, save_checkpoint
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "last.npz")
    ...     save_checkpoint(path, task="mlp", params={"0.weight": np.ones((2, 2))}, epoch=3)
    ...     state = load_checkpoint(path, task="mlp")
    >>> state["epoch"], state["params"]["0.weight"].shape
    (3, (2, 2))
    """
    arrays = {}
    for name, value in params.items():
        arrays[f"param/{name}"] = np.asarray(value)
    doc = {"format": FORMAT, "task": task, "param_names": list(params),
           **_split_arrays(meta, arrays)}
    arrays["meta"] = np.frombuffer(json.dumps(doc, allow_nan=False).encode(), dtype=np.uint8)
    atomic_write(path, lambda fh: np.savez(fh, **arrays))


def load_checkpoint(path, *, task=None):
    """Read a checkpoint written by :func:`save_checkpoint`.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.npz`` file, or a checkpoint directory (its ``best.npz``).
    task : str, optional
        Refuse a checkpoint of another task.

    Returns
    -------
    dict
        ``task``, ``params`` (name -> array) and the other saved fields.

    Raises
    ------
    FileNotFoundError
        No file at `path`.
    CheckpointError
        An empty, truncated, damaged (bit-flipped) or foreign file, or one
        of another task; the message names the file.

    Examples
    --------
    >>> import os, tempfile
    >>> from meprop_numba.training.checkpoint import CheckpointError, load_checkpoint
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "best.npz")
    ...     _ = open(path, "wb").write(b"")
    ...     try:
    ...         load_checkpoint(path)
    ...     except CheckpointError as exc:
    ...         print(str(exc).replace(tmp, "DIR"))
    DIR/best.npz: not a usable checkpoint (the file is empty)
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, BEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: not a usable checkpoint (the file is empty)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "meta" not in npz.files:
                raise CheckpointError(f"{path}: not a meprop_numba checkpoint (no 'meta' entry)")
            arrays = {key: npz[key] for key in npz.files}
        doc = json.loads(arrays.pop("meta").tobytes().decode())
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, zlib.error,
            UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not a usable checkpoint: the file is truncated or "
                              f"damaged ({type(exc).__name__}: {exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a meprop_numba checkpoint (format "
                              f"{doc.get('format') if isinstance(doc, dict) else None!r}, "
                              f"expected {FORMAT!r})")
    if task is not None and doc.get("task") != task:
        raise CheckpointError(f"{path}: a checkpoint of task {doc.get('task')!r}, not {task!r}")
    try:
        params = {name: arrays.pop(f"param/{name}") for name in doc.pop("param_names")}
        state = _join_arrays(doc, arrays)
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: damaged checkpoint (missing entry {exc})") from exc
    state["params"] = params
    return state
