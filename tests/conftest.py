"""Shared fixtures: the real data sample and one parametrized fixture per framework backend.

Which backends run is chosen with NIN_MULTI_BACKENDS (comma-separated; default: all five). A
backend whose framework is not installed is skipped with the reason, unless NIN_MULTI_BACKENDS names
it explicitly: then the run fails, so CI cannot pass by silently skipping a framework it promised.
Likewise the data sample: a test that needs it takes the ``sample_dir`` fixture, which skips when the
sample is missing and fails in CI (``CI=true``), so a CI run without the sample cannot pass green.
"""
import os
import tempfile
from pathlib import Path

import psutil
import pytest

from nin_multi import backends
from nin_multi.errors import BackendUnavailableError

ROOT = Path(__file__).resolve().parents[1]
# The suite never writes the user's cache (``--precision auto``'s answers, a download): a folder of its own
# for the session, inherited by every command the tests start, so each session measures afresh.
os.environ.setdefault("NIN_MULTI_CACHE_DIR", tempfile.mkdtemp(prefix="nin-multi-test-cache-"))
SAMPLE_DIR = Path(os.environ.get("NIN_MULTI_SAMPLE_DIR", ROOT.parent / "shared" / "data" / "fashion-mnist-sample"))
ALL_BACKENDS = list(backends.ORDER)
_ASKED = [backends.canonical_name(b) for b in os.environ.get("NIN_MULTI_BACKENDS", "").split(",") if b.strip()]
SELECTED = _ASKED or ALL_BACKENDS
#: Backends with a Trainer that trains (ONNX is inference-only): the training tests run over these alone,
#: so an inference-only backend is not a test skipped but one never asked to train.
TRAINABLE = [b for b in ALL_BACKENDS if backends.can_train(b)]


def load(name: str):
    """Import a backend, or skip (fail, if it was asked for by name) with the reason."""
    if name not in SELECTED:
        pytest.skip(f"{name} not selected by NIN_MULTI_BACKENDS={os.environ.get('NIN_MULTI_BACKENDS')}")
    # PyTorch must be imported before TensorFlow in one process: load the earlier backends first.
    earlier = [b for b in ALL_BACKENDS[: ALL_BACKENDS.index(name)] if b in SELECTED and backends.is_installed(b)]
    backends.load_backends(earlier)
    try:
        return backends.get_backend(name)
    except BackendUnavailableError as e:
        if name in _ASKED:
            pytest.fail(f"backend {name} was asked for (NIN_MULTI_BACKENDS) but cannot load: {e}")
        pytest.skip(str(e))


def load_companion(name: str, part: str):
    """A backend's companion module (``dist``, ``bench``), skipped or failed as ``load`` decides: never an
    ``importorskip``, which would also skip a companion that is broken."""
    load(name)
    return backends.companion(name, part)


@pytest.fixture(params=ALL_BACKENDS)
def backend(request):
    return load(request.param)


@pytest.fixture(params=TRAINABLE)
def trainable_backend(request):
    return load(request.param)


def in_ci() -> bool:
    """CI sets ``CI=true`` (.ci/run, and every hosted CI service): there a missing prerequisite is a failure."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def skip_or_fail(reason: str):
    """Skip locally, fail in CI: what CI must run may not pass by being skipped."""
    if in_ci():
        pytest.fail(f"CI must run this test: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The one way a test gets the data sample (session-scoped, so module fixtures can take it too)."""
    if not (SAMPLE_DIR / "train-images-idx3-ubyte.gz").is_file():
        skip_or_fail(f"the Fashion-MNIST sample is not at {SAMPLE_DIR} (set NIN_MULTI_SAMPLE_DIR)")
    return SAMPLE_DIR


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``; none when it has already gone (its children were reparented)."""
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
