"""Files from users read as if hostile, each crafted for real and read under an address-space limit
(``ulimit -v``): weights and checkpoints whose members, header or network lie, a plain ``.npy``, a size
beyond the machine's memory, gzip bombs posing as IDX files. Each ends in one line with exit status 2 and
leaves the file as it was.
"""
import gzip
import io
import json
import re
import shutil
import zipfile

import numpy as np
import pytest

from nin_multi.errors import DamagedFileError
from nin_multi.spec import make_spec
from nin_multi.weights import read_weights_file, save_weights, trained_entry

from reference import random_weights
import test_safety
from test_safety import RUN_ARGS, cli, one_line, snapshot, victim

# test_safety's finished torch run and its per-test copy, shared rather than trained again
torch_run, run = test_safety.torch_run, test_safety.run


# -- hostile weights files --------------------------------------------------------------------------------
def members_of(path) -> dict:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def npy_bytes(array=None, header=None, data=b"") -> bytes:
    """An .npy member: a real array, or a header that claims whatever ``header`` says over ``data``."""
    f = io.BytesIO()
    if header is None:
        np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)
    else:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(data)
    return f.getvalue()


def write_members(path, members: dict) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def with_header(members: dict, edit) -> dict:
    header = json.loads(str(np.load(io.BytesIO(members["__header__.npy"]))))
    text = edit(header)
    return {**members, "__header__.npy": npy_bytes(np.array(text if isinstance(text, str) else json.dumps(header)))}


def set_padding(header):
    header["spec"]["layers"][0]["convs"][0]["padding"] = 2000


def set_type(header):
    header["spec"]["layers"][0]["type"] = "Transformer"


def nested(header):
    return json.dumps({**header, "meta": {}})[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}"


def nth_weight(members):
    return next(n for n in members if n.endswith(".weight.npy"))


