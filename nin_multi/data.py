"""Fashion-MNIST: download with checksums and cache (pooch), strict IDX parsing, and batches for any backend.

Frameworks differ in how they load images, so the pipeline is plain NumPy and the backends only see
float32 batches in the layout they ask for (NCHW or NHWC). Resizing happens batch-wise with two
small interpolation matrices, which is exact bilinear (half-pixel centres, as PyTorch's and
TensorFlow's resize) and costs two matrix products per batch instead of a loop over images.
"""
from __future__ import annotations

import gzip
import math
import os
import queue
import re
import sys
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from .downloads import Guarded
from .errors import DataError, WriteError
from .fileio import cause

#: The four files of the release and the MD5s the dataset's README publishes.
FILES = {
    "train_images": ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    "train_labels": ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
    "test_images": ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
}
MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
)
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CHANNELS = 1  # grayscale
DATA_DIR_ENV = "NIN_MULTI_DATA_DIR"
CACHE_DIR_ENV = "NIN_MULTI_CACHE_DIR"
MIRROR_ENV = "NIN_MULTI_MIRROR"
_IDX_MAGIC = {2049: 1, 2051: 3}  # labels: 1 dimension, images: 3 dimensions
#: The largest IDX file read: the full training images are 47,040,016 bytes; ten times that is allowed.
MAX_IDX_BYTES = 470_400_160


def default_cache_dir() -> Path:
    """$NIN_MULTI_CACHE_DIR, else the system's cache folder (``~/.cache`` or $XDG_CACHE_HOME on Linux,
    ``~/Library/Caches`` on macOS, ``%LOCALAPPDATA%`` on Windows, as pooch and platformdirs find it)."""
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env)
    import pooch

    return pooch.os_cache("nin_multi") / "fashion-mnist"


