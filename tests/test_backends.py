"""Every rendering against the spec, the NumPy oracle and the other renderings.

Parametrized over every backend; a backend whose framework is missing is skipped with the pip
command that installs it (or fails, when NIN_MULTI_BACKENDS asked for it).
"""
import functools
import itertools
import subprocess
import sys

import numpy as np
import pytest

from nin_multi.data import load_fashion_mnist, to_float_batch
from nin_multi.spec import VARIANTS, BlockDef, build_spec, chapter_spec, make_spec
from nin_multi.weights import initial_weights, load_weights, save_weights

from conftest import ALL_BACKENDS, TRAINABLE, load
from reference import forward as reference_forward, random_weights
from test_spec import CHAPTER_NCHW

RTOL, ATOL = 1e-5, 1e-6  # fp32 against the float64 oracle; measured worst case is ~10x below


def to_layout(x_nchw, backend):
    return np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1)) if backend.LAYOUT == "NHWC" else x_nchw


def as_nchw(shape, backend):
    return tuple(shape) if backend.LAYOUT == "NCHW" or len(shape) != 4 else \
        (shape[0], shape[3], shape[1], shape[2])


@pytest.mark.parametrize("size", [224, 227, (227, 231)])
def test_shape_walk_equals_spec(backend, size):
    spec = chapter_spec()
    model = backend.build_model(spec)
    got = backend.layer_shapes(model, spec, size, batch=2)
    walk = spec.walk(size, batch=2)
    assert [name for name, _ in got] == [i.name for i in walk]
    expected = [i.nhwc if backend.LAYOUT == "NHWC" else i.nchw for i in walk]
    assert [shape for _, shape in got] == expected
    if size == 224:
        assert [as_nchw(s, backend) for _, s in backend.layer_shapes(model, spec, 224)] == CHAPTER_NCHW


def test_parameter_count_is_the_chapters(backend):
    assert backend.count_params(backend.build_model(chapter_spec())) == 1_992_166


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "chapter"])
def test_variants_render_with_spec_shapes_and_counts(backend, variant):
    size = {"mini": 28, "ninnet": 224}.get(variant, 96)  # ninnet's fixed 5x5 pool needs 195 to 354
    spec = make_spec(variant, image_size=size)
    model = backend.build_model(spec)
    assert backend.count_params(model) == spec.num_params
    shapes = [s for _, s in backend.layer_shapes(model, spec, size)]
    assert [as_nchw(s, backend) for s in shapes] == [i.nchw for i in spec.walk(size)]


@functools.lru_cache(maxsize=None)
def oracle_case(variant, size, batch=2):
    spec = make_spec(variant, image_size=size if isinstance(size, int) else 224)
    w = random_weights(spec, seed=1)
    h, wd = (size, size) if isinstance(size, int) else size
    x = np.random.default_rng(2).random((batch, spec.in_channels, h, wd), dtype=np.float32)
    return spec, w, x, reference_forward(spec, w, x)


@functools.lru_cache(maxsize=None)
def backend_logits(name, variant, size):
    backend = load(name)
    spec, w, x, _ = oracle_case(variant, size)
    model = backend.build_model(spec)
    backend.set_weights(model, spec, w)
    return backend.forward(model, to_layout(x, backend))


# fc-head at 160: pool3 is 3x3, so a flatten in HWC instead of CHW order would show.
CASES = [("chapter", 224), ("chapter", 225), ("chapter", 227), ("chapter", (227, 231)), ("fc-head", 160),
         ("3x3-inner", 96)]


def tolerance(variant):
    """The chapter's net holds rtol 1e-5, atol 1e-6. The fully connected head sums 3,456 and 4,096
    products per output in fp32, in each library's own order: measured up to 5e-6 absolute on logits
    of ~0.3, so it gets atol 1e-5 (still 1,000x below a flatten-order or transpose bug)."""
    return dict(rtol=RTOL, atol=1e-5 if variant == "fc-head" else ATOL)


