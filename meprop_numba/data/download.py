"""Checksummed, resumable and atomic file downloads into a cache directory.

A download goes to ``<name>.part`` next to the destination. When the
connection breaks, the partial file is kept and the next call asks the
server for the remaining bytes (an HTTP ``Range`` request). Only after the
whole file has been received and its SHA-256 matches is it renamed to its
final name, so a file under the final name is always complete and
verified. A checksum mismatch deletes the partial file. Concurrent callers
of one file take turns on ``<name>.lock``; a whole call has a deadline and
a size cap.
"""
import hashlib
import http.client
import numbers
import os
import stat
import time
import urllib.error
import urllib.request

import filelock

from .._validation import positive_float

__all__ = ["ChecksumError", "default_cache_dir", "download", "sha256_file"]

_CHUNK = 1 << 16


class ChecksumError(OSError):
    """Raised when downloaded data does not match its expected SHA-256.

    A subclass of ``OSError``; the mismatching file has already been
    deleted when it is raised.

    Examples
    --------
    >>> from meprop_numba.data import ChecksumError
    >>> issubclass(ChecksumError, OSError)
    True
    """


def default_cache_dir():
    """Directory where datasets are downloaded when none is given.

    ``$MEPROP_NUMBA_CACHE`` if set, else ``$XDG_CACHE_HOME/meprop_numba``,
    else ``~/.cache/meprop_numba``. Takes no arguments; never raises and
    creates nothing.

    Returns
    -------
    str
        The directory path (it may not exist yet).

    Examples
    --------
    >>> import os
    >>> from unittest import mock
    >>> from meprop_numba.data import default_cache_dir
    >>> with mock.patch.dict(os.environ, {"MEPROP_NUMBA_CACHE": "/data/cache"}):
    ...     default_cache_dir()
    '/data/cache'
    """
    env = os.environ.get("MEPROP_NUMBA_CACHE")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "meprop_numba")


