"""The exercises: the VGG-style NiN family in every backend, the resources model (hand counts, and the
training-memory estimate against what PyTorch keeps for backward), and the ``resources`` and
``compare`` subcommands end to end."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from nin_multi.cli import main
from nin_multi.errors import ImageTooSmallError, SpecError
from nin_multi.exercises import BYTES_PER_VALUE, layer_costs, parse_variants, resources
from nin_multi.spec import CHAPTER_BLOCKS, build_spec, chapter_spec, make_spec

from conftest import ROOT, load

FAMILY = ["nin-vgg-12", "nin-vgg-18", "nin-vgg-24"]
VGG_ANALOGUES = {"nin-11": (0, 0, 1, 1, 1, 2), "nin-16": (1, 1, 2, 2, 2, 2), "nin-19": (1, 1, 3, 3, 3, 2)}


def as_nchw(shape, backend):
    return tuple(shape) if backend.LAYOUT == "NCHW" or len(shape) != 4 else \
        (shape[0], shape[3], shape[1], shape[2])


# -- the VGG-style family --------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", FAMILY + list(VGG_ANALOGUES))
def test_family_renders_with_spec_shapes_and_counts(backend, variant):
    spec = make_spec(variant)
    size = spec.min_image_size()  # 63: five 3x3/2 pools leave the classes block one pixel
    assert size == 63
    model = backend.build_model(spec)
    assert backend.count_params(model) == spec.num_params
    got = backend.layer_shapes(model, spec, size, batch=2)
    walk = spec.walk(size, batch=2)
    assert [name for name, _ in got] == [i.name for i in walk]
    assert [as_nchw(s, backend) for _, s in got] == [i.nchw for i in walk]


def test_family_hand_counts():
    # 3x3 convs (out*in*9 + out): 1->64, 64->128, 128->256, 256->512, 512->512, 512->10
    k3 = 640 + 73_856 + 295_168 + 1_180_160 + 2_359_808 + 46_090
    # one 1x1 conv per block (c*c + c) for c = 64, 128, 256, 512, 512, 10
    k1 = 4_160 + 16_512 + 65_792 + 262_656 + 262_656 + 110
    assert (k3, k1) == (3_955_722, 611_886)
    for n, variant in enumerate(FAMILY, start=1):
        spec = make_spec(variant)
        assert spec.num_params == k3 + n * k1
        assert len(list(spec.convs())) == int(variant.rsplit("-", 1)[1]) == 6 * (1 + n)
    walk = make_spec("nin-vgg-18").walk(224)
    assert [i.nchw for i in walk] == [
        (1, 64, 224, 224), (1, 64, 111, 111), (1, 128, 111, 111), (1, 128, 55, 55), (1, 256, 55, 55),
        (1, 256, 27, 27), (1, 512, 27, 27), (1, 512, 13, 13), (1, 512, 13, 13), (1, 512, 6, 6),
        (1, 512, 6, 6), (1, 10, 6, 6), (1, 10, 1, 1), (1, 10)]
    with pytest.raises(ImageTooSmallError, match="'pool5'"):
        make_spec("nin-vgg-12").walk(62)
    # VGG-11/16/19 by analogy: a VGG stage of d 3x3 convs is a block of one 3x3 and d - 1 1x1 convs;
    # VGG's three dense layers are the classes block (one 3x3, two 1x1)
    k1_per_block = (4_160, 16_512, 65_792, 262_656, 262_656, 110)
    for variant, counts in VGG_ANALOGUES.items():
        spec = make_spec(variant)
        assert spec.num_params == k3 + sum(n * k for n, k in zip(counts, k1_per_block))
        assert len(list(spec.convs())) == int(variant.split("-")[1])
        assert [len(block.convs) for block in spec.layers if hasattr(block, "convs")] == [1 + n for n in counts]
    assert [make_spec(v).num_params for v in VGG_ANALOGUES] == [4_547_046, 5_158_822, 5_749_926]


def test_per_block_counts_are_checked():
    with pytest.raises(SpecError, match="n_1x1 has 3 counts for 4 blocks"):
        build_spec(CHAPTER_BLOCKS, n_1x1=(1, 2, 3))
    with pytest.raises(SpecError, match="between 0 and 8, got 9"):
        build_spec(CHAPTER_BLOCKS, n_1x1=(2, 2, 9, 2))
    assert build_spec(CHAPTER_BLOCKS, n_1x1=(2, 2, 2, 2)) == chapter_spec()


# -- resources ---------------------------------------------------------------------------------------------
def test_chapter_resources_hand_count():
    res = resources(chapter_spec(), 224, batch=128)
    assert res["total"]["params"] == 1_992_166
    assert res["total"]["macs_per_image"] == 762_297_352
    assert res["total"]["macs_at_batch"] == 762_297_352 * 128
    # conv outputs per image: 3 convs per block of 96x54x54, 256x26x26, 384x12x12, 10x5x5
    convs = 3 * (96 * 54 * 54 + 256 * 26 * 26 + 384 * 12 * 12 + 10 * 5 * 5)
    pools = 96 * 26 * 26 + 256 * 12 * 12 + 384 * 5 * 5
    kept = 224 * 224 + 2 * convs + pools + 384 * 5 * 5 + 10  # input, conv+ReLU, pools, dropout, gap
    tr = res["training"]
    assert tr["kept_activation_bytes_per_image"] == kept * 4 == 12_889_496
    assert tr["kept_activation_bytes"] == kept * 4 * 128
    assert tr["weights_bytes"] == tr["gradient_bytes"] == 1_992_166 * 4 and tr["optimizer_state_bytes"] == 0
    assert tr["total_bytes"] == 2 * 1_992_166 * 4 + kept * 4 * 128
    # prediction: nin1's conv output and its ReLU output, both 96x54x54, are the largest live pair
    p = res["prediction"]
    assert p["peak_pair_layer"] == "nin1.conv0"
    assert p["total_bytes"] == 1_992_166 * 4 + 2 * 96 * 54 * 54 * 4 * 128
    row = res["layers"][0]
    assert row["activation_bytes"] == 96 * 54 * 54 * 4 and row["activation_bytes_at_batch"] == 96 * 54 * 54 * 4 * 128


@pytest.mark.parametrize("variant", ["fc-head", "nin-vgg-24", "mini"])
def test_rows_add_up_to_the_walk(variant):
    size = 28 if variant == "mini" else 224
    spec = make_spec(variant, image_size=size)
    rows = layer_costs(spec, size)
    walk = spec.walk(size)
    assert sum(r.params for r in rows) == spec.num_params == sum(i.params for i in walk)
    assert sum(r.macs for r in rows) == sum(i.macs for i in walk)
    assert len(rows) == len(walk) + sum(len(layer.convs) - 1 for layer in spec.layers if hasattr(layer, "convs"))


def _saved_for_backward_bytes(torch, model, x, y):
    """Bytes of the distinct storages autograd saves for backward in one training forward pass (loss
    included), parameters excluded. Exact and deterministic, unlike RSS: it is what the activation
    term of the estimate models."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            saved[st.data_ptr()] = st.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()  # the graph those tensors belong to works
    return sum(saved.values())


