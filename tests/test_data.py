"""IDX reader, checksummed downloads and dataset loading."""
import gzip
import hashlib
import http.server
import os
import pathlib
import threading

import numpy as np
import pytest

from meprop_numba.data import (
    ChecksumError,
    IDXFormatError,
    download,
    load_dataset,
    read_idx,
    sha256_file,
    write_idx,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_FASHION = pathlib.Path(
    os.environ.get("MEPROP_NUMBA_TEST_DATA", ROOT.parent / "shared" / "data")) / "fashion-mnist"


def _manual_idx_bytes(array, code):
    """An IDX file built by hand from the format description (independent of write_idx)."""
    header = bytes([0, 0, code, array.ndim])
    for d in array.shape:
        header += int(d).to_bytes(4, "big")
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


# ---------------------------------------------------------------- IDX reader

@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype,code", [(np.uint8, 0x08), (np.int16, 0x0B), (np.int32, 0x0C),
                                        (np.float32, 0x0D), (np.float64, 0x0E)])
def test_read_idx_matches_hand_written_file(tmp_path, compress, dtype, code):
    rng = np.random.default_rng(1)
    array = (rng.random((5, 3, 4)) * 100).astype(dtype)
    payload = _manual_idx_bytes(array, code)
    path = tmp_path / "data-idx"
    path.write_bytes(gzip.compress(payload) if compress else payload)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_write_then_read_roundtrip_gz_and_raw(tmp_path):
    labels = np.arange(256, dtype=np.uint8)
    write_idx(tmp_path / "l-idx1-ubyte.gz", labels)
    write_idx(tmp_path / "l-idx1-ubyte", labels)
    assert (tmp_path / "l-idx1-ubyte.gz").read_bytes()[:2] == b"\x1f\x8b"
    assert (tmp_path / "l-idx1-ubyte").read_bytes() == _manual_idx_bytes(labels, 0x08)
    np.testing.assert_array_equal(read_idx(tmp_path / "l-idx1-ubyte.gz"), labels)


