"""What only the JAX and ONNX renderings have: ONNX's inference-only refusals, its exported file (checked,
and as accurate as the model it came from), a comparison with PyTorch's own ONNX exporter, and JAX's
native msgpack file. Their parity with the spec, the oracle and the other frameworks is in
test_backends.py, their training in test_training.py (both parametrized over every backend)."""
import contextlib
import io
import re

import numpy as np
import pytest

from nin_multi.cli import main
from nin_multi.errors import ConfigError
from nin_multi.spec import chapter_spec, make_spec
from nin_multi.train import train
from nin_multi.weights import load_weights

from conftest import load
from reference import random_weights
from test_training import mini_config, quiet


def test_onnx_refuses_to_train_before_writing_anything(sample_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--backend", "onnx", "--data-dir", str(sample_dir), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert err.count("\n") == 1 and err.startswith("nin-multi: error: onnx is inference-only"), err
    assert "--backend onnx" in err  # says what to do instead


def test_onnx_refuses_training_steps_and_other_precisions():
    onnx_backend = load("onnx")
    from nin_multi import backends

    spec = chapter_spec()
    with pytest.raises(ConfigError, match="float32 only"):
        onnx_backend.build_model(spec, dtype="float64")
    model = onnx_backend.build_model(spec)
    for precision in ("bf16", "fp16", "fp64"):
        with pytest.raises(ConfigError, match="float32 only"):
            onnx_backend.Trainer(model, 0.1, precision)
    x = np.zeros((1, 1, 224, 224), np.float32)
    with pytest.raises(ConfigError, match="inference-only"):
        onnx_backend.Trainer(model, 0.1).train_step(x, np.zeros(1, np.int64), 0.1)
    with pytest.raises(ConfigError, match="inference-only"):
        backends.select("torch,onnx", trains=True)
    assert "onnx" not in backends.select(None, trains=True) and "onnx" in backends.select(None)


def _test_acc(printed: str) -> float:
    return float(re.search(r"test acc ([0-9.]+)", printed)[1])


@pytest.mark.slow
def test_converted_onnx_file_is_valid_and_as_accurate_as_its_source(sample_dir, tmp_path, capsys):
    """Train the mini net a little in PyTorch, convert its weights to an .onnx file, and evaluate the file
    in a bare onnxruntime session (no nin_multi code in the way) and through ``evaluate --backend onnx``."""
    onnx = pytest.importorskip("onnx")
    load("torch")
    load("onnx")
    import onnxruntime as ort

    run, _ = train(mini_config(load("torch"), sample_dir, tmp_path / "run", epochs=1), log=quiet)
    capsys.readouterr()
    common = ["--weights", str(run / "weights.safetensors"), "--resize", "28", "--data-dir", str(sample_dir),
              "--no-progress"]
    assert main(["evaluate", "--backend", "torch", *common]) == 0
    torch_acc = _test_acc(capsys.readouterr().out)
    assert torch_acc > 0.15  # above chance (0.10): its predictions are not one class
    assert main(["evaluate", "--backend", "onnx", *common]) == 0
    assert _test_acc(capsys.readouterr().out) == torch_acc

    path = tmp_path / "model.onnx"
    assert main(["convert", "--backend", "onnx", "--weights", str(run / "weights.safetensors"),
                 "--out", str(path)]) == 0
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    spec, weights = load_weights(run / "weights.safetensors")
    assert {p.key: p.value for p in proto.metadata_props}["nin_multi.spec"] == spec.to_json()
    from nin_multi.data import batches, load_fashion_mnist

    ds = load_fashion_mnist(sample_dir)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    torch_backend = load("torch")
    source = torch_backend.build_model(spec)
    torch_backend.set_weights(source, spec, weights)
    ours, theirs = [], []
    for x, _ in batches(ds.test_images, ds.test_labels, 128, 28, "NCHW"):
        ours.append(session.run(None, {"input": x})[0].argmax(1))
        theirs.append(torch_backend.forward(source, x).argmax(1))
    np.testing.assert_array_equal(np.concatenate(ours), np.concatenate(theirs))  # every prediction
    assert (np.concatenate(ours) == ds.test_labels).mean() == torch_acc


@pytest.mark.slow
def test_onnx_graph_equals_torch_onnx_export():
    """PyTorch's own exporter (torch.export + onnxscript), which nobody here wrote, and the graph written
    from the spec: the same convolutions and pools in the same order, and the same logits."""
    pytest.importorskip("onnxscript")
    torch_backend, onnx_backend = load("torch"), load("onnx")
    import onnxruntime as ort
    import torch

    spec = chapter_spec()
    w = random_weights(spec, seed=1)
    model = torch_backend.build_model(spec)
    torch_backend.set_weights(model, spec, w)
    x = np.random.default_rng(2).random((2, 1, 227, 231), dtype=np.float32)
    with contextlib.redirect_stdout(io.StringIO()):
        exported = torch.onnx.export(model.eval(), (torch.from_numpy(x),), dynamo=True).model_proto
    ours = onnx_backend.build_model(spec)
    onnx_backend.set_weights(ours, spec, w)

    def layers(proto):
        attrs = ("kernel_shape", "strides", "pads")
        return [(n.op_type, {"pads": [0] * 4, **{a.name: list(a.ints) for a in n.attribute if a.name in attrs}})
                for n in proto.graph.node if n.op_type in ("Conv", "MaxPool")]

    assert layers(exported) == layers(ours.proto)
    session = ort.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert np.abs(theirs).max() > 0.1
    np.testing.assert_allclose(onnx_backend.forward(ours, x), theirs, rtol=1e-5, atol=1e-6)


def test_jax_native_file_is_flax_msgpack_of_the_weights(tmp_path, capsys):
    jax_backend = load("jax")
    from flax import serialization

    spec = chapter_spec()
    model = jax_backend.build_model(spec, seed=4)
    src = tmp_path / "w.npz"
    from nin_multi.weights import save_weights

    save_weights(src, spec, jax_backend.get_weights(model, spec))
    dest = tmp_path / "nin.msgpack"
    assert main(["convert", "--backend", "jax", "--weights", str(src), "--out", str(dest)]) == 0
    tree = serialization.msgpack_restore(dest.read_bytes())
    np.testing.assert_array_equal(tree["nin2"]["conv0"]["kernel"],
                                  jax_backend.get_weights(model, spec)["nin2.conv0.weight"].transpose(2, 3, 1, 0))
    assert main(["convert", "--backend", "jax", "--weights", str(src), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "must end in .msgpack" in capsys.readouterr().err


def test_onnx_summary_of_a_float64_recipe_is_refused_in_one_line(capsys):
    load("onnx")
    assert main(["summary", "--backend", "onnx", "--recipe", "standalone-ninnet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "float32 only" in err, err


def test_onnx_threads_travel_with_the_model_not_the_process():
    """onnxruntime keeps its thread count per session: a model carries it, and ``configure`` refuses one
    it would have nowhere to keep."""
    from nin_multi.machine import usable_cores

    onnx_backend = load("onnx")
    spec = make_spec("mini", 1, 10)
    one = onnx_backend.Model(spec, onnx_backend.get_weights(onnx_backend.build_model(spec, "kaiming", 0), spec),
                             threads=1)
    default = onnx_backend.build_model(spec, "kaiming", 0)
    assert one.session().get_session_options().intra_op_num_threads == 1
    assert default.session().get_session_options().intra_op_num_threads == usable_cores()
    onnx_backend.configure(None, 0)
    with pytest.raises(ConfigError, match=r"per model, not per process: .*threads=3"):
        onnx_backend.configure(3, 0)
