"""The formats other tools read: ``weights.safetensors`` through each safetensors loader, and every run's
TensorBoard events through TensorBoard's own reader, compared with the project's own files."""
import json
import math

import numpy as np
import pytest

from nin_multi import backends
from nin_multi.cli import main
from nin_multi.config import TrainConfig
from nin_multi.errors import DamagedFileError, WeightsError
from nin_multi.events import EPOCH_FIELDS, STEP_LOSS, STEP_LR, epoch_tag
from nin_multi.run import WEIGHTS, read_metrics
from nin_multi.train import resume, train
from nin_multi.checkpoints import save_checkpoint
from nin_multi.spec import make_spec
from nin_multi.weights import (DEFAULT, FORMAT, LAYOUT, RECORDED, RUN_SETTINGS, TrainedAt, checksum, load_weights,
                               read_header, read_weights, read_weights_file, save_weights, trained_at, trained_entry)

from conftest import load
from reference import random_weights

#: 128 training images in batches of 32: 4 SGD steps per epoch.
STEPS_PER_EPOCH, TEST_IMAGES = 4, 100


def quiet(*_):
    pass


def mini(sample_dir, out, **kw) -> TrainConfig:
    return TrainConfig(**{**dict(backend="torch", variant="mini", resize=28, init="kaiming", lr=0.05, batch_size=32,
                                 subset=128, test_subset=TEST_IMAGES, epochs=2, threads=1, data_dir=str(sample_dir),
                                 out=str(out), progress=False), **kw})


@pytest.fixture(scope="module")
def torch_run(sample_dir, tmp_path_factory):
    """The mini net trained 2 epochs by PyTorch: its weights.safetensors and events."""
    load("torch")
    out = tmp_path_factory.mktemp("formats") / "run"
    train(mini(sample_dir, out), log=quiet)
    return out


def read_events(run_dir):
    """{tag: [(step, value)]} as TensorBoard's own reader sees the run directory (``purge_orphaned_data``,
    its default, applied)."""
    if backends.is_installed("torch"):  # the reader imports TensorFlow when it is installed: PyTorch first
        backends.get_backend("torch")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def f32(x) -> float:
    """What a TensorBoard scalar (``simple_value``, float32) holds for ``x``."""
    return float(np.float32(x))


# -- safetensors ------------------------------------------------------------------------------------------
def test_each_safetensors_loader_gives_the_trained_arrays(torch_run):
    import safetensors.numpy
    import safetensors.torch
    import torch

    spec, weights, meta, _ = read_weights_file(torch_run / WEIGHTS)
    assert set(weights) == set(spec.weight_shapes()) and meta["backend"] == "torch" and meta["epochs"] == 2
    by_torch = safetensors.torch.load_file(torch_run / WEIGHTS)
    by_numpy = safetensors.numpy.load_file(torch_run / WEIGHTS)
    assert set(by_torch) == set(by_numpy) == set(weights)
    for name, w in weights.items():
        assert by_torch[name].dtype == torch.float32 and by_numpy[name].dtype == np.float32
        np.testing.assert_array_equal(by_torch[name].numpy(), w, err_msg=name)
        np.testing.assert_array_equal(by_numpy[name], w, err_msg=name)
    # A network without dense layers: the file is the PyTorch rendering's state_dict, loaded strictly.
    model = backends.get_backend("torch").build_model(spec)
    model.load_state_dict(by_torch, strict=True)
    # The metadata: strings only, as safetensors requires; the spec and meta as JSON.
    with safetensors.safe_open(torch_run / WEIGHTS, framework="numpy") as f:
        metadata = f.metadata()
    assert set(metadata) == {"format", "layout", "dtype", "spec", "meta", "checksum", "trained", "header_checksum"}
    assert (metadata["format"], metadata["layout"], metadata["dtype"]) == (FORMAT, LAYOUT, "float32")
    assert json.loads(metadata["trained"]) == {"image_size": 28, "layout": "NCHW", "precision": "fp32"}
    assert json.loads(metadata["spec"]) == spec.to_dict() and json.loads(metadata["meta"]) == meta
    assert metadata["checksum"] == checksum(by_numpy)