def test_bad_magic_is_rejected(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x01\x00\x08\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(IDXFormatError, match="magic"):
        read_idx(path)


def test_unknown_type_code_is_rejected(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x00\x00\x07\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(IDXFormatError, match="type code"):
        read_idx(path)


@pytest.mark.parametrize("cut", [2, 9, 20])
def test_truncated_file_is_rejected(tmp_path, cut):
    payload = _manual_idx_bytes(np.zeros((4, 4), dtype=np.uint8), 0x08)
    path = tmp_path / "short"
    path.write_bytes(payload[:cut])
    with pytest.raises(IDXFormatError, match="short|truncated"):
        read_idx(path)


def test_truncated_gzip_stream_is_rejected(tmp_path):
    payload = gzip.compress(_manual_idx_bytes(np.arange(1000, dtype=np.int32), 0x0C))
    path = tmp_path / "short.gz"
    path.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(IDXFormatError, match="gzip"):
        read_idx(path)


def test_trailing_bytes_are_rejected(tmp_path):
    path = tmp_path / "long"
    path.write_bytes(_manual_idx_bytes(np.zeros(3, dtype=np.uint8), 0x08) + b"\x00")
    with pytest.raises(IDXFormatError, match="trailing"):
        read_idx(path)


# ---------------------------------------------------------------- datasets

def _write_fake_mnist(directory, n_train=24, n_test=6, compress=True):
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    os.makedirs(directory, exist_ok=True)
    for stem, array in arrays.items():
        write_idx(os.path.join(directory, stem + suffix), array)
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_load_directory_splits_last_images_as_dev(tmp_path, compress):
    arrays = _write_fake_mnist(tmp_path, compress=compress)
    data = load_dataset(str(tmp_path), dev_size=4)
    images = arrays["train-images-idx3-ubyte"].reshape(24, -1) / 255.0
    np.testing.assert_allclose(data.x_train, images[:20], rtol=1e-6)
    np.testing.assert_allclose(data.x_dev, images[20:], rtol=1e-6)
    np.testing.assert_array_equal(data.y_dev, arrays["train-labels-idx1-ubyte"][20:])
    np.testing.assert_array_equal(data.y_test, arrays["t10k-labels-idx1-ubyte"])
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert data.x_test.shape == (6, 784)


def test_default_dev_size_is_one_twelfth(tmp_path):
    _write_fake_mnist(tmp_path, n_train=36)
    data = load_dataset(tmp_path, dtype=np.float64)
    assert len(data.y_dev) == 3 and len(data.y_train) == 33
    assert data.x_train.dtype == np.float64


def test_named_dataset_found_under_data_dir(tmp_path):
    _write_fake_mnist(tmp_path / "mnist")
    data = load_dataset("mnist", data_dir=tmp_path, download_missing=False)
    assert data.name == "mnist" and len(data.y_test) == 6


def test_missing_files_without_download_raise(tmp_path, monkeypatch):
    monkeypatch.setenv("MEPROP_NUMBA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MEPROP_NUMBA_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_dataset("mnist", data_dir=tmp_path / "empty", download_missing=False)


def test_label_count_mismatch_is_reported(tmp_path):
    _write_fake_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(5, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz holds 6 images but "
                                         r"\S*t10k-labels-idx1-ubyte.gz holds 5 labels"):
        load_dataset(tmp_path)


# ------------------------------------------------- contents checked at load

def _write_raw(path, array, code):
    path.write_bytes(_manual_idx_bytes(array, code))


def _labels(values, dtype=np.uint8):
    return np.array(values, dtype=dtype)


@pytest.mark.parametrize("split", ["train", "t10k"])
@pytest.mark.parametrize("kind,array,code,pattern", [
    ("labels-idx1", _labels([1, 2, 0, -1, 3, -1], np.int8), 0x09, r"label -1 at index 3 is negative"),
    ("labels-idx1", _labels([1, 2, 2**31 - 1, 0, 1, 1], np.int32), 0x0C,
     r"label 2147483647 at index 2 is outside class ids, \[0, 65536\)"),
    ("labels-idx1", _labels([0.0] * 6, np.float32), 0x0D, r"labels must be a 1-D array of integers"),
    ("labels-idx1", np.zeros((6, 2), np.uint8), 0x08, r"labels must be a 1-D array of integers"),
    ("images-idx3", np.zeros((6, 0, 0), np.uint8), 0x08, r"images of 0x0 pixels"),
    ("images-idx3", np.zeros((6, 28, 0), np.uint8), 0x08, r"images of 28x0 pixels"),
    ("images-idx3", np.zeros((6, 28, 28), np.float32), 0x0D, r"images must be unsigned bytes"),
    ("images-idx3", np.zeros((6, 784), np.uint8), 0x08, r"expected 3-D images"),
    ("images-idx3", np.zeros((5, 28, 28), np.uint8), 0x08,
     r"holds 5 images but \S*labels-idx1-ubyte holds 6"),
])
def test_bad_contents_are_refused_naming_the_file(tmp_path, split, kind, array, code, pattern):
    _write_fake_mnist(tmp_path, n_train=6, n_test=6, compress=False)
    _write_raw(tmp_path / f"{split}-{kind}-ubyte", array, code)
    with pytest.raises(ValueError, match=rf"{split}-{kind}-ubyte:? {pattern}"):
        load_dataset(tmp_path)


def test_test_labels_outside_the_training_classes_are_refused(tmp_path):
    _write_fake_mnist(tmp_path, n_train=4, n_test=3, compress=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", _labels([0, 4, 2, 1]))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", _labels([4, 5, 0]))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte: label 5 at index 1 is outside "
                                         r"the training labels' classes \(\S*train-labels-idx1-"
                                         r"ubyte\), \[0, 5\)"):
        load_dataset(tmp_path)


def test_labels_outside_a_named_datasets_classes_are_refused(tmp_path):
    _write_fake_mnist(tmp_path / "mnist")
    write_idx(tmp_path / "mnist" / "train-labels-idx1-ubyte.gz", _labels([3] * 23 + [10]))
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte.gz: label 10 at index 23 is "
                                         r"outside this dataset's classes, \[0, 10\)"):
        load_dataset("mnist", data_dir=tmp_path, download_missing=False)


def test_empty_training_set_is_refused(tmp_path):
    _write_fake_mnist(tmp_path, compress=False)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(0, np.uint8))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte: holds no images"):
        load_dataset(tmp_path)


