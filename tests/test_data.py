import gzip

import numpy as np
import pytest

from nin_multi import data
from nin_multi.errors import DataError


def idx_bytes(arr: np.ndarray, magic=None) -> bytes:
    magic = magic if magic is not None else (2051 if arr.ndim == 3 else 2049)
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_set(d, n_train=6, n_test=4, seed=0, **overrides):
    """A complete, valid, tiny Fashion-MNIST directory; ``overrides`` replaces a file's bytes."""
    rng = np.random.default_rng(seed)
    content = {
        "train_images": idx_bytes(rng.integers(0, 256, (n_train, 28, 28))),
        "train_labels": idx_bytes(rng.integers(0, 10, n_train)),
        "test_images": idx_bytes(rng.integers(0, 256, (n_test, 28, 28))),
        "test_labels": idx_bytes(rng.integers(0, 10, n_test)),
    }
    content.update(overrides)
    for key, raw in content.items():
        (d / data.FILES[key][0]).write_bytes(gzip.compress(raw) if isinstance(raw, bytes) else raw.data)
    return d


class Raw:  # bytes written as they are, not gzip-compressed
    def __init__(self, data):
        self.data = data


def test_valid_files_load(tmp_path):
    ds = data.load_fashion_mnist(write_set(tmp_path))
    assert ds.train_images.shape == (6, 28, 28) and ds.train_images.dtype == np.uint8
    assert ds.test_labels.shape == (4,)


@pytest.mark.parametrize("override, message", [
    ({"train_images": idx_bytes(np.zeros((6, 28, 28)), magic=2050)}, "wrong magic number 2050"),
    ({"train_images": idx_bytes(np.zeros((6, 28, 28)))[:-100]}, "truncated"),
    ({"train_images": idx_bytes(np.zeros((6, 28, 28))) + b"xx"}, "trailing data"),
    ({"train_images": idx_bytes(np.zeros((6, 32, 32)))}, "32x32"),
    ({"train_labels": idx_bytes(np.zeros(5))}, "6 images but .* 5 labels"),
    ({"test_labels": idx_bytes(np.array([1, 2, 12, 3]))}, "label 12 at index 2 is outside 0-9"),
    ({"train_labels": idx_bytes(np.zeros((6, 28, 28)))}, "holds images but labels were expected"),
    ({"test_images": Raw(b"<html>not found</html>")}, "not a valid gzip"),
    ({"test_images": Raw(gzip.compress(idx_bytes(np.zeros((4, 28, 28))))[:40])}, "not a valid gzip"),
    ({"test_labels": b"\x00\x00"}, "too short"),
])
def test_invalid_files_are_refused(tmp_path, override, message):
    write_set(tmp_path, **override)
    with pytest.raises(DataError, match=message):
        data.load_fashion_mnist(tmp_path)


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data.load_fashion_mnist(tmp_path / "nope")
    write_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte.gz"):
        data.load_fashion_mnist(tmp_path)


def test_data_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(write_set(tmp_path)))
    assert len(data.load_fashion_mnist().train_images) == 6


def test_resize_matrix_is_bilinear_half_pixel():
    m = data.resize_matrix(28, 224)
    np.testing.assert_allclose(m.sum(1), 1, rtol=1e-6)
    x = np.arange(28, dtype=np.float32)
    y = m @ x
    # half-pixel centres: output pixel 4 of 8 per input pixel sits at input 0.5625 - 0.5 from pixel 0
    assert y[0] == 0 and y[-1] == 27
    np.testing.assert_allclose(y[16], (16 + 0.5) / 8 - 0.5, rtol=1e-6)
    assert np.all(np.diff(y) >= 0)


def test_resize_matches_pytorch_bilinear():
    torch = pytest.importorskip("torch", reason="PyTorch is the independent bilinear reference")
    imgs = np.random.default_rng(0).integers(0, 256, (3, 28, 28)).astype(np.uint8)
    for size in (67, 96, 224):
        ours = data.to_float_batch(imgs, size, "NCHW")
        ref = torch.nn.functional.interpolate(torch.from_numpy(imgs[:, None] / 255.0).float(), size=(size, size),
                                              mode="bilinear", align_corners=False, antialias=False).numpy()
        np.testing.assert_allclose(ours, ref, atol=2e-6)


def test_batches_layouts_order_and_last_batch(tmp_path):
    ds = data.load_fashion_mnist(write_set(tmp_path, n_train=10))
    nchw = list(data.batches(ds.train_images, ds.train_labels, 4, 32, "NCHW", shuffle=True, seed=3, epoch=1))
    nhwc = list(data.batches(ds.train_images, ds.train_labels, 4, 32, "NHWC", shuffle=True, seed=3, epoch=1))
    assert [x.shape for x, _ in nchw] == [(4, 1, 32, 32), (4, 1, 32, 32), (2, 1, 32, 32)]
    assert [x.shape for x, _ in nhwc] == [(4, 32, 32, 1), (4, 32, 32, 1), (2, 32, 32, 1)]
    for (a, ya), (b, yb) in zip(nchw, nhwc):
        np.testing.assert_array_equal(a.transpose(0, 2, 3, 1), b)
        np.testing.assert_array_equal(ya, yb)
        assert a.dtype == np.float32 and ya.dtype == np.int64 and 0 <= a.min() and a.max() <= 1
    labels = np.concatenate([y for _, y in nchw])
    assert sorted(labels.tolist()) == sorted(ds.train_labels.tolist())  # every example once
    again = np.concatenate([y for _, y in data.batches(ds.train_images, ds.train_labels, 4, 32, "NCHW",
                                                       shuffle=True, seed=3, epoch=1, prefetch=0)])
    next_epoch = np.concatenate([y for _, y in data.batches(ds.train_images, ds.train_labels, 4, 32, "NCHW",
                                                            shuffle=True, seed=3, epoch=2)])
    ids = lambda e: np.concatenate([x.sum((1, 2, 3)) for x, _ in data.batches(  # noqa: E731
        ds.train_images, ds.train_labels, 4, 32, "NCHW", shuffle=True, seed=3, epoch=e)])
    np.testing.assert_array_equal(labels, again)  # the order is a function of (seed, epoch) only
    assert sorted(next_epoch.tolist()) == sorted(labels.tolist())
    assert not np.array_equal(ids(1), ids(2))  # a new order each epoch


def test_sample_data_loads(sample_dir):
    ds = data.load_fashion_mnist(sample_dir)
    assert ds.train_images.shape == (3443, 28, 28)
    assert ds.test_images.shape == (500, 28, 28)
    assert set(np.unique(ds.train_labels)) == set(range(10))