HOSTILE = {
    "an 8 TiB member": (
        lambda m: {**m, nth_weight(m): npy_bytes(header={"descr": "<f8", "fortran_order": False,
                                                         "shape": (1 << 40,)}, data=b"\0" * 8)},
        "member {name!r} claims a (1099511627776,) float64 array (8,796,093,022,208 bytes) in 8 bytes"),
    "a header without its spec": (
        lambda m: with_header(m, lambda h: h.pop("spec")), "its header holds no network description (spec)"),
    "deeply nested JSON": (
        lambda m: with_header(m, nested), "its header nests 100001 levels deep, more than the 32 allowed"),
    "an unknown layer type": (
        lambda m: with_header(m, set_type),
        "its network has a layer of unknown type 'Transformer' (known: NiNBlock, MaxPool, Dropout, "
        "ChannelDropout, AvgPool, GlobalAvgPool, Flatten, Dense)"),
    "a padding of 2,000": (
        lambda m: with_header(m, set_padding),
        "Conv 'nin1.conv0' of its network has padding = 2000, not an integer from 0 to 63"),
    "a state member of 8 TiB": (
        lambda m: {**m, "state.torch_rng.npy": npy_bytes(header={"descr": "|u1", "fortran_order": False,
                                                                 "shape": (1 << 43,)}, data=b"")},
        "member 'state.torch_rng.npy' claims a (8796093022208,) uint8 array (8,796,093,022,208 bytes) in 0 bytes"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_weights_file_is_one_line_under_ulimit(sample_dir, case, torch_run, tmp_path):
    members = members_of(torch_run / "checkpoints" / "epoch-0002.npz")  # an .npz: weights and state
    craft, why = HOSTILE[case]
    path = tmp_path / "weights.npz"
    write_members(path, craft(members))
    data = path.read_bytes()
    code, _, err = victim(["evaluate", "--backend", "torch", "--weights", str(path), "--resize", "28",
                           "--data-dir", str(sample_dir), "--no-progress"])
    assert code == 2
    why = why.format(name=nth_weight(members))
    assert one_line(err) == f"{path} is damaged or not a nin_multi weights file ({why})"
    assert path.read_bytes() == data


def test_a_plain_npy_given_as_weights_is_one_line(tmp_path, capsys):
    path = tmp_path / "weights.npy"
    np.save(path, np.zeros((3, 3), np.float32))
    code, _, err = cli(["convert", "--backend", "torch", "--weights", str(path), "--out", str(tmp_path / "w.pt")],
                       capsys)
    assert code == 2
    assert one_line(err) == (f"{path} is damaged or not a nin_multi weights file (a single NumPy .npy array, not "
                             f"an .npz of weights with their network)")
    assert not (tmp_path / "w.pt").exists()


def test_a_checkpoint_with_a_hostile_spec_is_skipped_on_resume(run, capsys):
    ck = run / "checkpoints" / "epoch-0002.npz"
    write_members(ck, with_header(members_of(ck), set_padding))
    code, out, err = cli(["train", "--resume", str(run), "--epochs", "2", "--no-progress"], capsys)
    assert code == 0, err
    assert ("skipped damaged checkpoint epoch-0002.npz (Conv 'nin1.conv0' of its network has padding = 2000, not an "
            "integer from 0 to 63)") in out
    assert "resuming after epoch 1" in out
    read_weights_file(ck)  # written again, intact


def test_a_size_beyond_the_machine_s_memory_is_refused_before_allocating(sample_dir, torch_run, capsys):
    code, _, err = cli(["evaluate", "--backend", "torch", "--weights", str(torch_run / "weights.safetensors"),
                        "--resize", "8192", "--batch-size", "512", "--data-dir", str(sample_dir), "--no-progress"],
                       capsys)
    assert code == 2
    assert re.fullmatch(r"at 8192x8192 with a batch of 512 this network needs at least [\d,.]+ GiB for one forward "
                        r"pass, more than this machine's [\d,.]+ GiB of memory: use a smaller --resize or "
                        r"--batch-size", one_line(err)), err


def test_the_files_this_project_writes_still_read_back(tmp_path):
    for variant in ("chapter", "ninnet", "fc-head", "nin-19"):
        spec = make_spec(variant, in_channels=3 if variant == "ninnet" else 1)
        weights = {k: np.zeros(s, np.float32) for k, s in spec.weight_shapes().items()}
        save_weights(tmp_path / "w.npz", spec, weights, state={"torch_rng": np.zeros(5056, np.uint8)})
        got_spec, got, _, state = read_weights_file(tmp_path / "w.npz")
        assert got_spec == spec and set(got) == set(weights) and state["torch_rng"].shape == (5056,)


# -- a hostile record of what the network was trained at --------------------------------------------------
GOOD_TRAINED = {"image_size": 28, "layout": "NCHW", "precision": "fp32"}
HOSTILE_TRAINED = {
    "not an object": ([28, "NCHW"], "its record of what it was trained at (trained) is not a JSON object"),
    "a size as text": ({**GOOD_TRAINED, "image_size": "28"},
                       'its record of what it was trained at has image_size = "28", not an integer from 1 to 65536'),
    "a size as a boolean": ({**GOOD_TRAINED, "image_size": True},
                            "its record of what it was trained at has image_size = true, not an integer from 1 to "
                            "65536"),
    "a huge size": ({**GOOD_TRAINED, "image_size": 1 << 40},
                    "its record of what it was trained at has image_size = 1099511627776, not an integer from 1 to "
                    "65536"),
    "a negative size": ({**GOOD_TRAINED, "image_size": -28},
                        "its record of what it was trained at has image_size = -28, not an integer from 1 to 65536"),
    "a size the network cannot take": ({**GOOD_TRAINED, "image_size": 3},
                                       "its record of what it was trained at says 3x3, a size its network cannot "
                                       "take"),
    "an unknown layout": ({**GOOD_TRAINED, "layout": "NWHC"},
                          'its record of what it was trained at has layout = "NWHC", not one of NCHW, NHWC'),
    "an unknown precision": ({**GOOD_TRAINED, "precision": "fp8"},
                             'its record of what it was trained at has precision = "fp8", not one of fp32, bf16, '
                             'fp16, fp64'),
    "a missing field": ({"image_size": 28, "layout": "NCHW"},
                        "its record of what it was trained at has no field 'precision'"),
    "an unknown field": ({**GOOD_TRAINED, "channels": 1},
                         "its record of what it was trained at has unknown field 'channels'"),
}


def mini_file(path, trained) -> bytes:
    """Mini weights whose header holds ``trained`` as given, in either container; returns the file's bytes."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    spec = make_spec("mini")
    save_weights(path, spec, random_weights(spec), trained=trained_entry(**GOOD_TRAINED))
    if path.suffix == ".npz":
        write_members(path, with_header(members_of(path), lambda h: h.update(trained=trained)))
    else:
        with safe_open(path, framework="numpy") as f:
            metadata, arrays = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        save_file(arrays, str(path), metadata={**metadata, "trained": json.dumps(trained)})
    return path.read_bytes()


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
@pytest.mark.parametrize("case", list(HOSTILE_TRAINED))
def test_a_hostile_trained_record_is_one_line(sample_dir, case, suffix, tmp_path, capsys):
    trained, why = HOSTILE_TRAINED[case]
    path = tmp_path / f"weights{suffix}"
    data = mini_file(path, trained)
    code, out, err = cli(["evaluate", "--backend", "torch", "--weights", str(path), "--data-dir", str(sample_dir),
                          "--no-progress"], capsys)
    assert code == 2 and out == ""
    assert one_line(err) == f"{path} is damaged or not a nin_multi weights file ({why})"
    assert path.read_bytes() == data


def test_a_hostile_trained_record_is_refused_by_every_reader(tmp_path, capsys):
    path = tmp_path / "weights.npz"
    data = mini_file(path, {**GOOD_TRAINED, "image_size": -28})
    why = (f"{path} is damaged or not a nin_multi weights file (its record of what it was trained at has image_size "
           f"= -28, not an integer from 1 to 65536)")
    for args in (["summary", "--backend", "torch", "--weights", str(path)],
                 ["summary", "--backend", "torch", "--weights", str(path), "--resize", "28"],
                 ["convert", "--weights", str(path), "--out", str(tmp_path / "w.safetensors")],
                 ["convert", "--backend", "torch", "--weights", str(path), "--out", str(tmp_path / "w.pt")]):
        code, out, err = cli(args, capsys)
        assert code == 2 and out == "" and one_line(err) == why, args
    assert path.read_bytes() == data and sorted(p.name for p in tmp_path.iterdir()) == ["weights.npz"]
    with pytest.raises(DamagedFileError, match="image_size = -28"):
        read_weights_file(path)


# -- IDX files --------------------------------------------------------------------------------------------
def gzip_bomb(path, header: bytes, gib: int) -> None:
    """``gib`` GiB of zeros after an IDX header, in a few MiB: one member of 64 MiB of zeros repeated
    (concatenated gzip members are one stream to every gzip reader)."""
    member = gzip.compress(b"\0" * (64 << 20), compresslevel=9)
    with open(path, "wb") as f:
        f.write(gzip.compress(header))
        for _ in range(gib * 16):
            f.write(member)


def test_a_gzip_bomb_posing_as_idx_is_one_line_under_ulimit(sample_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(sample_dir / name, data / name)
    bomb = data / "train-images-idx3-ubyte.gz"
    header = (2051).to_bytes(4, "big") + (100).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    gzip_bomb(bomb, header, gib=6)  # 6 GiB decompressed, beyond the 4 GiB address space
    assert bomb.stat().st_size < 8 << 20
    before = snapshot(data)
    code, _, err = victim(["train", "--backend", "torch", *RUN_ARGS, "--data-dir", str(data),
                           "--out", str(tmp_path / "run")])
    assert code == 2
    assert one_line(err) == (f"{bomb}: more bytes, but its header promises [100, 28, 28] items = 78416 bytes "
                             f"(trailing data)")
    assert snapshot(data) == before


def test_an_idx_header_promising_more_than_any_fashion_mnist_file_is_refused(tmp_path):
    from nin_multi.data import read_idx
    from nin_multi.errors import DataError

    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress((2051).to_bytes(4, "big") + (1 << 30).to_bytes(4, "big")
                                   + (28).to_bytes(4, "big") * 2))
    with pytest.raises(DataError, match=r"its header promises \[1073741824, 28, 28\] items = 841,813,590,032 "
                       r"bytes, more than any Fashion-MNIST file \(470,400,160 bytes at most\)"):
        read_idx(path)


# -- downloads --------------------------------------------------------------------------------------------
@pytest.fixture
def hostile_server():
    """A local HTTP server: /endless streams zeros without end, /trickle sends a byte every 0.5 s."""
    import http.server
    import threading
    import time

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(10 ** 6):
                    if self.path == "/trickle":
                        time.sleep(0.5)
                        self.wfile.write(b"\0")
                    else:
                        self.wfile.write(b"\0" * 65536)
                    self.wfile.flush()
            except OSError:
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize("path, cap, seconds, message", [
    ("endless", 1 << 20, 60, "{url} sent more than 1,048,576 bytes, more than the file it should be; stopped"),
    ("trickle", 1 << 20, 2, "{url} did not arrive within 2 s; stopped"),
])
def test_a_download_is_capped_in_size_and_time(hostile_server, tmp_path, path, cap, seconds, message):
    import time

    import pooch

    from nin_multi.downloads import DownloadRefused, Guarded

    source = pooch.create(path=tmp_path, base_url=hostile_server + "/", registry={path: None}, retry_if_failed=2)
    t0 = time.monotonic()
    with pytest.raises(DownloadRefused) as e:
        source.fetch(path, downloader=Guarded(pooch.HTTPDownloader(timeout=5), max_bytes=cap, seconds=seconds))
    assert str(e.value) == message.format(url=f"{hostile_server}/{path}")
    assert time.monotonic() - t0 < seconds + 10  # no retry after a refusal
    assert list(tmp_path.iterdir()) == []  # pooch's temporary file is gone


def test_safetensors_weights_are_checked_like_npz(torch_run, tmp_path, capsys):
    """The same checks through the other container: the network in its metadata, each array's shape and
    dtype from its header, before any array is read."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(torch_run / "weights.safetensors", framework="numpy") as f:
        metadata, arrays = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    spec = json.loads(metadata["spec"])
    spec["layers"][0]["convs"][0]["padding"] = 2000
    cases = {
        "padding": ({**metadata, "spec": json.dumps(spec)}, arrays,
                    "is damaged or not a nin_multi weights file (Conv 'nin1.conv0' of its network has padding = "
                    "2000, not an integer from 0 to 63)"),
        "shape": (metadata, {**arrays, "nin1.conv0.bias": np.zeros(7, arrays["nin1.conv0.bias"].dtype)},
                  ": nin1.conv0.bias has shape (7,), the spec expects (32,)"),
        "nested": ({**metadata, "meta": "[" * 5000 + "]" * 5000}, arrays,
                   "is damaged or not a nin_multi weights file (its header nests 5000 levels deep, more than "
                   "the 32 allowed)"),
    }
    for name, (meta, tensors, why) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(path), metadata=meta)
        code, _, err = cli(["convert", "--backend", "torch", "--weights", str(path), "--out",
                            str(tmp_path / "w.pt")], capsys)
        assert code == 2 and one_line(err) == f"{path}{' ' if why[0] != ':' else ''}{why}", name
        assert not (tmp_path / "w.pt").exists()