def test_test_images_of_another_size_are_refused(tmp_path):
    _write_fake_mnist(tmp_path, compress=False)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((6, 32, 28), np.uint8))
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte: test images are 32x28 pixels "
                                         r"but the training images \(\S*train-images-idx3-ubyte\) "
                                         r"are 28x28"):
        load_dataset(tmp_path)


def _peak_bytes(fn):
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("shape_in_header", [(2**32 - 1,), (60000, 65535, 65535), (65536,) * 4])
def test_header_larger_than_the_file_is_refused_without_allocating(tmp_path, compress,
                                                                  shape_in_header):
    # A header promising up to hundreds of GiB (or, in int64, an overflowing product) over 64 bytes.
    header = bytes([0, 0, 0x08, len(shape_in_header)])
    header += b"".join(int(d).to_bytes(4, "big") for d in shape_in_header)
    payload = header + bytes(range(64))
    path = tmp_path / ("huge.gz" if compress else "huge")
    path.write_bytes(gzip.compress(payload) if compress else payload)

    def read():
        with pytest.raises(IDXFormatError, match=r"huge(\.gz)?: truncated data: header promises"):
            read_idx(path)

    assert _peak_bytes(read) < 1 << 20


def test_gzip_header_within_the_ratio_reads_in_bounded_chunks(tmp_path):
    # 2 MB of incompressible data can honestly promise more than 2 MB; reading stops at the
    # end of the stream without ever holding the promised size.
    data = np.random.default_rng(0).integers(0, 256, 2_000_000, dtype=np.uint8).tobytes()
    promised = 2_000_000_000
    path = tmp_path / "long.gz"
    path.write_bytes(gzip.compress(bytes([0, 0, 0x08, 1]) + promised.to_bytes(4, "big") + data))
    assert promised < 1100 * path.stat().st_size

    def read():
        with pytest.raises(IDXFormatError, match=r"promises 2000000000 bytes .* file holds 2000000"):
            read_idx(path)

    assert _peak_bytes(read) < 64 << 20


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="name"):
        load_dataset(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="dtype"):
        load_dataset("embedded", dtype=np.int32)
    with pytest.raises(ValueError, match="dev_size"):
        load_dataset("embedded", dev_size=10**6)


def test_embedded_subset_is_small_balanced_and_valid():
    path = ROOT / "meprop_numba" / "data" / "embedded" / "fashion_mnist_subset.npz"
    assert path.stat().st_size <= 5 * 1024 * 1024
    assert (ROOT / "meprop_numba" / "data" / "embedded" / "LICENSE-fashion-mnist.txt").exists()
    data = load_dataset("embedded")
    assert data.x_train.shape == (6600, 784) and data.x_dev.shape == (600, 784)
    assert data.x_test.shape == (2000, 784)
    y_all = np.concatenate([data.y_train, data.y_dev])
    np.testing.assert_array_equal(np.bincount(y_all), np.full(10, 720))
    np.testing.assert_array_equal(np.bincount(data.y_test), np.full(10, 200))
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0


@pytest.mark.skipif(not SHARED_FASHION.is_dir(),
                    reason=f"Fashion-MNIST files not available at {SHARED_FASHION} "
                           "(set MEPROP_NUMBA_TEST_DATA to a folder holding fashion-mnist/)")
def test_embedded_subset_matches_the_source_files():
    from meprop_numba.data import read_idx_split
    from meprop_numba.data.datasets import DATASETS

    for name, expected in DATASETS["fashion-mnist"][1].items():
        assert sha256_file(SHARED_FASHION / name) == expected
    with np.load(ROOT / "meprop_numba" / "data" / "embedded" / "fashion_mnist_subset.npz") as npz:
        for split in ("train", "test"):
            images, labels, _ = read_idx_split(SHARED_FASHION, split)
            index = npz[f"index_{split}"]
            np.testing.assert_array_equal(npz[f"x_{split}"], images[index])
            np.testing.assert_array_equal(npz[f"y_{split}"], labels[index])


# ---------------------------------------------------------------- download