# -- IDX parsing ----------------------------------------------------------------------------------------
def read_idx(path: Path, expect_magic: Optional[int] = None) -> np.ndarray:
    """Parse one (optionally gzip-compressed) IDX file, refusing anything that is not exactly one.

    The checks are the ones that catch real accidents: an HTML error page saved as ``.gz``, a
    download cut short, images and labels swapped, a file from another dataset. The header is read
    first and the body only up to the size it promises plus one byte, so a gzip bomb costs no more
    memory than a genuine file of that header (``MAX_IDX_BYTES`` at most).
    """
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            head = _idx_header(path, f.read(8), f, expect_magic)
            dims, header = head[1], len(head[0])
            expected = header + math.prod(dims)
            if expected > MAX_IDX_BYTES:
                raise DataError(f"{path}: its header promises {dims} items = {expected:,} bytes, more than any "
                                f"Fashion-MNIST file ({MAX_IDX_BYTES:,} bytes at most)")
            raw = head[0] + f.read(expected - header + 1)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise DataError(f"{path}: not a valid gzip file ({e}); delete it and download it again") from None
    if len(raw) != expected:
        shown = f"{len(raw):,} bytes" if len(raw) < expected else "more bytes"
        raise DataError(
            f"{path}: {shown}, but its header promises {dims} items = {expected} bytes "
            f"({'truncated' if len(raw) < expected else 'trailing data'})"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _idx_header(path: Path, head: bytes, f, expect_magic: Optional[int]) -> tuple[bytes, list[int]]:
    """(the header's bytes, dims) from the first 8 bytes and the rest of the header read from ``f``."""
    if len(head) < 8:
        raise DataError(f"{path}: only {len(head)} bytes, too short for an IDX header")
    magic = int.from_bytes(head[:4], "big")
    if magic not in _IDX_MAGIC:
        raise DataError(f"{path}: wrong magic number {magic} (expected 2049 for labels or 2051 for images)")
    if expect_magic is not None and magic != expect_magic:
        kind = {2049: "labels", 2051: "images"}
        raise DataError(f"{path}: holds {kind[magic]} but {kind[expect_magic]} were expected")
    ndim = _IDX_MAGIC[magic]
    header = 4 + 4 * ndim
    rest = f.read(header - len(head)) if header > len(head) else b""
    full = head + rest
    if len(full) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = [int.from_bytes(full[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if ndim == 3 and dims[1:] != [28, 28]:
        raise DataError(f"{path}: images are {dims[1]}x{dims[2]}, Fashion-MNIST's are 28x28")
    return full, dims


@dataclass
class FashionMNIST:
    train_images: np.ndarray  # (N, 28, 28) uint8
    train_labels: np.ndarray  # (N,) uint8
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str

    def subset(self, n_train: Optional[int] = None, n_test: Optional[int] = None) -> "FashionMNIST":
        """The first examples of each split: a fixed subset, the same in every backend."""
        return FashionMNIST(self.train_images[:n_train], self.train_labels[:n_train],
                            self.test_images[:n_test], self.test_labels[:n_test], self.source)


def _load_pair(images_path: Path, labels_path: Path):
    images = read_idx(images_path, 2051)
    labels = read_idx(labels_path, 2049)
    if len(images) != len(labels):
        raise DataError(f"{images_path.name} has {len(images)} images but {labels_path.name} "
                        f"has {len(labels)} labels")
    if len(labels) and labels.max() > 9:
        bad = int(np.argmax(labels > 9))
        raise DataError(f"{labels_path}: label {labels[bad]} at index {bad} is outside 0-9")
    return images, labels


def load_fashion_mnist(data_dir=None, cache_dir=None, download: bool = True) -> FashionMNIST:
    """Load the four files from ``data_dir`` (or $NIN_MULTI_DATA_DIR), else from the verified cache.

    A user-supplied directory is validated but not checksummed (it may hold a slice, like the sample
    in ``shared/data``); the cache only ever holds files that passed the release MD5s.
    """
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
    if data_dir:
        d = Path(data_dir).expanduser()
        if not d.is_dir():
            raise DataError(f"data directory {d} does not exist (from --data-dir or ${DATA_DIR_ENV})")
        missing = [name for name, _ in FILES.values() if not (d / name).is_file()]
        if missing:
            raise DataError(f"data directory {d} is missing {', '.join(missing)}; it needs the four "
                            f"Fashion-MNIST files: {', '.join(n for n, _ in FILES.values())}")
        paths = {k: d / name for k, (name, _) in FILES.items()}
        source = str(d)
    else:
        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        paths = {k: ensure_file(cache, name, md5, download) for k, (name, md5) in FILES.items()}
        source = str(cache)
    tr = _load_pair(paths["train_images"], paths["train_labels"])
    te = _load_pair(paths["test_images"], paths["test_labels"])
    return FashionMNIST(tr[0], tr[1], te[0], te[1], source)


# -- download -------------------------------------------------------------------------------------------
def ensure_file(cache: Path, name: str, md5: str, download: bool = True, mirrors=None, retries: int = 3) -> Path:
    """A cached file that matches ``md5``, downloaded by pooch if absent or corrupt: from each mirror in
    turn, ``retries`` attempts each, into a temporary file in ``cache`` that is renamed only once its MD5
    matches (a failed or corrupted download is deleted, never kept)."""
    import pooch
    import requests

    path = cache / name
    if path.is_file() and pooch.file_hash(str(path), alg="md5") == md5:
        return path
    if not download:
        raise DataError(f"{path} is missing or corrupt and downloading is disabled; {_manual_fix(cache)}")
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"could not create {cache}: {cause(e)}", cache, e.errno) from None
    env = os.environ.get(MIRROR_ENV)
    errors = []
    pooch.get_logger().setLevel("WARNING")  # its "downloading"/"retrying" lines; a terminal gets its progress bar
    # within a size cap and one deadline for every attempt at every mirror (downloads.py)
    downloader = Guarded(pooch.HTTPDownloader(progressbar=sys.stderr.isatty(), timeout=60))
    for base in mirrors or ((env,) if env else MIRRORS):
        source = pooch.create(path=cache, base_url=base.rstrip("/") + "/", registry={name: f"md5:{md5}"},
                              retry_if_failed=retries - 1)
        try:
            return Path(source.fetch(name, downloader=downloader))
        except (requests.RequestException, ValueError) as e:  # the network, the server, or the MD5
            errors.append(f"{source.get_url(name)}: {_why(e)}")
        except OSError as e:  # writing into the cache
            raise WriteError(f"could not write {path}: {cause(e)}", path, e.errno) from None
    raise DataError(f"could not download {name} ({errors[-1]}); {_manual_fix(cache)}")


def _why(e: Exception) -> str:
    """The cause alone: requests wraps a refused connection or an unknown host in layers of reprs, around
    the system's ``[Errno 111] Connection refused``; pooch's MD5 message goes on after its first sentence."""
    errno_text = re.search(r"\[Errno -?\d+\] [^'\")]+", str(e))
    return errno_text.group(0) if errno_text else str(e).split(". ")[0]


def _manual_fix(cache: Path) -> str:
    names = ", ".join(n for n, _ in FILES.values())
    return (f"download {names} from the Fashion-MNIST release by hand and pass their directory with "
            f"--data-dir (or ${DATA_DIR_ENV}), or put them in {cache}")


# -- batches --------------------------------------------------------------------------------------------
def resize_matrix(n_in: int, n_out: int, dtype=np.float32) -> np.ndarray:
    """(n_out, n_in) bilinear interpolation weights, half-pixel centres, edges clamped."""
    m = np.zeros((n_out, n_in), dtype)
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0, n_in - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = (src - lo).astype(dtype)
    m[np.arange(n_out), lo] += 1 - frac
    m[np.arange(n_out), hi] += frac
    return m


def to_float_batch(images: np.ndarray, resize, layout: str = "NCHW", dtype=np.float32,
                   channels: int = 1) -> np.ndarray:
    """uint8 (N, H, W) → float in [0, 1] (float32, or float64 for fp64 runs: computed in float64 from the
    bytes, never through float32), bilinearly resized, with a channel axis where asked. ``channels`` 3
    repeats the gray channel, as torchvision's ``Grayscale(num_output_channels=3)`` does, for networks
    built for RGB."""
    dtype = np.dtype(dtype)
    x = images.astype(dtype) * dtype.type(1 / 255)
    rh, rw = (resize, resize) if isinstance(resize, int) else resize
    if (rh, rw) != x.shape[1:]:
        x = resize_matrix(x.shape[1], rh, dtype) @ x @ resize_matrix(x.shape[2], rw, dtype).T
    axis = 1 if layout == "NCHW" else 3
    x = np.expand_dims(x, axis)
    return np.ascontiguousarray(np.repeat(x, channels, axis) if channels > 1 else x)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The example order of one epoch, a function of (seed, epoch) only: every backend, a resumed run and
    ``reproduce`` (which hands it to each framework explicitly) see the same batches."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def batches(images: np.ndarray, labels: np.ndarray, batch_size: int, resize, layout: str,
            shuffle: bool = False, seed: int = 0, epoch: int = 0, prefetch: int = 2,
            order: Optional[np.ndarray] = None, dtype=np.float32,
            channels: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (x, y) batches; x float32 (or ``dtype``) in ``layout``, y int64. The last batch may be smaller.

    Shuffled, the example order is ``epoch_order(n, seed, epoch)``; ``order`` overrides it. A background
    thread prepares the next batches while the current step runs; NumPy's matrix products release the GIL,
    so this overlaps with the framework's own work.
    """
    n = len(images)
    if order is None:
        order = epoch_order(n, seed, epoch) if shuffle else np.arange(n)
    starts = range(0, n, batch_size)

    def make(i):
        idx = order[i:i + batch_size]
        return to_float_batch(images[idx], resize, layout, dtype, channels), labels[idx].astype(np.int64)

    if prefetch <= 0:
        for i in starts:
            yield make(i)
        return
    q: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def worker():
        try:
            for i in starts:
                if stop.is_set():
                    return
                q.put(make(i))
            q.put(None)
        except BaseException as e:  # surface the worker's error in the consumer
            q.put(e)

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():  # unblock a worker waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.01)


def num_batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)