@pytest.mark.parametrize("variant,size,batch", [("chapter", 96, 4), ("fc-head", 96, 2), ("nin-vgg-12", 63, 2)])
def test_training_memory_estimate_against_pytorch(variant, size, batch):
    """The estimate counts each conv's and its ReLU's output; PyTorch keeps only the ReLU's (plus int64
    pooling indices and byte dropout masks): measured 1.56-1.75x below the estimate on every variant,
    so the stated bound is measured <= estimate <= 2 x measured, for the activations and the total."""
    backend = load("torch")
    import torch

    backend.configure(None, 0)
    spec = make_spec(variant, image_size=size)
    model = backend.build_model(spec)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, spec.in_channels, size, size, generator=g)
    y = torch.randint(0, spec.num_classes, (batch,), generator=g)
    measured = _saved_for_backward_bytes(torch, model, x, y)
    tr = resources(spec, size, batch)["training"]
    est = tr["kept_activation_bytes"]
    assert measured <= est <= 2 * measured, (measured, est, est / measured)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters())
    assert tr["weights_bytes"] == weights and tr["gradient_bytes"] == grads
    measured_total = weights + grads + measured  # torch.optim.SGD without momentum keeps no state
    assert measured_total <= tr["total_bytes"] <= 2 * measured_total