@pytest.mark.parametrize("variant, size", CASES)
def test_logits_equal_numpy_oracle(backend, variant, size):
    *_, ref = oracle_case(variant, size)
    assert np.abs(ref).max() > 0.1  # the weights keep the signal alive, so the comparison means something
    got = backend_logits(backend.NAME, variant, size)
    np.testing.assert_allclose(got, ref, **tolerance(variant))


@pytest.mark.parametrize("variant, size", CASES[:1] + CASES[3:5])
@pytest.mark.parametrize("pair", list(itertools.combinations(ALL_BACKENDS, 2)), ids="-".join)
def test_logits_equal_across_frameworks(pair, variant, size):
    a, b = (load(name).NAME for name in pair)
    np.testing.assert_allclose(backend_logits(a, variant, size), backend_logits(b, variant, size),
                               **tolerance(variant))


def test_padding_where_keras_same_would_differ(backend):
    """Keras's ``padding="same"`` is symmetric only for stride 1 and an odd kernel; the Keras rendering
    must fall back to explicit padding for a padded stride-2 conv and a padded even kernel."""
    blocks = (BlockDef(16, 3, 2, 1), BlockDef(24, 4, 1, 1), BlockDef("classes", 3, 1, 1))
    spec = build_spec(blocks, n_1x1=1, variant="odd-padding")
    w = random_weights(spec, seed=3)
    x = np.random.default_rng(4).random((2, 1, 37, 41), dtype=np.float32)
    model = backend.build_model(spec)
    backend.set_weights(model, spec, w)
    assert [as_nchw(s, backend) for _, s in backend.layer_shapes(model, spec, (37, 41), batch=2)] == \
        [i.nchw for i in spec.walk((37, 41), batch=2)]
    np.testing.assert_allclose(backend.forward(model, to_layout(x, backend)), reference_forward(spec, w, x),
                               rtol=RTOL, atol=ATOL)


def test_a_transposed_kernel_would_be_caught(backend):
    """The oracle comparison is not blind to the classic porting bug: swapping a kernel's H and W."""
    spec, w, x, ref = oracle_case("chapter", 227)
    swapped = dict(w, **{"nin1.conv0.weight": w["nin1.conv0.weight"].transpose(0, 1, 3, 2).copy()})
    model = backend.build_model(spec)
    backend.set_weights(model, spec, swapped)
    assert not np.allclose(backend.forward(model, to_layout(x, backend)), ref, rtol=RTOL, atol=ATOL)


def test_weights_round_trip_bit_identical(backend, tmp_path):
    spec = chapter_spec()
    model = backend.build_model(spec, seed=5)
    first = backend.get_weights(model, spec)
    save_weights(tmp_path / "w.npz", spec, first)
    _, loaded = load_weights(tmp_path / "w.npz", spec)
    other = backend.build_model(spec, seed=6)
    backend.set_weights(other, spec, loaded)
    again = backend.get_weights(other, spec)
    assert set(again) == set(first)
    for k in first:
        assert again[k].dtype == np.float32
        np.testing.assert_array_equal(again[k], first[k])


def test_init_is_xavier_uniform_with_zero_bias(backend):
    spec = chapter_spec()
    w = backend.get_weights(backend.build_model(spec, "xavier", seed=0), spec)
    k = w["nin2.conv0.weight"]  # 256 x 96 x 5 x 5
    bound = np.sqrt(6 / (96 * 25 + 256 * 25))
    assert np.abs(k).max() <= bound and np.abs(k).max() > 0.95 * bound
    np.testing.assert_allclose(k.std(), bound / np.sqrt(3), rtol=0.02)
    assert all(not w[n].any() for n in w if n.endswith(".bias"))
    he = backend.get_weights(backend.build_model(spec, "kaiming", seed=0), spec)["nin2.conv0.weight"]
    np.testing.assert_allclose(he.std(), np.sqrt(2 / (96 * 25)), rtol=0.02)