def evaluate_line(sample_dir, backend_name, weights, capsys) -> str:
    code = main(["evaluate", "--backend", backend_name, "--weights", str(weights), "--resize", "28",
                 "--test-subset", str(TEST_IMAGES), "--batch-size", "50", "--data-dir", str(sample_dir),
                 "--no-progress", "--threads", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out.strip()


def test_a_torch_state_dict_saved_by_safetensors_scores_the_same_in_every_backend(backend, torch_run, sample_dir,
                                                                                  tmp_path, capsys):
    """What a PyTorch user does with their own model: ``save_file(model.state_dict(), metadata=...)`` with
    the metadata the project writes. Every backend reads it, and scores it as it scores the project's own
    file and as the training's last epoch measured it (the same 100 test images)."""
    import safetensors
    import safetensors.torch

    torch_backend = backends.get_backend("torch")
    spec, weights = load_weights(torch_run / WEIGHTS)
    model = torch_backend.build_model(spec)
    torch_backend.set_weights(model, spec, weights)
    with safetensors.safe_open(torch_run / WEIGHTS, framework="numpy") as f:
        metadata = f.metadata()
    mine = tmp_path / "from_state_dict.safetensors"
    safetensors.torch.save_file(model.state_dict(), mine, metadata=metadata)

    line = evaluate_line(sample_dir, backend.NAME, mine, capsys)
    assert line == evaluate_line(sample_dir, backend.NAME, torch_run / WEIGHTS, capsys)
    loss, acc = (float(v) for v in line.split(" on ")[0].replace(",", "").split()[2::3])
    last = read_metrics(torch_run)[-1]
    assert abs(acc - last["test_acc"]) <= 1 / TEST_IMAGES + 1e-9, (line, last)  # one near-tie image at most
    assert loss == pytest.approx(last["test_loss"], rel=1e-3), (line, last)


def test_convert_writes_either_container(torch_run, tmp_path, capsys):
    spec, weights, meta, _ = read_weights_file(torch_run / WEIGHTS)
    assert main(["convert", "--weights", str(torch_run / WEIGHTS), "--out", str(tmp_path / "w.npz")]) == 0
    assert main(["convert", "--weights", str(tmp_path / "w.npz"), "--out", str(tmp_path / "w.safetensors")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (tmp_path / "w.npz").read_bytes()[:2] == b"PK"  # a zip, whatever the first file was
    for path in (tmp_path / "w.npz", tmp_path / "w.safetensors"):
        spec2, weights2, meta2, state = read_weights_file(path)
        assert spec2 == spec and meta2 == meta and state == {}
        for k in weights:
            np.testing.assert_array_equal(weights2[k], weights[k])
        assert trained_at(path) == TrainedAt(28, RECORDED, "NCHW", "fp32")
    # A checkpoint's training state stays behind: the result is a weights file, trained at the same size.
    assert main(["convert", "--weights", str(torch_run / "checkpoints" / "epoch-0002.npz"),
                 "--out", str(tmp_path / "ck.safetensors")]) == 0
    assert read_weights_file(tmp_path / "ck.safetensors")[3] == {}
    assert trained_at(tmp_path / "ck.safetensors") == TrainedAt(28, RECORDED, "NCHW", "fp32")
    # A native format needs its framework named.
    assert main(["convert", "--weights", str(torch_run / WEIGHTS), "--out", str(tmp_path / "m.pt")]) == 2
    assert "name a framework with --backend" in capsys.readouterr().err and not (tmp_path / "m.pt").exists()


def test_a_damaged_or_foreign_safetensors_file_is_refused(sample_dir, torch_run, tmp_path, capsys):
    import safetensors.numpy

    good = (torch_run / WEIGHTS).read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(good[: len(good) // 2])
    with pytest.raises(DamagedFileError, match=r"cut.safetensors is damaged or not a nin_multi weights file "
                                               r"\(SafetensorError: "):
        read_weights_file(tmp_path / "cut.safetensors")
    flipped = bytearray(good)
    flipped[-5] ^= 0xFF  # a bit of the last array: only the checksum can tell
    (tmp_path / "flipped.bin").write_bytes(bytes(flipped))  # any name: the container is told by its content
    with pytest.raises(DamagedFileError, match="its arrays do not match the checksum stored with them"):
        read_weights_file(tmp_path / "flipped.bin")
    plain = tmp_path / "plain.safetensors"
    plain.write_bytes(safetensors.numpy.save(read_weights_file(torch_run / WEIGHTS)[1]))
    with pytest.raises(WeightsError, match="without nin_multi's metadata"):
        read_weights_file(plain)
    before = plain.read_bytes()
    code = main(["evaluate", "--weights", str(plain), "--resize", "28", "--data-dir", str(sample_dir)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("nin-multi: error: ") and "Traceback" not in err
    assert plain.read_bytes() == before


# -- what the network was trained at ---------------------------------------------------------------------
def test_train_records_its_size_in_the_weights_and_every_checkpoint(torch_run):
    for path in [torch_run / WEIGHTS, *sorted((torch_run / "checkpoints").glob("*.npz"))]:
        assert read_header(path)["trained"] == {"image_size": 28, "layout": "NCHW", "precision": "fp32"}, path


@pytest.mark.parametrize("name", ["w.safetensors", "w.npz"])
@pytest.mark.parametrize("size, layout, precision", [(28, "NHWC", "bf16"), (96, "NCHW", "fp64")])
def test_the_trained_record_round_trips_through_either_container(tmp_path, name, size, layout, precision):
    spec = make_spec("mini")
    weights = random_weights(spec)
    if precision == "fp64":
        weights = {k: w.astype(np.float64) for k, w in weights.items()}
    save_weights(tmp_path / name, spec, weights, meta={"config": {"resize": 224}},
                 trained=trained_entry(size, layout, precision))
    f = read_weights(tmp_path / name)
    assert f.header["trained"] == {"image_size": size, "layout": layout, "precision": precision}
    assert trained_at(tmp_path / name) == trained_at(f.header) == TrainedAt(size, RECORDED, layout, precision)
    assert f.spec == spec and all(np.array_equal(f.weights[k], weights[k]) for k in weights)


def test_the_trained_record_round_trips_through_a_checkpoint(tmp_path):
    spec = make_spec("mini")
    path = save_checkpoint(tmp_path, spec, random_weights(spec), {"torch_rng": np.zeros(8, np.uint8)}, 0, "jax",
                           {"resize": 32}, [], trained=trained_entry(32, "NHWC", "fp32"))
    assert path.name == "epoch-0001.npz"
    assert trained_at(path) == TrainedAt(32, RECORDED, "NHWC", "fp32")
    assert read_weights(path).state["torch_rng"].shape == (8,)


def test_convert_between_containers_keeps_the_trained_record(tmp_path, capsys):
    spec = make_spec("mini")
    save_weights(tmp_path / "a.safetensors", spec, random_weights(spec), trained=trained_entry(28, "NHWC", "bf16"))
    assert main(["convert", "--weights", str(tmp_path / "a.safetensors"), "--out", str(tmp_path / "b.npz")]) == 0
    assert main(["convert", "--weights", str(tmp_path / "b.npz"), "--out", str(tmp_path / "c.safetensors")]) == 0
    assert capsys.readouterr().out.count("wrote") == 2
    for name in ("b.npz", "c.safetensors"):
        assert trained_at(tmp_path / name) == TrainedAt(28, RECORDED, "NHWC", "bf16"), name
    # A file without the record converts into one without it: no size is made up on the way.
    save_weights(tmp_path / "old.npz", spec, random_weights(spec))
    assert main(["convert", "--weights", str(tmp_path / "old.npz"), "--out", str(tmp_path / "old.safetensors")]) == 0
    assert "trained" not in read_header(tmp_path / "old.safetensors")


@pytest.mark.parametrize("meta, expected", [
    ({"backend": "torch", "config": {"resize": 28, "precision": "bf16"}}, TrainedAt(28, RUN_SETTINGS, None, "bf16")),
    ({"backend": "torch", "config": {"resize": 28}}, TrainedAt(28, RUN_SETTINGS)),
    ({"init": "xavier"}, TrainedAt(224, DEFAULT)),  # reproduce's initial weights
    ({}, TrainedAt(224, DEFAULT)),
    ({"config": {"resize": True, "precision": "fp8"}}, TrainedAt(224, DEFAULT)),  # no evidence: passed over
    ({"config": {"resize": 10 ** 9}}, TrainedAt(224, DEFAULT)),
    ({"config": "28"}, TrainedAt(224, DEFAULT)),
])
def test_weights_written_before_the_record_still_load_and_say_where_their_size_came_from(tmp_path, meta,
                                                                                         expected):
    spec = make_spec("mini")
    weights = random_weights(spec)
    save_weights(tmp_path / "old.npz", spec, weights, meta=meta)
    assert "trained" not in read_header(tmp_path / "old.npz")
    assert trained_at(tmp_path / "old.npz") == expected
    assert all(np.array_equal(w, weights[k]) for k, w in load_weights(tmp_path / "old.npz")[1].items())


def test_a_writer_cannot_record_what_no_reader_accepts(tmp_path):
    spec = make_spec("mini")
    with pytest.raises(ValueError, match=r"trained= for w.npz: its record of what it was trained at says 3x3, a "
                                         r"size its network cannot take"):
        save_weights(tmp_path / "w.npz", spec, random_weights(spec), trained=trained_entry(3, "NCHW", "fp32"))
    assert not (tmp_path / "w.npz").exists()


# -- TensorBoard ------------------------------------------------------------------------------------------
def test_events_hold_every_step_and_the_metrics_of_every_epoch(torch_run):
    events, rows = read_events(torch_run), read_metrics(torch_run)
    steps = list(range(1, 2 * STEPS_PER_EPOCH + 1))
    assert set(events) == {STEP_LOSS, STEP_LR} | {epoch_tag(k) for k in EPOCH_FIELDS}
    assert [s for s, _ in events[STEP_LOSS]] == steps
    assert events[STEP_LR] == [(s, f32(0.05)) for s in steps]
    for field in EPOCH_FIELDS:  # at the step that ends each epoch, exactly metrics.jsonl's value in float32
        assert events[epoch_tag(field)] == [(r["epoch"] * STEPS_PER_EPOCH, f32(r[field])) for r in rows], field
    for r in rows:  # equal batches: the epoch's training loss is the mean of its steps' losses
        epoch = [v for s, v in events[STEP_LOSS] if (s - 1) // STEPS_PER_EPOCH + 1 == r["epoch"]]
        assert math.fsum(epoch) / len(epoch) == pytest.approx(r["train_loss"], rel=1e-6)


def test_a_resumed_run_shows_each_step_once(sample_dir, tmp_path):
    """The newest checkpoint is damaged, so the resume retrains epoch 2: TensorBoard must show the
    retrained steps, not both attempts'."""
    load("torch")
    out = tmp_path / "run"
    train(mini(sample_dir, out, subset=64), log=quiet)  # 2 steps per epoch
    (out / "checkpoints" / "epoch-0002.npz").write_bytes(b"")
    resume(out, log=quiet)
    events, rows = read_events(out), read_metrics(out)
    assert len(list(out.glob("events.out.tfevents.*"))) == 2
    assert [s for s, _ in events[STEP_LOSS]] == [1, 2, 3, 4]
    assert events[epoch_tag("train_loss")] == [(2, f32(rows[0]["train_loss"])), (4, f32(rows[1]["train_loss"]))]


@pytest.mark.slow
def test_reproduce_writes_each_backend_as_a_run(sample_dir, tmp_path):
    """``tensorboard --logdir`` on a reproduce folder: one run per backend, their curves on one step axis."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    from test_reproduce import installed_backends

    names = installed_backends()
    out = tmp_path / "repro"
    assert main(["reproduce", "--backends", ",".join(names), "--variant", "mini", "--resize", "28", "--init",
                 "kaiming", "--lr", "0.05", "--batch-size", "32", "--subset", "64", "--test-subset", "32",
                 "--epochs", "2", "--threads", "1", "--data-dir", str(sample_dir), "--out", str(out),
                 "--no-progress"]) == 0
    mux = EventMultiplexer().AddRunsFromDirectory(str(out))
    mux.Reload()
    assert sorted(mux.Runs()) == sorted(names)
    for name in names:
        rows = read_metrics(out / name)
        assert [(e.step, e.value) for e in mux.Scalars(name, epoch_tag("test_acc"))] == \
            [(2, f32(rows[0]["test_acc"])), (4, f32(rows[1]["test_acc"]))]
        assert [e.step for e in mux.Scalars(name, STEP_LOSS)] == [1, 2, 3, 4]
