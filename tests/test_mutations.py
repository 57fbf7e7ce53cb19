"""Every file reader, fed its own files with bytes flipped, overwritten, truncated or appended at many
positions: each read ends in the project's own error (a ``NinMultiError``, one line) or gives exactly the
data the file held, never another exception. The crafted attacks live in test_hostile_files.py; this is
the blind complement, deterministic (a seeded choice of positions) and a few hundred mutations per reader.

The files are small on purpose (a two-block network, sixteen images), so that every position of their
headers and a spread of their bodies is tried in seconds.
"""
import gzip
import io
import itertools
import zipfile

import numpy as np
import pytest

from nin_multi import data
from nin_multi.checkpoints import load_checkpoint, save_checkpoint
from nin_multi.errors import NinMultiError
from nin_multi.spec import BlockDef, build_spec
from nin_multi.weights import read_header, read_weights, save_weights, trained_entry

from reference import random_weights

SPEC = build_spec((BlockDef(4, 3, 1, 1), BlockDef("classes", 3, 1, 1)), n_1x1=1, variant="mini")
STATE = {"torch_rng": np.arange(64, dtype=np.uint8), "step": np.array(7, np.int64)}


def mutations(original: bytes, count: int, seed: int = 0, dense: int = 0):
    """(label, mutated bytes): every byte of the first ``dense`` flipped, then ``count`` seeded edits
    spread over the whole file (a bit flipped, a byte zeroed or set to 0xff, the file cut, junk appended)."""
    for i in range(min(dense, len(original))):
        yield f"byte {i} flipped", original[:i] + bytes([original[i] ^ 0xFF]) + original[i + 1:]
    rng = np.random.default_rng(seed)
    for _ in range(count):
        i, kind = int(rng.integers(len(original))), int(rng.integers(5))
        if kind == 0:
            bit = int(rng.integers(8))
            yield f"bit {bit} of byte {i} flipped", original[:i] + bytes([original[i] ^ (1 << bit)]) + original[i + 1:]
        elif kind in (1, 2):
            value = 0 if kind == 1 else 0xFF
            yield f"byte {i} set to {value:#04x}", original[:i] + bytes([value]) + original[i + 1:]
        elif kind == 3:
            yield f"cut at {i}", original[:i]
        else:
            yield f"{i % 64 + 1} bytes appended", original + bytes(rng.integers(256, size=i % 64 + 1, dtype=np.uint8))


def member_mutations(original: bytes, count: int, seed: int = 0):
    """(label, mutated bytes) of an ``.npz`` whose members are changed inside a zip that stays valid (its
    CRC-32s recomputed): what a damaged copy that was re-zipped, or a crafted file, looks like, which the
    zip's own checks cannot catch. Most edits fall in a member's ``.npy`` header (its first 128 bytes)."""
    with zipfile.ZipFile(io.BytesIO(original)) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    names, rng = sorted(members), np.random.default_rng(seed)
    for _ in range(count):
        name = names[int(rng.integers(len(names)))]
        body = members[name]
        i = int(rng.integers(min(128, len(body)))) if rng.random() < 0.7 else int(rng.integers(len(body)))
        value = int(rng.integers(256))
        mutated = {**members, name: body[:i] + bytes([value]) + body[i + 1:]}
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
            for n, b in mutated.items():
                zf.writestr(n, b)
        yield f"byte {i} of member {name!r} set to {value:#04x}", out.getvalue()


def same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return a == b


def check_every_mutation(path, original: bytes, read, expected, count: int, dense: int, in_members: int = 0) -> dict:
    """Writes each mutation to ``path`` and reads it; returns how many ended how."""
    tally = {"error": 0, "identical": 0}
    edits = mutations(original, count, dense=dense)
    if in_members:
        edits = itertools.chain(edits, member_mutations(original, in_members))
    for label, mutated in edits:
        if mutated == original:
            continue
        path.write_bytes(mutated)
        try:
            got = read(path)
        except NinMultiError as e:
            assert "\n" not in str(e) and str(e), f"{label}: {type(e).__name__} is not one line: {e!r}"
            tally["error"] += 1
        except Exception as e:  # noqa: BLE001 - the point: anything else is a bug
            pytest.fail(f"{path.name} with {label}: {type(e).__name__}: {e}")
        else:
            changed = ([k for k in expected if not same(expected[k], got[k])] if isinstance(expected, dict)
                       else [] if same(expected, got) else ["the data"])
            assert not changed, f"{path.name} with {label} read without error, but {', '.join(changed)} changed"
            tally["identical"] += 1
    return tally