def test_resources_cli_prints_a_table_and_writes_json(tmp_path):
    """In a fresh process: the counts need no framework (nor NumPy, for the module itself)."""
    dest = tmp_path / "res.json"
    code = (
        "import sys\n"
        "from nin_multi.exercises import resources, format_resources\n"
        "from nin_multi.spec import make_spec\n"
        "format_resources(resources(make_spec('nin-vgg-12'), 224, 8))\n"
        "assert 'numpy' not in sys.modules, 'the resources model imported numpy'\n"
        "from nin_multi.cli import main\n"
        f"rc = main(['resources', '--variant', 'fc-head', '--resize', '224', '--batch-size', '128', "
        f"'--json', {str(dest)!r}])\n"
        "loaded = [m for m in ('torch', 'tensorflow', 'mxnet', 'matplotlib') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "sys.exit(rc)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "NiN (fc-head) at 224x224, batch 128" in out
    for text in ("mult-adds/img", "fc1", "Dense+ReLU", "41,324,042", "prediction memory", "training memory",
                 "optimizer state 0 B", f"wrote {dest}"):
        assert text in out, text
    res = json.loads(dest.read_text())
    assert res["variant"] == "fc-head" and res["batch_size"] == 128 and res["bytes_per_value"] == BYTES_PER_VALUE
    assert res["total"]["params"] == 41_324_042
    assert [r["name"] for r in res["layers"]][-3:] == ["fc_dropout1", "fc1", "fc2"]
    assert res["training"]["total_bytes"] == 2 * 41_324_042 * 4 + res["training"]["kept_activation_bytes"]


def test_resources_cli_errors(tmp_path, capsys):
    assert main(["resources", "--resize", "50"]) == 2
    assert "too small" in capsys.readouterr().err
    assert main(["resources", "--batch-size", "0"]) == 2
    assert "--batch-size" in capsys.readouterr().err
    assert main(["resources", "--json", str(tmp_path / "missing" / "r.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


# -- compare -----------------------------------------------------------------------------------------------
def test_parse_variants():
    assert parse_variants(" chapter, fc-head ") == ["chapter", "fc-head"]
    for bad, msg in (("", "at least one"), ("chapter,resnet", "resnet"), ("chapter,chapter", "more than once")):
        with pytest.raises(Exception, match=msg):
            parse_variants(bad)


def test_compare_refuses_a_size_before_training(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--variants", "nin-vgg-12,chapter", "--resize", "64", "--out", str(out)]) == 2
    assert "'pool3'" in capsys.readouterr().err and not out.exists()


def test_compare_end_to_end(sample_dir, tmp_path, capsys):
    load("torch")
    out = tmp_path / "cmp"
    code = main(["compare", "--variants", "one-1x1,fc-head", "--backend", "torch", "--epochs", "1",
                 "--resize", "67", "--subset", "64", "--test-subset", "32", "--batch-size", "32",
                 "--data-dir", str(sample_dir), "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "examples/s" in printed and "one-1x1" in printed and "fc-head" in printed
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert [r["variant"] for r in rows] == ["one-1x1", "fc-head"]
    assert int(rows[0]["params"]) == make_spec("one-1x1").num_params
    assert int(rows[1]["params"]) == make_spec("fc-head", image_size=67).num_params
    for r in rows:
        assert 0 <= float(r["test_acc"]) <= 1 and float(r["examples_per_sec"]) > 0
        assert (out / r["variant"] / "metrics.csv").is_file()
    png = (out / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # the same data and seed: both runs saw the same 64 images
    cfgs = [json.loads((out / v / "config.json").read_text()) for v in ("one-1x1", "fc-head")]
    assert {(c["seed"], c["subset"], c["resize"]) for c in cfgs} == {(0, 64, 67)}
    # tensorboard --logdir on the comparison: one run per variant, on one step axis (2 steps of 32 images)
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    mux = EventMultiplexer().AddRunsFromDirectory(str(out))
    mux.Reload()
    assert sorted(mux.Runs()) == ["fc-head", "one-1x1"]
    for r in rows:
        assert [(e.step, e.value) for e in mux.Scalars(r["variant"], "epoch/test_acc")] == \
            [(2, float(np.float32(float(r["test_acc"]))))]
    # an existing comparison is not overwritten without --overwrite
    assert main(["compare", "--variants", "one-1x1", "--epochs", "1", "--resize", "67", "--subset", "32",
                 "--data-dir", str(sample_dir), "--out", str(out), "--no-progress"]) == 2