class _Server:
    """A loopback HTTP server serving in-memory files, with Range support and
    an optional cut-off that drops the connection after some bytes."""

    def __init__(self):
        self.files = {}
        self.cut_after = None      # bytes to send before dropping the connection
        self.honour_range = True
        self.requests = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                range_header = self.headers.get("Range")
                server.requests.append((self.path, range_header))
                start = 0
                if range_header and server.honour_range:
                    start = int(range_header.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                chunk = body[start:]
                self.send_header("Content-Length", str(len(chunk)))
                self.end_headers()
                if server.cut_after is not None:
                    self.wfile.write(chunk[: server.cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(chunk)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def _payload(n=200_000):
    return np.random.default_rng(5).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_download_verifies_and_renames(server, tmp_path):
    body = _payload()
    server.files["/f.bin"] = body
    digest = hashlib.sha256(body).hexdigest()
    path = download(server.url + "/f.bin", tmp_path, digest)
    assert pathlib.Path(path).read_bytes() == body
    assert sorted(os.listdir(tmp_path)) == ["f.bin"]
    # A second call finds the verified file and makes no request.
    n_requests = len(server.requests)
    assert download(server.url + "/f.bin", tmp_path, digest) == path
    assert len(server.requests) == n_requests


def test_interrupted_download_resumes_with_range(server, tmp_path):
    body = _payload()
    server.files["/f.bin"] = body
    digest = hashlib.sha256(body).hexdigest()
    server.cut_after = 70_000
    with pytest.raises(OSError, match="resume"):
        download(server.url + "/f.bin", tmp_path, digest)
    assert not (tmp_path / "f.bin").exists()
    part = (tmp_path / "f.bin.part").read_bytes()
    assert 0 < len(part) < len(body) and body.startswith(part)

    server.cut_after = None
    path = download(server.url + "/f.bin", tmp_path, digest)
    assert server.requests[-1] == ("/f.bin", f"bytes={len(part)}-")
    assert pathlib.Path(path).read_bytes() == body
    assert not (tmp_path / "f.bin.part").exists()


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    body = _payload()
    server.files["/f.bin"] = body
    (tmp_path / "f.bin.part").write_bytes(b"stale bytes that are not the file")
    server.honour_range = False
    path = download(server.url + "/f.bin", tmp_path, hashlib.sha256(body).hexdigest())
    assert pathlib.Path(path).read_bytes() == body


def test_checksum_failure_leaves_nothing(server, tmp_path):
    server.files["/f.bin"] = _payload()
    with pytest.raises(ChecksumError, match="SHA-256 mismatch"):
        download(server.url + "/f.bin", tmp_path, "0" * 64)
    assert os.listdir(tmp_path) == []


def test_corrupt_final_file_is_replaced(server, tmp_path):
    body = _payload(1000)
    server.files["/f.bin"] = body
    (tmp_path / "f.bin").write_bytes(b"corrupt")
    path = download(server.url + "/f.bin", tmp_path, hashlib.sha256(body).hexdigest())
    assert pathlib.Path(path).read_bytes() == body


def test_download_rejects_bad_checksum_argument(tmp_path):
    with pytest.raises(ValueError, match="sha256"):
        download("http://127.0.0.1:9/f", tmp_path, "xyz")


def test_load_dataset_downloads_missing_files(server, tmp_path, monkeypatch):
    from meprop_numba.data import datasets

    arrays = _write_fake_mnist(tmp_path / "src")
    files = {}
    for name in sorted(os.listdir(tmp_path / "src")):
        body = (tmp_path / "src" / name).read_bytes()
        server.files["/mnist/" + name] = body
        files[name] = hashlib.sha256(body).hexdigest()
    monkeypatch.setitem(datasets.DATASETS, "mnist", (("http://127.0.0.1:9/dead/", server.url + "/mnist/"), files))
    monkeypatch.delenv("MEPROP_NUMBA_DATA_DIR", raising=False)
    data = load_dataset("mnist", data_dir=tmp_path / "cache", dev_size=2)
    assert sorted(os.listdir(tmp_path / "cache")) == sorted(files)
    np.testing.assert_array_equal(data.y_test, arrays["t10k-labels-idx1-ubyte"])