def weights_read(path) -> dict:
    f = read_weights(path)
    read_header(path)  # the header-only reader too
    return {"spec": f.spec, "weights": f.weights, "meta": f.meta, "state": f.state}


NUMPY_PARSING_JUNK = "ignore:invalid escape sequence:DeprecationWarning"  # NumPy's header parser on damage


@pytest.mark.filterwarnings(NUMPY_PARSING_JUNK)
@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_a_mutated_weights_file_is_one_line_or_the_same_data(tmp_path, suffix):
    path = tmp_path / f"weights{suffix}"
    save_weights(path, SPEC, random_weights(SPEC), meta={"note": "a run"}, trained=trained_entry(28, "NCHW", "fp32"),
                 state=STATE if suffix == ".npz" else None)
    original = path.read_bytes()
    expected = weights_read(path)
    tally = check_every_mutation(path, original, weights_read, expected, count=200, dense=64,
                                 in_members=150 if suffix == ".npz" else 0)
    assert tally["error"] > tally["identical"], tally  # the mutations reached the reader's checks


@pytest.mark.filterwarnings(NUMPY_PARSING_JUNK)
def test_a_mutated_checkpoint_resumes_exactly_or_is_refused_in_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    weights = random_weights(SPEC)
    path = save_checkpoint(run, SPEC, weights, STATE, epoch=1, backend="torch", config={"lr": 0.05},
                           history=[{"epoch": 1, "test_acc": 0.5}, {"epoch": 2, "test_acc": 0.6}])
    original = path.read_bytes()

    def resume(_):
        r = load_checkpoint(run, SPEC)
        return {"epochs": r.epochs_done, "weights": r.weights, "state": r.state, "meta": r.meta}

    expected = resume(path)
    assert expected["epochs"] == 2
    tally = check_every_mutation(path, original, resume, expected, count=200, dense=32, in_members=150)
    assert tally["error"] > tally["identical"], tally


def idx_file(path, compressed: bool) -> np.ndarray:
    images = np.random.default_rng(1).integers(256, size=(16, 28, 28), dtype=np.uint8)
    raw = np.array([0, 0, 8, 3, 0, 0, 0, 16, 0, 0, 0, 28, 0, 0, 0, 28], np.uint8).tobytes() + images.tobytes()
    path.write_bytes(gzip.compress(raw, mtime=0) if compressed else raw)
    return images


def test_a_mutated_gzip_idx_file_is_one_line_or_the_same_images(tmp_path):
    """Compressed, every byte counts: gzip's CRC-32 and length close the stream."""
    path = tmp_path / "train-images-idx3-ubyte.gz"
    images = idx_file(path, compressed=True)
    tally = check_every_mutation(path, path.read_bytes(), lambda p: data.read_idx(p, 2051), images, count=300,
                                 dense=32)
    assert tally["error"] > 250, tally


def test_a_mutated_raw_idx_header_is_one_line(tmp_path):
    """Uncompressed, a changed pixel is still an image (nothing in the format can tell); its header and its
    length are checked: each header byte flipped, the file cut or extended."""
    path = tmp_path / "train-images-idx3-ubyte"
    images = idx_file(path, compressed=False)
    original = path.read_bytes()
    tally = check_every_mutation(path, original, lambda p: data.read_idx(p, 2051), images, count=0, dense=16)
    cuts = [original[:i] for i in range(0, len(original), 97)] + [original + b"\0", original + original[-100:]]
    for mutated in cuts:
        path.write_bytes(mutated)
        with pytest.raises(NinMultiError) as e:
            data.read_idx(path, 2051)
        assert "\n" not in str(e.value)
    assert tally == {"error": 16, "identical": 0}
