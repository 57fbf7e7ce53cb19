"""Downloads, offline: a local HTTP server on 127.0.0.1 serves good, truncated and corrupted files."""
import functools
import gzip
import hashlib
import http.server
import threading

import numpy as np
import pytest

from nin_multi import data
from nin_multi.errors import DataError

from test_data import idx_bytes


class Quiet(http.server.SimpleHTTPRequestHandler):
    requests: list = []  # the paths asked for, in order (reset by the fixture)

    def log_message(self, *args):
        pass

    def do_GET(self):
        Quiet.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    """Serves tmp_path/served/<mirror>/...; yields a function mirror name -> base URL."""
    root = tmp_path / "served"
    root.mkdir()
    Quiet.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield root, lambda mirror: f"http://127.0.0.1:{httpd.server_address[1]}/{mirror}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def waits(monkeypatch):
    """pooch's back-off between attempts, recorded instead of slept (pooch calls ``time.sleep``)."""
    import pooch.core

    slept = []
    monkeypatch.setattr(pooch.core.time, "sleep", slept.append)
    return slept


@pytest.fixture
def release(monkeypatch):
    """A stand-in release (4 tiny valid files) whose MD5s replace the published ones for the test."""
    rng = np.random.default_rng(0)
    blobs = {
        "train_images": gzip.compress(idx_bytes(rng.integers(0, 256, (5, 28, 28)))),
        "train_labels": gzip.compress(idx_bytes(rng.integers(0, 10, 5))),
        "test_images": gzip.compress(idx_bytes(rng.integers(0, 256, (3, 28, 28)))),
        "test_labels": gzip.compress(idx_bytes(rng.integers(0, 10, 3))),
    }
    files = {k: (data.FILES[k][0], hashlib.md5(b).hexdigest()) for k, b in blobs.items()}
    monkeypatch.setattr(data, "FILES", files)
    return {files[k][0]: b for k, b in blobs.items()}


def publish(root, mirror, blobs, mangle=None):
    d = root / mirror
    d.mkdir(exist_ok=True)
    for name, blob in blobs.items():
        (d / name).write_bytes(mangle(blob) if mangle else blob)


def test_download_verifies_and_caches(server, release, tmp_path, monkeypatch):
    root, url = server
    publish(root, "good", release)
    monkeypatch.setenv(data.MIRROR_ENV, url("good"))
    cache = tmp_path / "cache"
    ds = data.load_fashion_mnist(cache_dir=cache)
    assert ds.train_images.shape == (5, 28, 28) and ds.test_labels.shape == (3,)
    assert sorted(p.name for p in cache.iterdir()) == sorted(release)  # no temporary files left
    # second load reads the cache: works with the server gone
    monkeypatch.setenv(data.MIRROR_ENV, "http://127.0.0.1:9/")
    assert len(data.load_fashion_mnist(cache_dir=cache).train_images) == 5


@pytest.mark.parametrize("mangle", [lambda b: b[: len(b) // 2], lambda b: b[:20] + b"\x00" * 8 + b[28:]],
                         ids=["truncated", "corrupted"])
def test_bad_download_is_never_kept(server, release, tmp_path, mangle):
    root, url = server
    publish(root, "bad", release, mangle)
    name, md5 = data.FILES["train_labels"]
    with pytest.raises(DataError, match=r"could not download .*MD5 .*--data-dir"):
        data.ensure_file(tmp_path / "cache", name, md5, mirrors=[url("bad")], retries=2)
    assert not any((tmp_path / "cache").iterdir())


def test_falls_back_to_the_next_mirror(server, release, tmp_path):
    root, url = server
    publish(root, "bad", release, lambda b: b[:-3])
    publish(root, "good", release)
    name, md5 = data.FILES["test_images"]
    path = data.ensure_file(tmp_path / "cache", name, md5, mirrors=[url("bad"), url("good")])
    assert path.read_bytes() == release[name]


def test_corrupt_cached_file_is_fetched_again(server, release, tmp_path):
    root, url = server
    publish(root, "good", release)
    name, md5 = data.FILES["test_labels"]
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / name).write_bytes(b"half a file")
    path = data.ensure_file(cache, name, md5, mirrors=[url("good")])
    assert path.read_bytes() == release[name]


def test_offline_says_how_to_supply_the_files(tmp_path, release):
    name, md5 = data.FILES["train_images"]
    with pytest.raises(DataError, match=r"could not download .* by hand .* --data-dir"):
        data.ensure_file(tmp_path / "cache", name, md5, mirrors=["http://127.0.0.1:9/"], retries=2)
    with pytest.raises(DataError, match="downloading is disabled"):
        data.ensure_file(tmp_path / "cache", name, md5, download=False)


def test_missing_file_on_server_retries_then_fails(server, release, tmp_path, waits):
    root, url = server
    (root / "empty").mkdir()
    (root / "bad").mkdir()
    name, md5 = data.FILES["train_images"]
    with pytest.raises(DataError, match=rf"could not download {name} \(http://127.0.0.1:\d+/bad/{name}: 404 "):
        data.ensure_file(tmp_path / "cache", name, md5, mirrors=[url("empty"), url("bad")], retries=3)
    assert Quiet.requests == [f"/empty/{name}"] * 3 + [f"/bad/{name}"] * 3  # each mirror, three times
    assert waits == [1, 2, 1, 2]  # seconds of back-off between one mirror's attempts
    assert not any((tmp_path / "cache").iterdir())
