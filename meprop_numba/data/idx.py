"""Reader for the IDX file format used by MNIST and Fashion-MNIST.

An IDX file starts with a 4-byte magic number: two zero bytes, a byte
giving the element type and a byte giving the number of dimensions. Then
come the dimension sizes as big-endian unsigned 32-bit integers, then the
data in C order, big-endian. Files may be gzip-compressed (``.gz``); the
reader detects compression from the content, not the file name.
"""
import gzip
import math
import os
import zlib

import numpy as np

__all__ = ["IDXFormatError", "read_idx", "write_idx"]

_GZIP_MAGIC = b"\x1f\x8b"

# IDX type code -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES = {dt.newbyteorder("="): code for code, dt in _IDX_DTYPES.items()}


class IDXFormatError(ValueError):
    """Raised when a file is not a well-formed IDX file.

    A subclass of ``ValueError``: bad magic number, unknown type code,
    truncated data or a corrupt gzip stream.

    Examples
    --------
    >>> from meprop_numba.data import IDXFormatError
    >>> issubclass(IDXFormatError, ValueError)
    True
    """


# Deflate expands at most about 1032:1, so a gzip file of n bytes holds at
# most this many times n bytes of data: a header promising more is refused
# before any allocation.
_GZIP_MAX_RATIO = 1100
_CHUNK = 1 << 24


def _open(path):
    """The file's (possibly gunzipped) stream and the most data bytes it can hold."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(2)
    if head == _GZIP_MAGIC:
        return gzip.open(path, "rb"), _GZIP_MAX_RATIO * size + 1024, True
    return open(path, "rb"), size, False


def _read_exactly(fh, n, path):
    """Read `n` bytes in bounded chunks (memory grows only with data that exists)."""
    chunks, remaining = [], n
    try:
        while remaining > 0:
            chunk = fh.read(min(remaining, _CHUNK))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    except (EOFError, gzip.BadGzipFile, OSError, zlib.error) as exc:
        raise IDXFormatError(f"{path}: corrupt or truncated gzip stream ({exc})") from exc
    return b"".join(chunks)


def read_idx(path):
    """Read an IDX file (raw or gzip-compressed) into a NumPy array.

    The header's sizes are checked against the file's length before the
    data is read, so a corrupt header cannot make the reader allocate more
    than the file holds.

    Parameters
    ----------
    path : str or os.PathLike
        The file to read.

    Returns
    -------
    numpy.ndarray
        The array with the shape stored in the file and a native-endian
        dtype (``uint8`` for MNIST images and labels).

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    IDXFormatError
        If the magic number is wrong, the type code unknown, the file is
        shorter or longer than its header says, or the gzip stream is
        corrupt.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from meprop_numba.data.idx import read_idx, write_idx
    >>> path = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte")
    >>> write_idx(path, np.array([3, 1, 4], dtype=np.uint8))
    >>> read_idx(path)
    array([3, 1, 4], dtype=uint8)
    """
    path = os.fspath(path)
    fh, capacity, compressed = _open(path)
    with fh:
        magic = _read_exactly(fh, 4, path)
        if len(magic) < 4:
            raise IDXFormatError(f"{path}: file too short for an IDX header ({len(magic)} bytes)")
        if magic[0] != 0 or magic[1] != 0:
            raise IDXFormatError(
                f"{path}: bad magic number {magic.hex()} (an IDX file starts with two zero bytes)"
            )
        code, ndim = magic[2], magic[3]
        if code not in _IDX_DTYPES:
            raise IDXFormatError(f"{path}: unknown IDX element type code 0x{code:02x}")
        dims = _read_exactly(fh, 4 * ndim, path)
        if len(dims) < 4 * ndim:
            raise IDXFormatError(f"{path}: truncated header ({4 + len(dims)} of {4 + 4 * ndim} bytes)")
        shape = tuple(int(d) for d in np.frombuffer(dims, dtype=">u4"))
        dtype = _IDX_DTYPES[code]
        expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
        available = capacity - 4 - 4 * ndim
        if expected > available:
            what = f"a gzip file of {os.path.getsize(path)} bytes can hold" if compressed else \
                f"the file holds ({available} bytes after the header)"
            raise IDXFormatError(f"{path}: truncated data: header promises {expected} bytes for "
                                 f"shape {shape}, more than {what}")
        data = _read_exactly(fh, expected + 1, path)
    if len(data) < expected:
        raise IDXFormatError(
            f"{path}: truncated data: header promises {expected} bytes for shape {shape}, "
            f"file holds {len(data)}"
        )
    if len(data) > expected:
        extra = "" if compressed else f" ({available - expected} bytes)"
        raise IDXFormatError(f"{path}: unexpected trailing bytes after shape {shape}{extra}")
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def write_idx(path, array, *, compress=None):
    """Write an array as an IDX file.

    Parameters
    ----------
    path : str or os.PathLike
        Destination. Compressed with gzip when `compress` is true, or when
        `compress` is None and the name ends in ``.gz``.
    array : array_like
        uint8, int8, int16, int32, float32 or float64 data, at most 255
        dimensions.
    compress : bool or None, optional
        Force or forbid gzip compression.

    Returns
    -------
    None
        The file is written (replaced if it exists).

    Raises
    ------
    TypeError
        If the dtype has no IDX type code.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from meprop_numba.data import read_idx, write_idx
    >>> a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "a-idx2-ubyte.gz")
    ...     write_idx(path, a)
    ...     b = read_idx(path)
    >>> np.array_equal(a, b), b.dtype
    (True, dtype('uint8'))
    """
    path = os.fspath(path)
    array = np.ascontiguousarray(array)
    dtype = array.dtype.newbyteorder("=")
    if dtype not in _IDX_CODES:
        raise TypeError(f"array: dtype {array.dtype} cannot be stored in an IDX file")
    code = _IDX_CODES[dtype]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + array.astype(_IDX_DTYPES[code]).tobytes()
    if compress is None:
        compress = path.endswith(".gz")
    opener = gzip.open if compress else open
    with opener(path, "wb") as fh:
        fh.write(payload)