def sha256_file(path):
    """SHA-256 hex digest of a file's contents.

    Parameters
    ----------
    path : str or os.PathLike
        The file to hash, read in chunks.

    Returns
    -------
    str
        64 lowercase hex digits.

    Raises
    ------
    OSError
        If the file cannot be read (``FileNotFoundError`` if missing).

    Examples
    --------
    >>> import os, tempfile
    >>> from meprop_numba.data import sha256_file
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "empty")
    ...     open(path, "wb").close()
    ...     sha256_file(path)
    'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_sha256(sha256):
    if not isinstance(sha256, str) or len(sha256) != 64:
        raise ValueError(f"sha256: expected 64 hex digits, got {sha256!r}")
    try:
        int(sha256, 16)
    except ValueError:
        raise ValueError(f"sha256: expected 64 hex digits, got {sha256!r}") from None
    return sha256.lower()


def download(url, directory, sha256, *, filename=None, timeout=60.0, deadline=3600.0,
             max_bytes=1 << 32, progress=None):
    """Download `url` into `directory` unless a verified copy is already there.

    Safe to call from several threads or processes at once for one file:
    the callers take turns on a lock file (``<name>.lock``) and the later
    ones find the verified file.  A ``<name>.part`` that is a symbolic link
    is removed, never written through.

    Parameters
    ----------
    url : str
        http(s) or file URL.
    directory : str or os.PathLike
        Cache directory; created if missing.
    sha256 : str
        Expected SHA-256 of the complete file (hex).
    filename : str, optional
        Name of the file in `directory`; default: the last path segment of
        `url`.
    timeout : float, optional
        Socket timeout in seconds (one connect or one read), > 0.
    deadline : float, optional
        Seconds the whole call may take, waiting for another caller's lock
        included, > 0 (default one hour).  A read in progress finishes
        first, so the call returns within about ``deadline + timeout``.
    max_bytes : int, optional
        Largest file accepted (default 4 GiB), >= 1.
    progress : callable, optional
        Called as ``progress(bytes_so_far, total_or_None)`` after each chunk.

    Returns
    -------
    str
        Path of the verified file.

    Raises
    ------
    TypeError
        If `timeout`, `deadline` or `max_bytes` is not a number.
    ValueError
        If `sha256` is not 64 hex digits, no file name can be derived, or a
        limit is not positive.
    ChecksumError
        If the received data does not match `sha256`; the partial file is
        deleted and nothing is left under the final name.
    TimeoutError
        If `deadline` passes; a partial ``.part`` file is kept so that the
        next call resumes.
    OSError
        If the file is larger than `max_bytes` (the partial file is
        deleted), or on network failures (``urllib.error.URLError`` among
        them; a partial ``.part`` file is kept so that the next call resumes).

    Examples
    --------
    >>> path = download(  # doctest: +SKIP
    ...     "https://example.org/train-labels-idx1-ubyte.gz", "~/.cache/meprop_numba/mnist",
    ...     "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c")
    """
    sha256 = _check_sha256(sha256)
    timeout = positive_float(timeout, "timeout")
    deadline = positive_float(deadline, "deadline")
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, numbers.Integral):
        raise TypeError(f"max_bytes must be an integer, got {type(max_bytes).__name__}")
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    if filename is None:
        filename = url.rstrip("/").rsplit("/", 1)[-1]
    if not filename or filename in (".", "..") or "/" in filename or os.sep in filename:
        raise ValueError(f"filename: cannot derive a file name from url {url!r}")
    end = time.monotonic() + deadline
    directory = os.path.expanduser(os.fspath(directory))
    os.makedirs(directory, exist_ok=True)
    final_path = os.path.join(directory, filename)
    lock = filelock.FileLock(final_path + ".lock")
    try:
        lock.acquire(timeout=deadline)
    except filelock.Timeout:
        raise TimeoutError(f"download of {url}: another caller held {final_path}.lock "
                           f"for the whole deadline of {deadline} s") from None
    try:
        return _download_locked(url, final_path, sha256, timeout, end, deadline, int(max_bytes), progress)
    finally:
        lock.release()


def _download_locked(url, final_path, sha256, timeout, end, deadline, max_bytes, progress):
    if os.path.exists(final_path):
        if sha256_file(final_path) == sha256:
            return final_path
        # A file with the right name but wrong content is not ours to trust.
        os.remove(final_path)

    part_path = final_path + ".part"
    offset = _partial_size(part_path)
    if offset > max_bytes:
        os.remove(part_path)
        offset = 0
    request = urllib.request.Request(url)
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=min(timeout, max(end - time.monotonic(), 1e-3)))
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            # Range not satisfiable: the partial file is already the whole
            # file (or garbage); verify it below either way.
            response = None
        else:
            raise
    if response is not None:
        with response:
            status = getattr(response, "status", None) or response.getcode()
            append = bool(offset) and status == 206
            if not append:
                offset = 0
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None and length.isdigit() else None
            if total is not None and total > max_bytes:
                raise OSError(f"download of {url}: the server announces {total} bytes, "
                              f"more than max_bytes={max_bytes}")
            # O_NOFOLLOW: a link planted under the .part name is refused, not written through.
            flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
            flags |= os.O_APPEND if append else os.O_TRUNC
            # read1 returns after one socket read, so the deadline is checked at least once per timeout.
            read = getattr(response, "read1", response.read)
            too_big = False
            received = offset
            with os.fdopen(os.open(part_path, flags, 0o644), "ab" if append else "wb") as fh:
                try:
                    while time.monotonic() <= end:
                        try:
                            block = read(_CHUNK)
                        except (http.client.HTTPException, OSError) as exc:
                            raise OSError(
                                f"download of {url} interrupted after {received} bytes ({exc!r}); "
                                f"call again to resume from {part_path}"
                            ) from exc
                        if not block:
                            break
                        if received + len(block) > max_bytes:
                            too_big = True
                            break
                        fh.write(block)
                        received += len(block)
                        if progress is not None:
                            progress(received, total)
                    else:
                        raise TimeoutError(
                            f"download of {url} passed its deadline of {deadline} s after "
                            f"{received} bytes; call again to resume from {part_path}")
                finally:
                    fh.flush()
                    os.fsync(fh.fileno())
            if too_big:
                os.remove(part_path)
                raise OSError(f"download of {url} exceeded max_bytes={max_bytes}; "
                              "the partial file was removed")
            if total is not None and received < total:
                raise OSError(
                    f"download of {url} ended early ({received} of {total} bytes); "
                    f"call again to resume from {part_path}"
                )
    actual = sha256_file(part_path)
    if actual != sha256:
        os.remove(part_path)
        raise ChecksumError(
            f"{url}: SHA-256 mismatch (expected {sha256}, got {actual}); the download was removed"
        )
    os.replace(part_path, final_path)
    return final_path


def _partial_size(part_path):
    """Size of an existing regular ``.part`` file, else 0; a link or other non-file there is removed."""
    try:
        info = os.lstat(part_path)
    except FileNotFoundError:
        return 0
    if stat.S_ISREG(info.st_mode):
        return info.st_size
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(f"{part_path} is a directory; remove it to download")
    os.remove(part_path)  # removes the link itself, never its target
    return 0