def test_kaiming_identity_is_the_one_numpy_draw_in_every_framework(backend):
    """No framework has this init, so every backend loads the shared NumPy draw: every framework starts a
    fast-recipe run from exactly the same weights (float64 ones too, where the backend builds them)."""
    spec = chapter_spec()
    for dtype in ["float32"] + (["float64"] if "fp64" in backend.PRECISIONS else []):
        got = backend.get_weights(backend.build_model(spec, "kaiming-identity", seed=4, dtype=dtype), spec)
        want = initial_weights(spec, "kaiming-identity", 4, dtype=dtype)
        assert set(got) == set(want)
        for k in want:
            assert got[k].dtype == np.dtype(dtype)
            np.testing.assert_array_equal(got[k], want[k])


def test_sgd_steps_agree_across_frameworks(sample_dir):
    """Same weights, same batches, dropout off: gradients and updates agree, so weights stay equal."""
    spec = make_spec("mini", dropout=0.0)
    ds = load_fashion_mnist(sample_dir)
    start = random_weights(spec, seed=3)
    results = {}
    for name in TRAINABLE:
        try:
            backend = load(name)
        except pytest.skip.Exception:
            continue
        model = backend.build_model(spec)
        backend.set_weights(model, spec, start)
        trainer = backend.Trainer(model, lr=0.05)
        losses = []
        for i in range(3):
            x = to_float_batch(ds.train_images[i * 32:(i + 1) * 32], 28, backend.LAYOUT)
            losses.append(trainer.train_step(x, ds.train_labels[i * 32:(i + 1) * 32].astype(np.int64), 0.05)[0])
        results[name] = losses, backend.get_weights(model, spec)
    if len(results) < 2:
        pytest.skip("needs at least two installed backends")
    (ref_name, (ref_losses, ref_w)), *others = results.items()
    for name, (losses, w) in others:
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, err_msg=f"{name} vs {ref_name}")
        for k in ref_w:
            np.testing.assert_allclose(w[k], ref_w[k], rtol=1e-4, atol=1e-6, err_msg=f"{k}: {name} vs {ref_name}")
    moved = max(np.abs(ref_w[k] - start[k]).max() for k in start)
    assert moved > 1e-3  # the steps really changed the weights


def test_mxnet_import_keeps_torch_threads():
    code = ("import torch; torch.set_num_threads(2); n = torch.get_num_threads(); "
            "import nin_multi.backends.mxnet; assert torch.get_num_threads() == n, (n, torch.get_num_threads()); "
            "print('ok')")
    for name in ("torch", "mxnet"):
        load(name)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_select_names_backends_once_in_import_order(monkeypatch):
    from nin_multi import backends

    assert backends.select("mxnet, keras,torch,pytorch") == ["torch", "tensorflow", "mxnet"]
    assert backends.select(["gluon", "tf"]) == ["tensorflow", "mxnet"]
    monkeypatch.setattr(backends, "installed", lambda: ["torch"])
    assert backends.select(None) == backends.select("") == backends.select([]) == ["torch"]
    with pytest.raises(backends.BackendUnavailableError, match="unknown backend 'caffe'"):
        backends.select("torch,caffe")


@pytest.mark.parametrize("name", ["mxnet", "jax"])
def test_a_trainer_draws_its_dropout_from_its_model_s_seed_not_the_last_configure(name):
    """The seed travels with the model (``backends.common.carry_seed``): a model built from seed 11 after
    ``configure(..., seed=5)`` trains with 11, and two models in one process keep their own seeds."""
    backend = load(name)
    backend.configure(None, 5)
    spec = make_spec("mini")
    first, second = backend.build_model(spec, "kaiming", 11), backend.build_model(spec, "kaiming", 12)
    assert (backend.Trainer(first, 0.1).seed, backend.Trainer(second, 0.1).seed) == (11, 12)
