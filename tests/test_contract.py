"""Every backend against ``backends/contract.py``: the protocols at run time, the signatures with
``inspect``, the capability fields' values, and the companion modules the fields promise."""
import importlib.util
import inspect
from pathlib import Path

import numpy as np
import pytest

from nin_multi import backends
from nin_multi.backends import contract
from nin_multi.errors import ConfigError
from nin_multi.machine import CPU_CLASSES
from nin_multi.spec import make_spec

BACKENDS_DIR = Path(backends.__file__).parent
LAUNCHERS = ("torchrun", "tf_config", "dmlc", "jax.distributed")  # the Context.launcher values cluster.from_env sets


def module_file(name: str) -> str:
    return backends._REGISTRY[name][0].rsplit(".", 1)[1]


def parameters(fn) -> list[tuple[str, object]]:
    return [(p.name, p.default) for p in inspect.signature(fn).parameters.values() if p.name != "self"]


@pytest.mark.parametrize("name", backends.ORDER)
def test_capability_fields_are_literals_with_meaningful_values(name):
    caps = backends.capabilities(name)  # read from the source, without importing the framework
    assert isinstance(caps.trains, bool)
    assert caps.precisions and set(caps.precisions) <= set(contract.PRECISIONS) and "fp32" in caps.precisions
    assert len(set(caps.precisions)) == len(caps.precisions)
    assert caps.native_suffixes and all(s.startswith(".") for s in caps.native_suffixes)
    assert caps.data_parallel is None or caps.data_parallel in LAUNCHERS
    if not caps.trains:
        assert caps.data_parallel is None and caps.precisions == ("fp32",)
    assert set(caps.precision_needs) <= set(caps.precisions)  # where a precision runs, for one it offers
    assert all(needs and set(needs) <= {"gpu", *CPU_CLASSES} for needs in caps.precision_needs.values())
    # a data-parallel engine is promised exactly where its companion module exists
    assert (BACKENDS_DIR / f"{module_file(name)}_dist.py").is_file() == (caps.data_parallel is not None)


def test_each_launcher_belongs_to_one_backend():
    launchers = [backends.capabilities(n).data_parallel for n in backends.data_parallel()]
    assert len(launchers) == len(set(launchers)) and set(launchers) == set(LAUNCHERS)
    assert backends.trainable() == [n for n in backends.ORDER if n != "onnx"]


def test_the_module_fields_are_the_ones_the_registry_reads(backend):
    caps = backends.capabilities(backend.NAME)
    assert (backend.TRAINS, backend.PRECISIONS, backend.DATA_PARALLEL, backend.NATIVE_SUFFIXES,
            backend.PRECISION_NEEDS) == tuple(caps)
    assert isinstance(backend, contract.Backend)
    assert backend.NAME == backends.canonical_name(backend.NAME) and backend.LAYOUT in contract.LAYOUTS


def test_signatures_are_the_contracts(backend):
    assert parameters(backend.build_model) == [("spec", inspect.Parameter.empty), ("init", "xavier"), ("seed", 0),
                                               ("dtype", "float32")]
    assert parameters(backend.layer_shapes) == [("model", inspect.Parameter.empty), ("spec", inspect.Parameter.empty),
                                                ("image_size", 224), ("batch", 1)]
    assert parameters(backend.configure) == [("threads", None), ("seed", 0)]
    assert parameters(backend.forward)[2] == ("training", False)
    init = [(n, d) for n, d in parameters(backend.Trainer.__init__)]
    assert [n for n, _ in init] == list(contract.TRAINER_PARAMETERS), "one Trainer constructor for every backend"
    assert dict(init)["precision"] == "fp32" and dict(init)["optim"] is None
    assert parameters(backend.Trainer.train_step) == [("x", inspect.Parameter.empty), ("y", inspect.Parameter.empty),
                                                      ("lr", inspect.Parameter.empty), ("total", None)]
    assert [n for n, _ in parameters(backend.Trainer.train_step)] == list(contract.TRAIN_STEP_PARAMETERS)
    assert [n for n, _ in parameters(backend.Trainer.eval_step)] == ["x", "y"]


def test_a_trainer_is_the_protocols_trainer(backend):
    spec = make_spec("mini", dropout=0.0, image_size=28)
    backend.configure(None, 0)
    trainer = backend.Trainer(backend.build_model(spec, "kaiming", 0), 0.05, "fp32")
    assert isinstance(trainer, contract.Trainer)
    x = np.random.default_rng(0).random((4, 1, 28, 28), np.float32)
    if backend.LAYOUT == "NHWC":
        x = x.transpose(0, 2, 3, 1).copy()
    y = np.array([0, 1, 2, 3], np.int64)
    loss, correct = trainer.eval_step(x, y)
    assert np.isfinite(loss) and 0 <= correct <= 4
    if backend.TRAINS:
        loss, correct = trainer.train_step(x, y, 0.05)
        assert np.isfinite(loss) and isinstance(correct, int)
    else:
        with pytest.raises(ConfigError, match="inference-only"):
            trainer.train_step(x, y, 0.05)


def test_a_data_parallel_companion_is_the_protocols(backend):
    if backend.DATA_PARALLEL is None:
        assert importlib.util.find_spec(f"nin_multi.backends.{module_file(backend.NAME)}_dist") is None
        return
    dist = backends.companion(backend.NAME, "dist")
    assert isinstance(dist, contract.DataParallel)
    assert [n for n, _ in parameters(dist.distribute)] == list(contract.DISTRIBUTE_PARAMETERS)
    assert [n for n, _ in parameters(dist.start_workers)] == list(contract.START_WORKERS_PARAMETERS)
    engines = [c for _, c in inspect.getmembers(dist, inspect.isclass) if c.__module__ == dist.__name__
               and hasattr(c, "all_sum")]
    assert engines, "the companion defines its Engine"
    for engine in engines:
        assert isinstance(object.__new__(engine), contract.Engine)
        assert [n for n, _ in parameters(engine.train_step)] == list(contract.ENGINE_STEP_PARAMETERS)


def test_the_protocols_refuse_what_lacks_a_member():
    class Half:
        def train_step(self, x, y, lr, total=None):
            return 0.0, 0

    assert not isinstance(Half(), contract.Trainer)
    assert not isinstance(Half(), contract.Engine)


def test_a_share_of_a_larger_batch_is_its_summed_loss_over_the_global_batch(backend):
    """``total``: what a data-parallel engine hands the Trainer. With plain SGD a step over a batch that is
    half of a global batch of twice its size moves the weights as that batch alone would at half the rate."""
    if backend.DATA_PARALLEL is None:
        pytest.skip(f"{backend.NAME} has no data-parallel engine, whose steps are shares")
    spec = make_spec("mini", dropout=0.0, image_size=28)
    backend.configure(None, 0)
    x = np.random.default_rng(1).random((4, 1, 28, 28))
    if backend.LAYOUT == "NHWC":
        x = x.transpose(0, 2, 3, 1).copy()
    y = np.array([0, 1, 2, 3], np.int64)
    moved = []
    for lr, total in ((0.1, 8), (0.05, None)):
        model = backend.build_model(spec, "kaiming", 0, dtype="float64")
        backend.Trainer(model, 0.1, "fp64").train_step(x, y, lr, total)
        moved.append(backend.get_weights(model, spec))
    start = backend.get_weights(backend.build_model(spec, "kaiming", 0, dtype="float64"), spec)
    assert any(not np.array_equal(moved[1][k], start[k]) for k in start)
    for k in start:
        np.testing.assert_allclose(moved[0][k], moved[1][k], rtol=1e-12, atol=1e-15, err_msg=k)
